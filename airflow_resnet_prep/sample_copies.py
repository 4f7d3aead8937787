"""The sample set (:mod:`.sample`) as the other copies people hold, made from exactly its images.

``write_copy(sample, layout)`` reads the official tars and labels file the generator wrote and lays the
same bytes out as:

- ``kaggle``: ``<root>/kaggle/`` as Kaggle's zip extracts (``ILSVRC/Data/CLS-LOC/train/<wnid>/<wnid>_<n>.JPEG``,
  ``.../val/ILSVRC2012_val_%08d.JPEG``, ``.../test/``, ``LOC_val_solution.csv``, ``LOC_synset_mapping.txt``);
- ``kaggle-zip``: ``<root>/imagenet-object-localization-challenge.zip``, that tree zipped: images deflated
  and stored alternately, every third member with Zip64 extra fields, and the Zip64 end records that the
  real archive (over 65,535 members) has;
- ``huggingface``: ``<root>/huggingface/data/`` as ``ILSVRC/imagenet-1k`` has it: ``train_images_{0..4}.tar.gz``
  (``<wnid>_<n>_<wnid>.JPEG``, images spread over the shards in a seeded order), ``val_images.tar.gz``
  (``ILSVRC2012_val_%08d_<wnid>.JPEG``), ``test_images.tar.gz``.

So a conversion of any copy can be compared byte for byte with the conversion of the official tars.
Files are reproducible (fixed times, sorted or seeded orders) and written atomically; a copy already
made from the same sample is reused.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import random
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

from airflow_resnet_prep.fsutil import atomic_path, atomic_write_json, read_json
from airflow_resnet_prep.sample import MTIME, SampleSet, _derived_seed, _tar_member

LAYOUTS = ("official", "kaggle", "kaggle-zip", "huggingface")
KAGGLE_ZIP = "imagenet-object-localization-challenge.zip"
HF_TRAIN_SHARDS = 5
TEST_IMAGES = 2  # test/ images, which a conversion must ignore
_ZIP_TIME = (2012, 7, 1, 0, 0, 0)


def _train_images(sample: SampleSet) -> Iterator[tuple[str, str, bytes]]:
    """(wnid, name, bytes) of every training image, by class then name."""
    with tarfile.open(sample.train_tar) as outer:
        for member in outer.getmembers():
            wnid = member.name.removesuffix(".tar")
            with tarfile.open(fileobj=outer.extractfile(member)) as inner:  # type: ignore[arg-type]
                for image in inner.getmembers():
                    yield wnid, image.name, inner.extractfile(image).read()  # type: ignore[union-attr]


def _val_images(sample: SampleSet) -> Iterator[tuple[str, str, bytes]]:
    """(wnid, name, bytes) of every validation image, in number order."""
    labels = sample.labels.read_text().split()
    with tarfile.open(sample.val_tar) as tf:
        for number, member in enumerate(tf.getmembers(), start=1):
            yield labels[number - 1], member.name, tf.extractfile(member).read()  # type: ignore[union-attr]


def _test_images(sample: SampleSet) -> list[tuple[str, bytes]]:
    images = [data for _, _, data in _val_images(sample)][:TEST_IMAGES]
    return [(f"ILSVRC2012_test_{i:08d}.JPEG", data) for i, data in enumerate(images, start=1)]


def _solution_csv(sample: SampleSet) -> bytes:
    """LOC_val_solution.csv: rows in a seeded order (Kaggle's is not sorted), a wnid and a box per object."""
    rows = [(name.rsplit(".", 1)[0], wnid) for wnid, name, _ in _val_images(sample)]
    random.Random(_derived_seed("kaggle-csv", *sample.synsets)).shuffle(rows)
    lines = ["ImageId,PredictionString"]
    lines += [f"{stem},{wnid} 10 20 110 220 {wnid} 30 40 130 240 " for stem, wnid in rows]
    return ("\n".join(lines) + "\n").encode()


def _kaggle_files(sample: SampleSet) -> Iterator[tuple[str, bytes]]:
    """Every file of the Kaggle copy: (path below its root, bytes)."""
    yield "LOC_synset_mapping.txt", "".join(f"{w} class {i}\n" for i, w in enumerate(sample.synsets)).encode()
    yield "LOC_val_solution.csv", _solution_csv(sample)
    for wnid, name, data in _train_images(sample):
        yield f"ILSVRC/Data/CLS-LOC/train/{wnid}/{name}", data
    for _, name, data in _val_images(sample):
        yield f"ILSVRC/Data/CLS-LOC/val/{name}", data
    for name, data in _test_images(sample):
        yield f"ILSVRC/Data/CLS-LOC/test/{name}", data


def _write_kaggle(sample: SampleSet, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, data in _kaggle_files(sample):
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


@contextlib.contextmanager
def _zip64_end_records() -> Iterator[None]:
    """zipfile writes the Zip64 end records only past 65,535 members; the real archive has them, so the
    sample has them too (the limit is read when the archive is closed)."""
    limit = zipfile.ZIP_FILECOUNT_LIMIT
    zipfile.ZIP_FILECOUNT_LIMIT = 0  # type: ignore[misc]
    try:
        yield
    finally:
        zipfile.ZIP_FILECOUNT_LIMIT = limit  # type: ignore[misc]


def _write_kaggle_zip(sample: SampleSet, dest: Path) -> None:
    with atomic_path(dest) as tmp, _zip64_end_records(), zipfile.ZipFile(tmp, "w") as zf:
        for i, (rel, data) in enumerate(_kaggle_files(sample)):
            info = zipfile.ZipInfo(rel, _ZIP_TIME)
            info.create_system = 3
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_STORED if i % 2 else zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=i % 3 == 0) as fh:
                fh.write(data)


def _write_tgz(path: Path, members: list[tuple[str, bytes]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=MTIME) as gz:
            with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tf:  # type: ignore[arg-type]
                for name, data in members:
                    _tar_member(tf, name, data)


def _write_huggingface(sample: SampleSet, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    train = [(f"{name.rsplit('.', 1)[0]}_{wnid}.JPEG", data) for wnid, name, data in _train_images(sample)]
    random.Random(_derived_seed("hf-train", *sample.synsets)).shuffle(train)
    for shard in range(HF_TRAIN_SHARDS):
        _write_tgz(dest / f"train_images_{shard}.tar.gz", train[shard::HF_TRAIN_SHARDS])
    val = [(f"{name.rsplit('.', 1)[0]}_{wnid}.JPEG", data) for wnid, name, data in _val_images(sample)]
    _write_tgz(dest / "val_images.tar.gz", val)
    _write_tgz(dest / "test_images.tar.gz", _test_images(sample))


def copy_path(sample: SampleSet, layout: str) -> Path:
    """Where ``write_copy`` puts ``layout`` (both sources of a run name this one path)."""
    if layout == "official":
        return sample.root
    return {
        "kaggle": sample.root / "kaggle",
        "kaggle-zip": sample.root / KAGGLE_ZIP,
        "huggingface": sample.root / "huggingface" / "data",
    }[layout]


def write_copy(sample: SampleSet, layout: str) -> Path:
    """Make (or reuse) the ``layout`` copy of ``sample``; returns its path (see :func:`copy_path`)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    dest = copy_path(sample, layout)
    if layout == "official":
        return dest
    marker = sample.root / f".copy-{layout}.json"
    made_from = {"train": sample.train_tar.stat().st_size, "val": sample.val_tar.stat().st_size}
    recorded = read_json(marker)
    if isinstance(recorded, dict) and recorded.get("from") == made_from and dest.exists():
        return dest
    marker.unlink(missing_ok=True)
    {"kaggle": _write_kaggle, "kaggle-zip": _write_kaggle_zip, "huggingface": _write_huggingface}[layout](
        sample, dest
    )
    atomic_write_json(marker, {"from": made_from})
    return dest
