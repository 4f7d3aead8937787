"""The catalog: tars read in place, folders, relabelling, extraction, and every bad input's error."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from airflow_resnet_prep.catalog.build import build_split_catalog
from airflow_resnet_prep.catalog.fetch import fetch
from airflow_resnet_prep.catalog.model import ImageReader, SplitCatalog
from airflow_resnet_prep.catalog.relabel import assign_labels, read_labels, relabel
from airflow_resnet_prep.errors import LabelsError, SourceError, UnsafeArchiveError
from airflow_resnet_prep.layout import DataDir
from tests.support.sampletools import extract_sample_tar


@pytest.fixture(scope="module")
def extracted(sample, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("extracted")
    extract_sample_tar(sample.train_tar, root / "train")
    extract_sample_tar(sample.val_tar, root / "val")
    return root


def test_tar_catalog_reads_every_image_in_place(sample, extracted):
    train = build_split_catalog("train", sample.train_tar)
    assert len(train) == sample.train_count
    assert train.synsets == sample.synsets
    with ImageReader(train.sources) as reader:
        for ref in train.images:
            assert reader.read(ref) == (extracted / "train" / ref.synset / ref.name).read_bytes()
    val = build_split_catalog("val", sample.val_tar)
    assert len(val) == sample.val_count and not val.labelled
    assert [r.name for r in val.images] == sorted(p.name for p in (extracted / "val").iterdir())


def test_tar_and_folder_catalogs_agree(sample, extracted):
    from_tar = build_split_catalog("train", sample.train_tar)
    from_dir = build_split_catalog("train", extracted / "train")
    assert [(r.synset, r.name, r.size) for r in from_tar.images] == [
        (r.synset, r.name, r.size) for r in from_dir.images
    ]
    with ImageReader(from_tar.sources) as a, ImageReader(from_dir.sources) as b:
        for x, y in zip(from_tar.images, from_dir.images, strict=True):
            assert a.read(x) == b.read(y)


def test_catalog_round_trips_through_its_file(sample, tmp_path):
    catalog = build_split_catalog("train", sample.train_tar)
    catalog.save(tmp_path / "train.tsv")
    assert SplitCatalog.load(tmp_path / "train.tsv") == catalog


def test_relabel_assigns_classes_from_the_labels_file(sample, tmp_path):
    fetch(tmp_path, str(sample.train_tar), str(sample.val_tar))
    result = relabel(tmp_path, str(sample.labels))
    val = SplitCatalog.load(DataDir.of(tmp_path).catalog_file("val"))
    labels = sample.labels.read_text().split()
    assert result.images == len(val) == len(labels)
    for ref in val.images:
        number = int(ref.name.split("_")[-1].split(".")[0])
        assert ref.synset == labels[number - 1]
    # idempotent: a second relabel changes nothing
    before = DataDir.of(tmp_path).catalog_file("val").read_bytes()
    relabel(tmp_path, str(sample.labels))
    assert DataDir.of(tmp_path).catalog_file("val").read_bytes() == before


def test_fetch_reuses_catalogs_when_sources_are_unchanged(sample, tmp_path):
    first = fetch(tmp_path, str(sample.train_tar), str(sample.val_tar))
    second = fetch(tmp_path, str(sample.train_tar), str(sample.val_tar))
    assert not first.reused and second.reused
    assert second.counts == {"train": sample.train_count, "val": sample.val_count}


def test_extract_lays_out_folders_and_relabel_moves_val(sample, extracted, tmp_path):
    result = fetch(tmp_path, str(sample.train_tar), str(sample.val_tar), extract=True)
    raw = DataDir.of(tmp_path).root / "raw"
    assert result.imagenet_path == str(raw / "train")
    for path in (extracted / "train").rglob("*.JPEG"):
        assert (raw / "train" / path.relative_to(extracted / "train")).read_bytes() == path.read_bytes()
    assert len(list((raw / "val").glob("*.JPEG"))) == sample.val_count
    moved = relabel(tmp_path, str(sample.labels), extract=True).moved
    assert moved == sample.val_count
    assert not list((raw / "val").glob("*.JPEG"))
    val = SplitCatalog.load(DataDir.of(tmp_path).catalog_file("val"))
    for ref in val.images:
        assert (raw / "val" / ref.synset / ref.name).is_file()
    assert not list(tmp_path.rglob(".*.tmp"))


def test_folder_sources_need_no_labels_file(sample, extracted, tmp_path):
    labelled_val = tmp_path / "val"
    fetch(tmp_path / "a", str(sample.train_tar), str(sample.val_tar))
    relabel(tmp_path / "a", str(sample.labels), extract=False)
    val = SplitCatalog.load(DataDir.of(tmp_path / "a").catalog_file("val"))
    for ref in val.images:
        (labelled_val / ref.synset).mkdir(parents=True, exist_ok=True)
        shutil.copy(extracted / "val" / ref.name, labelled_val / ref.synset / ref.name)
    fetch(tmp_path / "b", str(extracted / "train"), str(labelled_val))
    result = relabel(tmp_path / "b", "https://unreachable.invalid/labels.txt")
    assert result.labels_path is None and result.images == sample.val_count


# -- the labels file ---------------------------------------------------------------------------------
@pytest.fixture
def val_and_train(sample):
    return build_split_catalog("val", sample.val_tar), sample.synsets


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "labels.txt"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_labels_file_tolerates_crlf_and_trailing_blank_lines(sample, tmp_path, val_and_train):
    lines = sample.labels.read_text().split()
    for text in ("\r\n".join(lines) + "\r\n", "\n".join(lines) + "\n\n\n", "\n".join(lines)):
        assert read_labels(_write(tmp_path, text)) == lines


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda lines: lines[:-1], "has 11 lines but the validation set has 12 images"),
        (lambda lines: [*lines, lines[0]], "has 13 lines but the validation set has 12 images"),
        (lambda lines: [lines[0], "", *lines[2:]], "line 2 is blank"),
        (lambda lines: [*lines[:3], "n99999999", *lines[4:]], "line 4 names class n99999999"),
        (lambda lines: [*lines[:2], "cat", *lines[3:]], "line 3 is 'cat', not a synset id"),
    ],
)
def test_bad_labels_files_name_the_line(sample, tmp_path, val_and_train, mutate, message):
    val, train_synsets = val_and_train
    path = _write(tmp_path, "\n".join(mutate(sample.labels.read_text().split())) + "\n")
    with pytest.raises(LabelsError, match=message) as info:
        assign_labels(val, read_labels(path), train_synsets, str(path))
    assert str(path) in str(info.value)


def test_a_bad_labels_file_changes_nothing(sample, tmp_path):
    data_dir = tmp_path / "data"
    fetch(data_dir, str(sample.train_tar), str(sample.val_tar), extract=True)
    before = DataDir.of(data_dir).catalog_file("val").read_bytes()
    flat_before = sorted(p.name for p in (data_dir / "raw" / "val").iterdir())
    bad = _write(tmp_path, "\n".join(sample.labels.read_text().split()[:-1]) + "\n")
    with pytest.raises(LabelsError):
        relabel(data_dir, str(bad), extract=True)
    assert DataDir.of(data_dir).catalog_file("val").read_bytes() == before
    assert sorted(p.name for p in (data_dir / "raw" / "val").iterdir()) == flat_before


# -- bad and hostile archives ------------------------------------------------------------------------
def _tar_with(path: Path, add) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        add(tar)
    return path


def _file(tar: tarfile.TarFile, name: str, data: bytes = b"\xff\xd8\xff\xd9") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _link(tar: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    tar.addfile(info)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda t: _file(t, "/etc/evil.JPEG"), "absolute path"),
        (lambda t: _file(t, "n01/../../evil.JPEG"), r"outside the archive \('..'\)"),
        (lambda t: _link(t, "n01/x.JPEG", "/etc/passwd", tarfile.SYMTYPE), "symbolic link"),
        (lambda t: _link(t, "n01/x.JPEG", "../../outside", tarfile.LNKTYPE), "hard link"),
        (lambda t: _link(t, "n01/dev.JPEG", "", tarfile.CHRTYPE), "device or FIFO"),
    ],
)
def test_hostile_members_are_refused_and_nothing_is_written(tmp_path, build, message):
    archive = _tar_with(tmp_path / "evil.tar", build)
    data_dir = tmp_path / "data"
    with pytest.raises(UnsafeArchiveError, match=message) as info:
        fetch(data_dir, str(archive), str(archive), extract=True)
    assert str(archive) in str(info.value)
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert written <= {Path("evil.tar"), Path("data/.lock")}


def test_hostile_member_inside_a_nested_tar_is_refused(tmp_path):
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as tar:
        _link(tar, "x.JPEG", "/etc/shadow", tarfile.SYMTYPE)
    archive = _tar_with(tmp_path / "train.tar", lambda t: _file(t, "n01440764.tar", inner.getvalue()))
    with pytest.raises(UnsafeArchiveError, match=r"n01440764.tar.*symbolic link"):
        build_split_catalog("train", archive)


@pytest.mark.parametrize("fraction", [0.013, 0.31, 0.5, 0.77, 0.999])
def test_truncated_archives_fail_naming_the_file(sample, tmp_path, fraction):
    data = sample.train_tar.read_bytes()
    content = len(data.rstrip(b"\0"))  # a cut in the end-of-archive padding loses nothing
    cut = tmp_path / "train.tar"
    cut.write_bytes(data[: int(content * fraction)])
    with pytest.raises(SourceError, match=r"truncated|corrupt|not a readable tar") as info:
        build_split_catalog("train", cut)
    assert str(cut) in str(info.value)


def test_not_a_tar_and_empty_sources(tmp_path):
    text = tmp_path / "notes.tar"
    text.write_text("this is not an archive\n" * 100)
    with pytest.raises(SourceError, match=r"not a readable tar|corrupt"):
        build_split_catalog("train", text)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(SourceError, match="holds no images"):
        build_split_catalog("val", empty_dir)
    with pytest.raises(SourceError, match="does not exist"):
        build_split_catalog("train", tmp_path / "missing.tar")


def test_duplicate_images_and_flat_train_are_errors(tmp_path):
    dup = _tar_with(tmp_path / "dup.tar", lambda t: (_file(t, "n01/a.JPEG"), _file(t, "n01/a.JPEG")))
    with pytest.raises(SourceError, match=r"duplicate image n01/a\.JPEG"):
        build_split_catalog("train", dup)
    flat = _tar_with(tmp_path / "flat.tar", lambda t: _file(t, "a.JPEG"))
    with pytest.raises(SourceError, match="grouped by class"):
        build_split_catalog("train", flat)


def test_a_source_archive_is_never_modified(sample, tmp_path):
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (sample.train_tar, sample.val_tar)}
    fetch(tmp_path, str(sample.train_tar), str(sample.val_tar), extract=True)
    relabel(tmp_path, str(sample.labels), extract=True)
    for path, (mtime, data) in before.items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data
    assert os.access(sample.train_tar, os.R_OK)


def test_header_reader_agrees_with_tarfile(sample, tmp_path):
    """The direct header reader and the standard library's give the same members, nested tars
    included; features the direct reader leaves alone (GNU long names, pax) go to tarfile."""
    from airflow_resnet_prep.sources import tarindex

    def both(path: Path, start: int = 0, size: int | None = None):
        total = size if size is not None else path.stat().st_size - start
        with open(path, "rb") as fh:
            fast = tarindex._fast_index(fh, str(path), start, total)
            slow = list(tarindex._tarfile_index(fh, str(path), start, total))
        return fast, slow

    fast, slow = both(sample.train_tar)
    assert fast == slow and len(fast) == len(sample.synsets)
    for member in fast:  # the per-class tars, read in place
        inner_fast, inner_slow = both(sample.train_tar, member.offset, member.size)
        assert inner_fast == inner_slow and inner_fast
    assert both(sample.val_tar)[0] == both(sample.val_tar)[1]

    long_dir = "n01440764/" + "d" * 120  # a POSIX ustar prefix, and a GNU long name
    for fmt, handled in (
        (tarfile.USTAR_FORMAT, True),
        (tarfile.GNU_FORMAT, False),
        (tarfile.PAX_FORMAT, False),
    ):
        path = tmp_path / f"f{fmt}.tar"
        with tarfile.open(path, "w", format=fmt) as tar:
            _file(tar, f"{long_dir}/x.JPEG", b"\xff\xd8data\xff\xd9")
        fast, slow = both(path)
        assert slow[0].path == f"{long_dir}/x.JPEG"
        assert (fast == slow) if handled else fast is None


def test_an_empty_data_dir_is_refused(sample):
    from airflow_resnet_prep.errors import PrepError

    with pytest.raises(PrepError, match="data_dir is empty"):
        fetch("", str(sample.train_tar), str(sample.val_tar))


@pytest.mark.parametrize(
    ("data_dir", "message"),
    [
        ("relative/data", "is a relative path: give an absolute path"),
        ("ftp://host/prefix", "unsupported URI; give an absolute local path"),
        ("s3://no_such_conn@bucket/prefix", "the Airflow connection 'no_such_conn' is not defined"),
    ],
)
def test_a_data_dir_every_worker_would_read_differently_is_refused(
    sample, tmp_path, monkeypatch, data_dir, message
):
    """Seen in a run: ``s3://...`` was taken for a relative path and made a folder ``s3:`` in the worker's
    current folder. What is neither an absolute path nor a reachable bucket is refused before anything
    is written."""
    from airflow_resnet_prep.errors import PrepError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(PrepError, match=message):
        fetch(data_dir, str(sample.train_tar), str(sample.val_tar))
    assert list(tmp_path.iterdir()) == []
