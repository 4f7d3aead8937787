"""Sample records read back from the written output, so the thumbnails show what the trainer reads.

Choice is deterministic (evenly spaced files and positions, no randomness) and I/O is bounded: a
TFRecord shard is walked head by head up to the last position wanted (12 bytes per record), a
``.rec`` is entered at the offsets its ``.idx`` gives. Neither needs TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_resnet_prep.formats.recordio import iter_records, unpack_header
from airflow_resnet_prep.formats.tfexample import parse_example
from airflow_resnet_prep.formats.tfrecord import read_records_at
from airflow_resnet_prep.report.stats import DataFiles
from airflow_resnet_prep.report.thumbs import Thumb, make_thumb

SAMPLES = {"train": 24, "val": 12}
MAX_FILES = 8  # shards visited per split (reference)


@dataclass(frozen=True)
class Sample:
    """One record read back: where it is, what it says, and its thumbnail."""

    split: str
    file: str  # output name relative to data_dir, e.g. tfrecords/train-00003-of-01024
    position: int  # 0-based record number in that file
    synset: str
    label: str  # as stored: an int for TFRecords, MXNet's float for RecordIO
    filename: str
    size: int  # bytes of the stored image
    thumb: Thumb


def spread(n: int, k: int) -> list[int]:
    """``k`` positions evenly spread over ``range(n)`` (centred in k equal slices), fewer if n < k."""
    k = min(k, n)
    return [(2 * j + 1) * n // (2 * k) for j in range(k)]


def _error_sample(split: str, name: str, position: int, error: str) -> Sample:
    return Sample(split, name, position, "", "", "", 0, Thumb(None, error=error))


def tfrecord_samples(root: Path, files: DataFiles) -> list[Sample]:
    """Samples from the TFRecord shards of each split: up to :data:`MAX_FILES` shards, a few records each."""
    out = []
    for split, wanted in SAMPLES.items():
        shards = files.get(split, [])
        chosen = [shards[i] for i in spread(len(shards), MAX_FILES)] if shards else []
        per_file = -(-wanted // len(chosen)) if chosen else 0
        budget = wanted
        for name, _size, records in chosen:
            positions = spread(records, min(per_file, budget))
            budget -= len(positions)
            try:
                data = read_records_at(root / name, positions)
            except Exception as exc:  # a damaged shard is shown, not fatal to the report
                out.append(_error_sample(split, name, positions[0] if positions else 0, str(exc)))
                continue
            for pos in positions:
                out.append(_tf_sample(split, name, pos, data[pos]))
    return out


def _tf_sample(split: str, name: str, position: int, record: bytes) -> Sample:
    try:
        features = parse_example(record)
    except Exception as exc:
        return _error_sample(split, name, position, f"cannot parse the Example: {exc}")

    def first(key: str) -> Any:
        values = features.get(key) or [b""]
        return values[0]

    image = first("image/encoded")
    text = [first(k) for k in ("image/class/synset", "image/filename")]
    synset, filename = (v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in text)
    label = first("image/class/label")
    return Sample(
        split,
        name,
        position,
        synset,
        str(label),
        filename,
        len(image) if isinstance(image, bytes) else 0,
        make_thumb(image if isinstance(image, bytes) else b""),
    )


def _idx_offsets(idx_path: Path, positions: list[int]) -> dict[int, int]:
    """The ``.rec`` offsets of the records at line ``positions`` of an im2rec ``.idx`` (streamed)."""
    wanted = set(positions)
    found = {}
    with open(idx_path, encoding="utf-8") as fh:
        for number, line in enumerate(fh):
            if number in wanted:
                found[number] = int(line.split("\t")[1])
                if len(found) == len(wanted):
                    break
    return found


def _lst_paths(lst_path: Path, ids: set[int]) -> dict[int, str]:
    """``id -> relative path`` from an im2rec ``.lst`` (``id<TAB>label<TAB>path``), for the ids wanted."""
    found = {}
    with open(lst_path, encoding="utf-8") as fh:
        for line in fh:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 3 and fields[0].isdigit() and int(fields[0]) in ids:
                found[int(fields[0])] = fields[-1]
                if len(found) == len(ids):
                    break
    return found


def recordio_samples(root: Path, files: DataFiles) -> list[Sample]:
    """Samples from each split's ``.rec``, entered at offsets read from its ``.idx``."""
    out = []
    for split, wanted in SAMPLES.items():
        for name, _size, records in files.get(split, []):
            rec = root / name
            positions = spread(records, wanted)
            try:
                offsets = _idx_offsets(rec.with_suffix(".idx"), positions)
                payloads = {}
                with open(rec, "rb") as fh:
                    for pos in positions:
                        fh.seek(offsets[pos])
                        _, payload = next(iter_records(fh))
                        payloads[pos] = unpack_header(payload)
                paths = _lst_paths(rec.with_suffix(".lst"), {int(h[2]) for h in payloads.values()})
            except Exception as exc:  # a damaged output is shown, not fatal to the report
                out.append(_error_sample(split, name, positions[0] if positions else 0, str(exc)))
                continue
            for pos in positions:
                _flag, label, record_id, _id2, image = payloads[pos]
                path = paths.get(int(record_id))
                if path is None:
                    out.append(_error_sample(split, name, pos, f"record id {record_id} is not in the .lst"))
                    continue
                synset, _, filename = path.rpartition("/")
                label_text = str(int(label)) if float(label).is_integer() else str(label)
                out.append(
                    Sample(split, name, pos, synset, label_text, filename, len(image), make_thumb(image))
                )
    return out


def output_samples(root: Path, implementation: str, files: DataFiles) -> list[Sample]:
    """Samples of the output of ``implementation`` under ``root`` (``data_dir``)."""
    if implementation == "reference":
        return tfrecord_samples(root, files)
    return recordio_samples(root, files)
