"""The ``reference`` converter end to end: shards read back with TensorFlow, as the MLPerf reader reads them.

One conversion of the sample set (module fixture) serves every read-only check; the tests that need their
own output (reruns, crashes, bad input, conflicts) prepare a fresh ``data_dir`` each.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from airflow_resnet_prep.catalog.fetch import fetch
from airflow_resnet_prep.catalog.model import SplitCatalog
from airflow_resnet_prep.catalog.relabel import relabel
from airflow_resnet_prep.converters import base, local
from airflow_resnet_prep.converters.tfrecord import TFRecordConverter
from airflow_resnet_prep.errors import BadImageError, OutputConflictError, PrepError, SourceError
from airflow_resnet_prep.formats.jpeg import REASON_CMYK, REASON_PNG
from airflow_resnet_prep.layout import DataDir, catalog_key

PARAMS: dict[str, Any] = {"train_shards": 4, "val_shards": 2, "dali_index": True}
PREFIX = {"train": "train", "val": "validation"}

# SPEC §3: exactly these features, with these kinds.
FEATURE_KINDS = {
    "image/encoded": "bytes_list",
    "image/format": "bytes_list",
    "image/filename": "bytes_list",
    "image/class/label": "int64_list",
    "image/class/synset": "bytes_list",
    "image/height": "int64_list",
    "image/width": "int64_list",
    "image/colorspace": "bytes_list",
    "image/channels": "int64_list",
}
FEATURE_SPEC = {
    k: tf.io.FixedLenFeature([], tf.string if kind == "bytes_list" else tf.int64)
    for k, kind in FEATURE_KINDS.items()
}


# -- helpers -------------------------------------------------------------------------------------------
@dataclass
class Record:
    raw: bytes  # the serialized Example, as TFRecordDataset yields it
    encoded: bytes
    filename: str
    label: int
    synset: str
    height: int
    width: int


def source_images(sample) -> dict[str, dict[str, tuple[str, bytes]]]:
    """split -> base name -> (synset, source bytes), straight from the sample's tars and labels file."""
    out: dict[str, dict[str, tuple[str, bytes]]] = {"train": {}, "val": {}}
    with tarfile.open(sample.train_tar) as outer:
        for member in outer.getmembers():
            inner_bytes = outer.extractfile(member).read()
            with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
                for image in inner.getmembers():
                    out["train"][image.name] = (member.name[: -len(".tar")], inner.extractfile(image).read())
    labels = Path(sample.labels).read_text().split()
    with tarfile.open(sample.val_tar) as val:
        for member in val.getmembers():
            number = int(member.name[len("ILSVRC2012_val_") : -len(".JPEG")])
            out["val"][member.name] = (labels[number - 1], val.extractfile(member).read())
    return out


def prepare(data_dir: Path, train: str | Path, val: str | Path, labels: str | Path) -> Path:
    fetch(data_dir, str(train), str(val))
    relabel(data_dir, str(labels))
    return data_dir


def shard_names(split: str, shards: int) -> list[str]:
    return [f"{PREFIX[split]}-{i:05d}-of-{shards:05d}" for i in range(shards)]


def read_shard(path: Path) -> list[Record]:
    records = []
    for raw in tf.data.TFRecordDataset(str(path)):
        p = tf.io.parse_single_example(raw, FEATURE_SPEC)
        records.append(
            Record(
                raw=raw.numpy(),
                encoded=p["image/encoded"].numpy(),
                filename=p["image/filename"].numpy().decode(),
                label=int(p["image/class/label"]),
                synset=p["image/class/synset"].numpy().decode(),
                height=int(p["image/height"]),
                width=int(p["image/width"]),
            )
        )
    return records


def output_bytes(out_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out_dir.iterdir())}


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: CRC-32C (Castagnoli), rotated right by 15 and offset (TF's crc32c::Mask)."""
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC_TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    c ^= 0xFFFFFFFF
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord2idx(path: Path) -> str:
    """What DALI's ``tfrecord2idx`` script writes for a TFRecord file: ``offset size`` per record."""
    lines = []
    with open(path, "rb") as f:
        while True:
            current = f.tell()
            byte_len = f.read(8)
            if len(byte_len) == 0:
                break
            f.read(4)
            proto_len = struct.unpack("q", byte_len)[0]
            f.read(proto_len)
            f.read(4)
            lines.append(f"{current} {f.tell() - current}\n")
    return "".join(lines)


def block_means(pixels: np.ndarray, k: int = 8) -> np.ndarray:
    h, w = pixels.shape[0] // k * k, pixels.shape[1] // k * k
    return pixels[:h, :w].reshape(h // k, k, w // k, k, 3).mean(axis=(1, 3))


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging (a process pool that loses a worker's exception waits forever)."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def hidden_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- one conversion for the read-only checks --------------------------------------------------------------
@dataclass
class Converted:
    data_dir: Path
    out: Path
    summary: dict[str, Any]
    sources: dict[str, dict[str, tuple[str, bytes]]]
    shards: dict[str, list[list[Record]]]  # split -> shard -> records, in file order
    files: dict[str, bytes]


@pytest.fixture(scope="module")
def sources(sample) -> dict[str, dict[str, tuple[str, bytes]]]:
    return source_images(sample)


@pytest.fixture(scope="module")
def converted(sample, sources, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    data_dir = prepare(tmp_path_factory.mktemp("converted"), sample.train_tar, sample.val_tar, sample.labels)
    summary = local.convert(TFRecordConverter(**PARAMS), data_dir, workers=1)
    out = DataDir.of(data_dir).tfrecords
    shards = {
        split: [read_shard(out / name) for name in shard_names(split, PARAMS[f"{split}_shards"])]
        for split in ("train", "val")
    }
    return Converted(data_dir, out, summary, sources, shards, output_bytes(out))


@pytest.fixture
def fresh(sample, tmp_path: Path) -> Path:
    """A data_dir after fetch + relabel of the sample set, nothing converted yet."""
    return prepare(tmp_path / "data", sample.train_tar, sample.val_tar, sample.labels)


# -- layout and content ---------------------------------------------------------------------------------
def test_shards_are_flat_in_tfrecords_with_reference_names(converted: Converted) -> None:
    expected = shard_names("train", 4) + shard_names("val", 2)
    expected += [f"{n}.idx" for n in expected]
    assert sorted(os.listdir(converted.out)) == sorted(expected)
    assert all((converted.out / n).is_file() for n in expected)
    assert sorted(converted.summary["outputs"]) == sorted(f"tfrecords/{n}" for n in expected)
    for name, stats in converted.summary["outputs"].items():
        assert stats["size"] == len(converted.files[name.split("/")[1]])


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_source_image_once_with_exactly_the_spec_features(
    converted: Converted, sample, split: str
) -> None:
    records = [r for shard in converted.shards[split] for r in shard]
    names = [r.filename for r in records]
    assert sorted(names) == sorted(converted.sources[split])  # each once, none missing
    assert len(set(names)) == len(names)
    classes = sorted(sample.synsets)
    for r in records:
        synset, _ = converted.sources[split][r.filename]
        assert r.synset == synset
        assert r.label == 1 + classes.index(synset)
        example = tf.train.Example.FromString(r.raw)
        kinds = {k: f.WhichOneof("kind") for k, f in example.features.feature.items()}
        assert kinds == FEATURE_KINDS
        for feature in example.features.feature.values():
            assert len(getattr(feature, feature.WhichOneof("kind")).value) == 1
        p = tf.io.parse_single_example(r.raw, FEATURE_SPEC)
        assert p["image/format"].numpy() == b"JPEG"
        assert p["image/colorspace"].numpy() == b"RGB"
        assert int(p["image/channels"]) == 3


@pytest.mark.parametrize("split", ["train", "val"])
def test_stored_jpegs_decode_and_pass_through_unchanged(converted: Converted, sample, split: str) -> None:
    reencoded = {x["name"]: x["reason"] for x in converted.summary["reencoded"]}
    expected_reasons = {"png": REASON_PNG, "cmyk": REASON_CMYK}
    for r in (r for shard in converted.shards[split] for r in shard):
        image = tf.io.decode_jpeg(r.encoded, channels=3)
        assert tuple(image.shape) == (r.height, r.width, 3), r.filename
        _, source = converted.sources[split][r.filename]
        quirk = sample.quirks.get(r.filename)
        if quirk in expected_reasons:
            assert r.encoded != source
            assert reencoded[r.filename] == expected_reasons[quirk]
            assert r.encoded[:3] == b"\xff\xd8\xff"
            got = image.numpy().astype(np.int16)
            with Image.open(io.BytesIO(source)) as src:
                want = np.asarray(src.convert("RGB"), dtype=np.int16)
            assert want.shape == got.shape
            # The sample's per-pixel noise costs ~15 levels per pixel through 4:2:0 chroma subsampling
            # at quality 100 (as upstream's encode_jpeg does too), so colours are compared over 8x8
            # blocks: ~1 level when right, ~70-85 for inverted CMYK or swapped channels.
            diff = np.abs(block_means(got) - block_means(want)).mean()
            assert diff < 3.0, f"{r.filename} ({quirk}): mean abs diff of 8x8 blocks {diff:.2f}"
            # Pixel for pixel, what imagenet_to_gcs.py's own re-encoding gives (TF decode, encode_jpeg).
            upstream = tf.io.encode_jpeg(tf.io.decode_image(source, channels=3), format="rgb", quality=100)
            diff = np.abs(tf.io.decode_jpeg(upstream).numpy().astype(np.int16) - got).mean()
            assert diff < 2.0, f"{r.filename} ({quirk}): mean abs diff from upstream's re-encoding {diff:.2f}"
        else:
            # Ordinary JPEGs, grayscale and progressive ones included, are stored byte for byte.
            assert r.encoded == source, f"{r.filename} ({quirk or 'plain'}) was changed"
            assert r.filename not in reencoded


def test_sample_has_the_quirks_the_checks_rely_on(converted: Converted, sample) -> None:
    kinds = set(sample.quirks.values())
    assert {"png", "cmyk", "grayscale", "progressive"} <= kinds
    assert sorted(x["name"] for x in converted.summary["reencoded"]) == sorted(
        n for n, q in sample.quirks.items() if q in ("png", "cmyk")
    )
    assert converted.summary["skipped"] == []


def test_order_and_contiguous_near_equal_shards(converted: Converted) -> None:
    train = converted.shards["train"]
    expected = sorted((synset, name) for name, (synset, _) in converted.sources["train"].items())
    random.Random(0).shuffle(expected)
    assert [(r.synset, r.filename) for shard in train for r in shard] == expected
    val = [r.filename for shard in converted.shards["val"] for r in shard]
    assert val == sorted(converted.sources["val"])
    for shards in converted.shards.values():
        n, count = sum(map(len, shards)), len(shards)
        assert [len(s) for s in shards] == [n * (i + 1) // count - n * i // count for i in range(count)]
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # Shards mix classes (with 4 classes and 6 images per shard, a class-sorted shard would hold 1-2).
    assert all(len({r.synset for r in shard}) >= 3 for shard in train)


def test_dali_index_matches_tfrecord2idx_and_points_at_valid_records(converted: Converted) -> None:
    for split, shards in converted.shards.items():
        for name, records in zip(shard_names(split, len(shards)), shards, strict=True):
            data = converted.files[name]
            idx = converted.files[f"{name}.idx"].decode()
            assert idx == tfrecord2idx(converted.out / name)
            lines = [tuple(map(int, line.split(" "))) for line in idx.splitlines()]
            assert len(lines) == len(records)
            end = 0
            for (offset, size), record in zip(lines, records, strict=True):
                assert offset == end  # records back to back, from 0
                chunk = data[offset : offset + size]
                (length,) = struct.unpack("<Q", chunk[:8])
                assert size == 8 + 4 + length + 4
                assert struct.unpack("<I", chunk[8:12])[0] == masked_crc32c(chunk[:8])
                payload = chunk[12 : 12 + length]
                assert struct.unpack("<I", chunk[12 + length :])[0] == masked_crc32c(payload)
                assert payload == record.raw
                end = offset + size
            assert end == len(data)


def test_plan_spreads_a_small_set_over_units_of_whole_shards(fresh: Path) -> None:
    work_plan = base.plan(TFRecordConverter(**PARAMS), fresh)
    # One shard per unit here (fewer than 16 shards per split), so two workers share even a small set.
    assert [(u.split, u.outputs, u.items) for u in work_plan.units] == [
        *[("train", [n], 6) for n in shard_names("train", 4)],
        *[("val", [n], 6) for n in shard_names("val", 2)],
    ]


def test_output_names_include_counts_past_five_digits() -> None:
    c = TFRecordConverter()
    for name in ("train-00000-of-01024", "validation-00127-of-00128.idx", "train-100000-of-100001"):
        assert c.is_output_name(name), name
    for name in ("train-0-of-1", "train/train-00000-of-00001", ".train-00000-of-00001.7.tmp", "train.idx"):
        assert not c.is_output_name(name), name


# -- determinism -------------------------------------------------------------------------------------
def test_same_bytes_with_two_workers_and_on_a_forced_rerun(converted: Converted, fresh: Path) -> None:
    out = DataDir.of(fresh).tfrecords
    with deadline(120):
        local.convert(TFRecordConverter(**PARAMS), fresh, workers=2)
    assert output_bytes(out) == converted.files
    local.convert(TFRecordConverter(**PARAMS), fresh, workers=1, force=True)
    assert output_bytes(out) == converted.files


def test_another_seed_gives_another_train_order(converted: Converted, fresh: Path) -> None:
    local.convert(TFRecordConverter(**{**PARAMS, "shuffle_seed": 1}), fresh, workers=1)
    out = DataDir.of(fresh).tfrecords
    train = [(r.synset, r.filename) for n in shard_names("train", 4) for r in read_shard(out / n)]
    expected = sorted((synset, name) for name, (synset, _) in converted.sources["train"].items())
    random.Random(1).shuffle(expected)
    assert train == expected
    assert train != [(r.synset, r.filename) for shard in converted.shards["train"] for r in shard]
    for name in shard_names("val", 2):  # validation does not depend on the seed
        assert (out / name).read_bytes() == converted.files[name]


# -- crash safety ---------------------------------------------------------------------------------------
_KILLED_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from airflow_resnet_prep.converters import base, tfrecord
    from airflow_resnet_prep.layout import DataDir

    data_dir, marker, params = sys.argv[1], Path(sys.argv[2]), eval(sys.argv[3])
    real, calls = tfrecord.example_parts, [0]

    def encode_then_stall(**kw):
        calls[0] += 1
        if calls[0] == 4:  # three records of the shard are written: stop here and wait to be killed
            marker.write_text("stalled")
            time.sleep(600)
        return real(**kw)

    tfrecord.example_parts = encode_then_stall
    plan = base.Plan.load(DataDir.of(data_dir), "reference")
    base.run_plan_unit(tfrecord.TFRecordConverter(**params), plan, 0)
    """
)


def test_unit_killed_midway_leaves_no_partial_shard_and_rerun_gives_the_same_bytes(
    converted: Converted, fresh: Path
) -> None:
    converter = TFRecordConverter(**PARAMS)
    work_plan = base.plan(converter, fresh)
    unit = work_plan.units[0]
    assert unit.outputs == ["train-00000-of-00004"]
    marker = fresh / "stalled"
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, str(fresh), str(marker), repr(PARAMS)],
        stderr=subprocess.PIPE,
    )
    try:
        t0 = time.monotonic()
        while not marker.exists():
            assert child.poll() is None, child.stderr.read().decode()[-2000:]
            assert time.monotonic() - t0 < 60, "child never reached the shard's fourth record"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    out = DataDir.of(fresh).tfrecords
    # Killed inside the shard: nothing carries its final name, no done record; only a hidden temp file.
    assert not (out / "train-00000-of-00004").exists()
    assert not (out / "train-00000-of-00004.idx").exists()
    assert not work_plan.unit_done_path(0).exists()
    assert [n for n in hidden_files(out) if n.startswith(".train-00000-of-00004.")]
    with pytest.raises(PrepError, match="not done"):
        base.finish(converter, work_plan)

    local.run_units(converter, work_plan, workers=1)
    summary = base.finish(converter, work_plan)
    assert output_bytes(out) == converted.files
    assert hidden_files(out) == []  # the killed run's temp file is gone too
    assert summary["outputs"] == converted.summary["outputs"]


# -- bad input ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder_source(sources, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample laid out as folders ``<split>/<synset>/<image>`` (val labelled by folder)."""
    root = tmp_path_factory.mktemp("folders")
    for split in ("train", "val"):
        for name, (synset, data) in sources[split].items():
            (root / split / synset).mkdir(parents=True, exist_ok=True)
            (root / split / synset / name).write_bytes(data)
    return root


def _plain_jpeg(sources) -> bytes:
    return next(data for name, (_, data) in sorted(sources["train"].items()) if data[:3] == b"\xff\xd8\xff")


BAD = {
    "text": lambda sources: b"this is a text file, not an image\n",
    "truncated": lambda sources: _plain_jpeg(sources)[: len(_plain_jpeg(sources)) // 2],
    "empty": lambda sources: b"",
}
BAD_REASON = {"text": "not an image", "truncated": "truncated JPEG", "empty": "empty file"}


def _with_bad_images(folder_source: Path, sources, dest: Path, kinds: list[str]) -> tuple[Path, dict]:
    shutil.copytree(folder_source, dest)
    synset = sorted(p.name for p in (dest / "train").iterdir())[0]
    planted = {}
    for i, kind in enumerate(kinds):
        path = dest / "train" / synset / f"{synset}_9999{i}.JPEG"
        path.write_bytes(BAD[kind](sources))
        planted[path.name] = (kind, path)
    return dest, planted


@pytest.mark.parametrize(("kind", "workers"), [("text", 2), ("truncated", 1), ("empty", 1)])
def test_bad_image_fails_the_task_naming_the_file(
    folder_source: Path, sources, sample, tmp_path: Path, kind: str, workers: int
) -> None:
    src, planted = _with_bad_images(folder_source, sources, tmp_path / "src", [kind])
    ((_, bad_path),) = planted.values()
    data_dir = prepare(tmp_path / "data", src / "train", src / "val", sample.labels)
    with deadline(120), pytest.raises(BadImageError) as info:
        local.convert(TFRecordConverter(train_shards=2, val_shards=1), data_dir, workers=workers)
    assert str(bad_path) in str(info.value)
    assert BAD_REASON[kind] in info.value.reason
    # The shard that holds the bad image was not written, not even partly.
    layout = DataDir.of(data_dir)
    order = [(r.synset, r.name) for r in SplitCatalog.load(layout.store, catalog_key("train")).images]
    random.Random(0).shuffle(order)
    position = [name for _, name in order].index(bad_path.name)
    holder = shard_names("train", 2)[0 if position < len(order) // 2 else 1]
    assert not (layout.tfrecords / holder).exists()
    assert hidden_files(layout.tfrecords) == []


def test_bad_images_are_left_out_and_listed_with_skip(
    folder_source: Path, sources, sample, tmp_path: Path
) -> None:
    src, planted = _with_bad_images(folder_source, sources, tmp_path / "src", list(BAD))
    data_dir = prepare(tmp_path / "data", src / "train", src / "val", sample.labels)
    summary = local.convert(
        TFRecordConverter(train_shards=2, val_shards=1, on_bad_image="skip"), data_dir, workers=1
    )
    skipped = {x["name"]: x["reason"] for x in summary["skipped"]}
    assert sorted(skipped) == sorted(planted)
    for name, (kind, _) in planted.items():
        assert BAD_REASON[kind] in skipped[name]
    out = DataDir.of(data_dir).tfrecords
    names = [r.filename for n in shard_names("train", 2) for r in read_shard(out / n)]
    assert sorted(names) == sorted(sources["train"])
    assert summary["splits"]["train"]["records"] == len(sources["train"])


def test_a_split_with_no_images_fails(folder_source: Path, fresh: Path, tmp_path: Path) -> None:
    empty_val = tmp_path / "empty_val"
    (empty_val / "n00000001").mkdir(parents=True)
    with pytest.raises(SourceError, match="no images"):
        fetch(tmp_path / "other", str(folder_source / "train"), str(empty_val))
    # A catalog that ends up empty is refused by the plan too, before anything is written.
    layout = DataDir.of(fresh)
    val = SplitCatalog.load(layout.store, catalog_key("val"))
    SplitCatalog(split="val", sources=val.sources, images=[]).save(layout.store, catalog_key("val"))
    with pytest.raises(PrepError, match="val split has no images"):
        base.plan(TFRecordConverter(**PARAMS), fresh)
    assert not layout.tfrecords.exists()


@pytest.mark.parametrize("param", ["train_shards", "val_shards"])
def test_shard_counts_below_one_or_above_the_images_are_refused(fresh: Path, param: str) -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match=f"{param} must be at least 1"):
            TFRecordConverter(**{**PARAMS, param: bad})
    too_many = {"train_shards": 25, "val_shards": 13}[param]  # the sample has 24 train, 12 val images
    with pytest.raises(PrepError, match=param) as info:
        base.plan(TFRecordConverter(**{**PARAMS, param: too_many}), fresh)
    assert "empty" in str(info.value)
    assert not (DataDir.of(fresh).work / "reference" / "plan.json").exists()


# -- conflicts with what is already there ---------------------------------------------------------------
def test_foreign_shards_are_refused_then_replaced_with_force(fresh: Path) -> None:
    out = DataDir.of(fresh).tfrecords
    out.mkdir()
    (out / "train-00000-of-00001").write_bytes(b"someone else's shard")
    (out / "notes.txt").write_bytes(b"not a shard name: left alone")
    with pytest.raises(OutputConflictError, match="train-00000-of-00001") as info:
        local.convert(TFRecordConverter(**PARAMS), fresh, workers=1)
    assert str(out) in str(info.value)
    assert (out / "train-00000-of-00001").read_bytes() == b"someone else's shard"
    assert sorted(os.listdir(out)) == ["notes.txt", "train-00000-of-00001"]

    local.convert(TFRecordConverter(**PARAMS), fresh, workers=1, force=True)
    assert not (out / "train-00000-of-00001").exists()
    assert (out / "notes.txt").exists()
    assert (out / "train-00003-of-00004").is_file()


def test_unfinished_plan_with_other_params_is_refused_then_replaced_with_force(fresh: Path) -> None:
    first = TFRecordConverter(**PARAMS)
    base.run_plan_unit(first, base.plan(first, fresh), 0)
    out = DataDir.of(fresh).tfrecords
    before = output_bytes(out)
    assert "train-00000-of-00004" in before

    other = TFRecordConverter(**{**PARAMS, "train_shards": 2})
    with pytest.raises(OutputConflictError, match="unfinished conversion"):
        base.plan(other, fresh)
    assert output_bytes(out) == before
    # The same params resume the plan without complaint.
    assert base.plan(first, fresh).params == first.params

    summary = local.convert(other, fresh, workers=1, force=True)
    assert sorted(os.listdir(out)) == sorted(
        [*shard_names("train", 2), *shard_names("val", 2)]
        + [f"{n}.idx" for n in [*shard_names("train", 2), *shard_names("val", 2)]]
    )
    assert summary["splits"]["train"]["records"] == 24


# -- through the Airflow operator -----------------------------------------------------------------------
class _TaskInstance:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def test_operator_renders_converts_and_pushes_the_path(converted: Converted, fresh: Path) -> None:
    from airflow_resnet_prep.operators.tfrecord import ConvertTFRecordOperator

    op = ConvertTFRecordOperator(
        task_id="reference_convert",
        data_dir="{{ params.data_dir }}",
        train_shards="{{ params.train_shards }}",
        val_shards="{{ params.val_shards }}",
        dali_index="{{ params.dali_index }}",
        workers=1,
    )
    ti = _TaskInstance()
    ctx: dict[str, Any] = {
        "ti": ti,
        "params": {"data_dir": str(fresh), "train_shards": 4, "val_shards": 2, "dali_index": True},
    }
    op.render_template_fields(ctx)
    assert (op.data_dir, op.train_shards, op.val_shards) == (str(fresh), "4", "2")
    summary = op.execute(ctx)
    out = DataDir.of(fresh).tfrecords
    assert ti.pushed == {"tfrecords_path": str(out)}
    assert summary["params"] == {**PARAMS, "shuffle_seed": 0, "on_bad_image": "fail"}
    assert output_bytes(out) == converted.files
