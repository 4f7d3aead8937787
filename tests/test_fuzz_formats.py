"""Fuzzing every reader of untrusted bytes: each returns a correct answer or raises the package's own error.

tests/formats/test_jpeg.py already fuzzes ``probe`` (random bytes, mutated JPEG headers). Here: the
re-encoding path that follows a probe (mutated PNG, GIF, BMP, TIFF, WebP and CMYK JPEG files), the
tar indexer (random bytes, mutated headers, archives cut at any byte), archive member names, the
RecordIO reader, the labels file and the catalog file. "Never hang" is each example's deadline.
"""

from __future__ import annotations

import io
import tarfile
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from airflow_resnet_prep.catalog.build import build_split_catalog
from airflow_resnet_prep.catalog.model import ImageReader, SplitCatalog
from airflow_resnet_prep.catalog.relabel import read_labels
from airflow_resnet_prep.errors import BadImageError, LabelsError, PrepError, SourceError, UnsafeArchiveError
from airflow_resnet_prep.formats.jpeg import probe, resize_short_side, to_rgb_jpeg
from airflow_resnet_prep.formats.recordio import (
    RecordIOError,
    iter_records,
    pack_header,
    unpack_header,
    write_record,
)
from airflow_resnet_prep.sources.tarindex import check_member_name, iter_tar
from airflow_resnet_prep.storage import LocalStore

FUZZ = settings(
    max_examples=150,
    deadline=timedelta(seconds=5),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def mutate(data: bytes, draw: st.DrawFn, head: int | None = None) -> bytes:
    """1-4 random edits (set, insert, delete bytes; truncate) within the first ``head`` bytes."""
    limit = min(len(data), head or len(data))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(0, limit - 1)))
        if op == "set":
            new = draw(st.binary(min_size=1, max_size=4))
            data = data[:at] + new + data[at + len(new) :]
        elif op == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
        elif op == "delete":
            data = data[:at] + data[at + draw(st.integers(1, 16)) :]
        else:
            data = data[: draw(st.integers(0, len(data)))]
    return data


@st.composite
def mutated(draw: st.DrawFn, seeds: bytes | list[bytes], heads: tuple[int, ...] = ()) -> bytes:
    """One of ``seeds`` with mutations, aimed at its first ``head`` bytes (a header) or anywhere."""
    data = draw(st.sampled_from(seeds)) if isinstance(seeds, list) else seeds
    return mutate(data, draw, head=draw(st.sampled_from([*heads, len(data)])))


# -- images: probe, then re-encode as the converters do ------------------------------------------------
def _image(mode: str, fmt: str, **kw: object) -> bytes:
    img = Image.linear_gradient("L").resize((24, 16)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


SEEDS = [
    _image("RGB", "PNG"),
    _image("RGBA", "PNG"),
    _image("I;16", "PNG"),
    _image("P", "GIF"),
    _image("RGB", "BMP"),
    _image("RGB", "TIFF"),
    _image("CMYK", "TIFF"),
    _image("RGB", "WEBP"),
    _image("CMYK", "JPEG"),
    _image("L", "JPEG", progressive=True),
]


def convert_like_the_converters(data: bytes) -> None:
    """What both converters do with an image: probe; re-encode when told, or resize (nvidia's option).
    Every way out is a correct JPEG or a BadImageError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about the damage it reads past
            _convert(data)
    except BadImageError as exc:
        assert exc.name == "fuzz.JPEG" and exc.reason


def _convert(data: bytes) -> None:
    info = probe(data, "fuzz.JPEG")
    if info.reencode_reason is not None:
        out, w, h = to_rgb_jpeg(data, "fuzz.JPEG")
        _assert_rgb_jpeg(out, w, h)
    out, w, h = resize_short_side(data, "fuzz.JPEG", 8, 90)
    _assert_rgb_jpeg(out, w, h)


def _assert_rgb_jpeg(data: bytes, width: int, height: int) -> None:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (width, height))


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_unmutated_seeds_convert(seed: int) -> None:
    convert_like_the_converters(SEEDS[seed])
    probe(SEEDS[seed], "seed")  # the seeds themselves are good images


@FUZZ
@given(mutated(SEEDS, (64, 256)))
def test_fuzz_mutated_images_through_probe_and_reencode(data: bytes) -> None:
    convert_like_the_converters(data)


# -- tar archives ----------------------------------------------------------------------------------------
def _tar_bytes(members: dict[str, bytes], nested: bool) -> bytes:
    def build(items: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, data in items.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    if not nested:
        return build(members)
    return build(
        {"n01440764.tar": build(members), "n01443537.tar": build({"n01443537_1.JPEG": b"\xff" * 700})}
    )


TAR_SEEDS = [
    _tar_bytes({"n01440764_1.JPEG": b"a" * 600, "n01440764_2.JPEG": b"b" * 1100}, nested=True),
    _tar_bytes({"n01440764/x_1.JPEG": b"c" * 513, "n01443537/x_2.jpg": b"d" * 10, "notes.txt": b"hi"}, False),
    _tar_bytes({"ILSVRC2012_val_00000001.JPEG": b"e" * 2000}, nested=False),
]


def check_catalog(tmp_path: Path, data: bytes) -> None:
    """A tar either indexes into refs that each lie inside the file, or fails with a SourceError."""
    path = tmp_path / "fuzz.tar"
    path.write_bytes(data)
    for split in ("train", "val"):
        try:
            catalog = build_split_catalog(split, path)
        except SourceError as exc:
            assert str(path) in str(exc)
            continue
        with ImageReader(catalog.sources) as reader:
            for ref in catalog.images:
                assert ref.offset >= 0 and ref.offset + ref.size <= len(data)
                assert len(reader.read(ref)) == ref.size
                assert "/" not in ref.name and ref.synset not in (".", "..")


@FUZZ
@given(st.binary(max_size=3000))
def test_fuzz_random_bytes_as_a_tar(tmp_path: Path, data: bytes) -> None:
    check_catalog(tmp_path, data)


@FUZZ
@given(mutated(TAR_SEEDS, (512, 1536)))  # a member's header is its first 512 bytes: aim there mostly
def test_fuzz_mutated_tar_headers(tmp_path: Path, data: bytes) -> None:
    check_catalog(tmp_path, data)


@FUZZ
@given(st.data())
def test_fuzz_tar_cut_at_any_byte(tmp_path: Path, data: st.DataObject) -> None:
    """Cut inside the content: an error naming the file. Cut in the end-of-archive padding: all images."""
    whole = data.draw(st.sampled_from(TAR_SEEDS[:2]))
    cut = data.draw(st.integers(0, len(whole) - 1))
    path = tmp_path / "fuzz.tar"
    path.write_bytes(whole[:cut])
    (tmp_path / "whole.tar").write_bytes(whole)
    complete = build_split_catalog("train", tmp_path / "whole.tar")
    try:
        catalog = build_split_catalog("train", path)
    except SourceError as exc:
        assert str(path) in str(exc)
        return
    # Only a cut after the last member's data (in the zero padding) may succeed, and it loses nothing.
    assert [(r.synset, r.name, r.offset, r.size) for r in catalog.images] == [
        (r.synset, r.name, r.offset, r.size) for r in complete.images
    ]


@FUZZ
@given(
    st.text(max_size=40)
    | st.lists(st.sampled_from(["..", ".", "", "/", "a", "n0", "\\", "c:"])).map("/".join)
)
def test_fuzz_member_names_are_safe_or_refused(name: str) -> None:
    try:
        path = check_member_name("fuzz.tar", name)
    except UnsafeArchiveError:
        return
    assert not path.startswith("/") and "\0" not in path
    if path:  # "" is the archive's root (a "./" directory member)
        assert ".." not in path.split("/") and "" not in path.split("/") and "." not in path.split("/")


def test_the_tar_seeds_index_whole() -> None:
    with io.BytesIO(TAR_SEEDS[0]) as fh:
        members = list(iter_tar(fh, "seed", size=len(TAR_SEEDS[0])))
    assert [m.path for m in members] == ["n01440764.tar", "n01443537.tar"]


# -- RecordIO ----------------------------------------------------------------------------------------------
def _rec_seed() -> bytes:
    buf = io.BytesIO()
    magic = (0xCED7230A).to_bytes(4, "little")
    for i, image in enumerate([b"\xff\xd8" + magic * 3 + b"\xff\xd9", b"x" * 37, b"", magic]):
        write_record(buf, pack_header(float(i), i), image)
    return buf.getvalue()


REC_SEED = _rec_seed()


def check_recordio(data: bytes) -> None:
    try:
        records = list(iter_records(io.BytesIO(data)))
    except RecordIOError as exc:
        assert "<stream>" in str(exc) or "offset" in str(exc)
        return
    offsets = [offset for offset, _ in records]
    assert offsets == sorted(set(offsets)) and all(o % 4 == 0 and o < max(len(data), 1) for o in offsets)
    for _, payload in records:
        try:
            unpack_header(payload)
        except RecordIOError as exc:
            assert "image header" in str(exc)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes_as_recordio(data: bytes) -> None:
    check_recordio(data)


@FUZZ
@given(mutated(REC_SEED))
def test_fuzz_mutated_recordio(data: bytes) -> None:
    check_recordio(data)


def test_the_recordio_seed_reads_back() -> None:
    payloads = [unpack_header(p) for _, p in iter_records(io.BytesIO(REC_SEED))]
    assert [(label, index) for _, label, index, _, _ in payloads] == [(0.0, 0), (1.0, 1), (2.0, 2), (3.0, 3)]


# -- the labels file and the catalog file ------------------------------------------------------------
LABELS = b"n01440764\nn01443537\r\nn01484850\n\n"


@FUZZ
@given(st.binary(max_size=200) | mutated(LABELS))
def test_fuzz_labels_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "labels.txt"
    path.write_bytes(data)
    try:
        labels = read_labels(path)
    except (LabelsError, SourceError) as exc:
        assert str(path) in str(exc)
        return
    assert labels and all(len(s) == 9 and s[0] == "n" and s[1:].isdigit() for s in labels)


@pytest.fixture(scope="module")
def catalog_text(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    folder = tmp_path_factory.mktemp("cat")
    (folder / "train.tar").write_bytes(TAR_SEEDS[0])
    build_split_catalog("train", folder / "train.tar").save(LocalStore(folder), "train.tsv")
    return (folder / "train.tsv").read_bytes()


@FUZZ
@given(data=st.data())
def test_fuzz_catalog_file(tmp_path: Path, catalog_text: bytes, data: st.DataObject) -> None:
    """A damaged or hand-edited catalog is a SourceError naming it, never a crash deep in a converter."""
    mutated = mutate(catalog_text, data.draw)
    assume(mutated != catalog_text)
    path = tmp_path / "train.tsv"
    path.write_bytes(mutated)
    try:
        catalog = SplitCatalog.load(LocalStore(tmp_path), "train.tsv")
    except PrepError as exc:
        assert isinstance(exc, SourceError) and str(path) in str(exc)
        return
    for ref in catalog.images:
        assert ref.size >= 0 and ref.offset >= 0 and 0 <= ref.src < len(catalog.sources)
