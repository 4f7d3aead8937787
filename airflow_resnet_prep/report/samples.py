"""Sample records read back from the written output, so the thumbnails show what the trainer reads.

Choice is deterministic (evenly spaced files and positions, no randomness) and I/O is bounded: a
TFRecord shard is walked head by head up to the last position wanted (12 bytes per record), a
``.rec`` is entered at the offsets its ``.idx`` gives. Neither needs TensorFlow.

Everything is read through the data_dir's :class:`~airflow_resnet_prep.storage.Store`: on a local
disk every read is one ``pread``; in a bucket, one ranged GET, and a shard's heads are walked through
blocks of :data:`WALK_BLOCK` bytes (a GET per record head would cost far more than the bytes between).
"""

from __future__ import annotations

import functools
import io
import json
import posixpath
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

from airflow_resnet_prep.formats import wdstar
from airflow_resnet_prep.formats.recordio import iter_records, unpack_header
from airflow_resnet_prep.formats.tfexample import parse_example
from airflow_resnet_prep.formats.tfrecord import (
    FOOTER_SIZE,
    HEADER_SIZE,
    TFRecordError,
    _data_of,
    _length_of,
)
from airflow_resnet_prep.report.stats import DataFiles, open_text
from airflow_resnet_prep.report.thumbs import Thumb, make_thumb
from airflow_resnet_prep.storage import Store
from airflow_resnet_prep.storage.rangefile import RangeFile

# In a bucket, reading 1 MiB costs about as much time as one more request (see storage.base.MAX_GAP):
# heads closer together than that are read in one request.
WALK_BLOCK = 1 << 20
READ_THREADS = 8  # files read at once (requests in flight, in a bucket)


def open_exact(store: Store, key: str, block_size: int = 0) -> BinaryIO:
    """``key`` as a seekable file whose reads are the store's exact ranged reads (``pread`` locally);
    with ``block_size``, through a buffer of that size when the store is not a local disk."""
    raw = RangeFile(
        functools.partial(store.read_range, key), store.size(key), costly_reads=store.requests_are_costly
    )
    if block_size and raw.costly_reads:
        return io.BufferedReader(raw, block_size)  # type: ignore[arg-type]
    return raw  # type: ignore[return-value]


def records_at(store: Store, key: str, positions: Iterable[int]) -> dict[int, bytes]:
    """The data of the TFRecords at ``positions`` (0-based) of ``key``: the 12-byte heads of the records
    before the last one wanted are read, and the records wanted (both checksums checked)."""
    wanted = set(positions)
    out: dict[int, bytes] = {}
    if not wanted:
        return out
    name = store.uri(key)
    with open_exact(store, key, WALK_BLOCK) as fh:
        size = store.size(key)
        offset = 0
        for index in range(max(wanted) + 1):
            fh.seek(offset)
            length = _length_of(fh.read(HEADER_SIZE), name, offset, True)
            end = offset + HEADER_SIZE + length + FOOTER_SIZE
            if end > size:
                raise TFRecordError(
                    f"{name}: truncated record at offset {offset}: {length + FOOTER_SIZE} bytes of data "
                    f"and checksum expected, the file ends after {size - offset - HEADER_SIZE}"
                )
            if index in wanted:
                out[index] = _data_of(fh.read(length + FOOTER_SIZE), length, name, offset, True)
            offset = end
    return out


def tar_samples_at(store: Store, key: str, positions: Iterable[int]) -> dict[int, dict[str, bytes]]:
    """The members (extension -> data) of the WebDataset samples at ``positions`` (0-based) of the tar
    ``key``: the 512-byte headers up to the last sample wanted are read, and the members wanted."""
    wanted = set(positions)
    out: dict[int, dict[str, bytes]] = {}
    if not wanted:
        return out
    name = store.uri(key)
    with open_exact(store, key, WALK_BLOCK) as fh:
        offset, position, current = 0, -1, None
        while True:
            fh.seek(offset)
            entry = wdstar.parse_header(fh.read(wdstar.BLOCK), name, offset)
            if entry is None:
                break
            sample_key, ext = wdstar.split_name(entry.name)
            if sample_key != current:
                current, position = sample_key, position + 1
                if position > max(wanted):
                    break
            if position in wanted:
                out.setdefault(position, {})[ext] = fh.read(entry.size)
            offset += wdstar.member_size(entry.size)
    return out


def read_many(
    store: Store, jobs: list[tuple[str, list[int]]], read: Any = None
) -> list[dict[int, Any] | Exception]:
    """``read`` (:func:`records_at` by default) of each ``(key, positions)``, several files at once; a
    file that cannot be read gives its exception instead of its records."""
    read = read or records_at

    def one(job: tuple[str, list[int]]) -> dict[int, Any] | Exception:
        try:
            return read(store, *job)
        except Exception as exc:  # a damaged shard is shown, not fatal to the report
            return exc

    if len(jobs) <= 1:
        return [one(job) for job in jobs]
    with ThreadPoolExecutor(min(READ_THREADS, len(jobs)), thread_name_prefix="report-read") as pool:
        return list(pool.map(one, jobs))


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


def _shard_jobs(files: DataFiles) -> list[tuple[str, str, list[int]]]:
    """(split, shard, positions): up to :data:`MAX_FILES` shards of each split, a few records each."""
    jobs: list[tuple[str, str, list[int]]] = []  # (split, name, positions)
    for split, wanted in SAMPLES.items():
        shards = files.get(split, [])
        chosen = [shards[i] for i in spread(len(shards), MAX_FILES)] if shards else []
        per_file = -(-wanted // len(chosen)) if chosen else 0
        budget = wanted
        for name, _size, records in chosen:
            positions = spread(records, min(per_file, budget))
            budget -= len(positions)
            jobs.append((split, name, positions))
    return jobs


def tfrecord_samples(store: Store, files: DataFiles) -> list[Sample]:
    """Samples from the TFRecord shards of each split: up to :data:`MAX_FILES` shards, a few records each."""
    jobs = _shard_jobs(files)
    out = []
    for (split, name, positions), data in zip(
        jobs, read_many(store, [(name, positions) for _, name, positions in jobs]), strict=True
    ):
        if isinstance(data, Exception):
            out.append(_error_sample(split, name, positions[0] if positions else 0, str(data)))
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


def webdataset_samples(store: Store, files: DataFiles) -> list[Sample]:
    """Samples from the WebDataset shards of each split, chosen as :func:`tfrecord_samples` chooses."""
    jobs = _shard_jobs(files)
    out = []
    found = read_many(store, [(name, positions) for _, name, positions in jobs], tar_samples_at)
    for (split, name, positions), data in zip(jobs, found, strict=True):
        if isinstance(data, Exception):
            out.append(_error_sample(split, name, positions[0] if positions else 0, str(data)))
            continue
        for pos in positions:
            members = data.get(pos, {})
            try:
                meta = json.loads(members.get("json", b""))
                synset, filename = str(meta["wnid"]), str(meta["filename"])
            except (ValueError, KeyError, TypeError):
                out.append(_error_sample(split, name, pos, "the sample has no readable .json member"))
                continue
            image = members.get("jpg", b"")
            label = members.get("cls", b"").decode("ascii", "replace")
            out.append(Sample(split, name, pos, synset, label, filename, len(image), make_thumb(image)))
    return out


def _idx_offsets(store: Store, idx_key: str, positions: list[int]) -> dict[int, int]:
    """The ``.rec`` offsets of the records at line ``positions`` of an im2rec ``.idx`` (streamed)."""
    wanted = set(positions)
    found = {}
    with open_text(store, idx_key) as fh:
        for number, line in enumerate(fh):
            if number in wanted:
                found[number] = int(line.split("\t")[1])
                if len(found) == len(wanted):
                    break
    return found


def _lst_paths(store: Store, lst_key: str, ids: set[int]) -> dict[int, str]:
    """``id -> relative path`` from an im2rec ``.lst`` (``id<TAB>label<TAB>path``), for the ids wanted."""
    found = {}
    with open_text(store, lst_key) as fh:
        for line in fh:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 3 and fields[0].isdigit() and int(fields[0]) in ids:
                found[int(fields[0])] = fields[-1]
                if len(found) == len(ids):
                    break
    return found


def _with_suffix(name: str, suffix: str) -> str:
    return posixpath.splitext(name)[0] + suffix


def recordio_samples(store: Store, files: DataFiles) -> list[Sample]:
    """Samples from each split's ``.rec``, entered at offsets read from its ``.idx``."""
    out = []
    for split, wanted in SAMPLES.items():
        for name, _size, records in files.get(split, []):
            positions = spread(records, wanted)
            try:
                offsets = _idx_offsets(store, _with_suffix(name, ".idx"), positions)
                payloads = {}
                with open_exact(store, name) as fh:
                    for pos in positions:
                        fh.seek(offsets[pos])
                        _, payload = next(iter_records(fh))
                        payloads[pos] = unpack_header(payload)
                paths = _lst_paths(store, _with_suffix(name, ".lst"), {int(h[2]) for h in payloads.values()})
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


def output_samples(store: Store, implementation: str, files: DataFiles) -> list[Sample]:
    """Samples of the output of ``implementation`` in the data_dir's ``store``."""
    if implementation == "reference":
        return tfrecord_samples(store, files)
    if implementation == "webdataset":
        return webdataset_samples(store, files)
    return recordio_samples(store, files)
