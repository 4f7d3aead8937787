"""One segment of one output file, read once: its CRC-32C, its records, and (``--decode``) its images.

A *segment* is a byte range ``[start, end)`` of a file that starts at a record boundary: a whole
TFRecord shard, or a run of records of a large ``.rec`` cut at offsets its ``.idx`` gives (checked to
hold a record head first). Segments of one file are scanned by different processes; the CRC-32C of
the file is then joined from the segments' CRCs (:func:`~airflow_resnet_prep.formats.crc32c.combine`),
so every byte is read once whichever way the work is spread.

What a segment reports is compact (arrays of offsets, labels and ids; per-class counts), so the parent
can check 1.28 M records against the ``.lst`` and ``.idx`` without holding their images.
"""

from __future__ import annotations

import io
import json
from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from airflow_resnet_prep.errors import BadImageError, PrepError
from airflow_resnet_prep.formats import recordio, tfrecord, wdstar
from airflow_resnet_prep.formats.crc32c import crc32c
from airflow_resnet_prep.formats.tfexample import parse_example
from airflow_resnet_prep.storage.base import Store

READ_BYTES = 8 << 20  # one request (or pread) per 8 MiB; a bucket keeps several in flight
REFERENCE, NVIDIA, WEBDATASET = "reference", "nvidia", "webdataset"
WDS_MEMBERS = ("cls", "jpg", "json")  # a webdataset sample's members, in archive order
# The features docs/formats.md (TFRecords) lists for every reference record, with their kind (b: bytes, i: int64).
FEATURES = {
    "image/encoded": "b",
    "image/format": "b",
    "image/filename": "b",
    "image/class/label": "i",
    "image/class/synset": "b",
    "image/height": "i",
    "image/width": "i",
    "image/colorspace": "b",
    "image/channels": "i",
}


@dataclass(frozen=True)
class Segment:
    key: str  # the file, relative to the data_dir
    start: int
    end: int
    kind: str  # REFERENCE (TFRecord), NVIDIA (RecordIO) or WEBDATASET (tar)
    number: int = 0  # position of the segment within its file


@dataclass
class Finding:
    """One thing wrong, as the parent reports it: file, where in it, which image, why."""

    key: str
    reason: str
    record: int | None = None  # position of the record in its file (0-based), when known
    offset: int | None = None  # byte offset of the record in its file
    image: str | None = None  # the image's name (synset/name for nvidia, file name for reference)

    def __str__(self) -> str:
        where = []
        if self.record is not None:
            where.append(f"record {self.record:,}")
        if self.offset is not None:
            where.append(f"offset {self.offset:,}")
        if self.image:
            where.append(self.image)
        place = f" ({', '.join(where)})" if where else ""
        return f"{self.key}{place}: {self.reason}"


@dataclass
class SegmentResult:
    segment: Segment
    crc: int = 0
    size: int = 0  # bytes read (the segment's length unless the file ended early)
    offsets: array = field(default_factory=lambda: array("q"))  # of each record, in the file
    sizes: array = field(default_factory=lambda: array("q"))  # framed size of each record (reference)
    ids: array = field(default_factory=lambda: array("q"))  # nvidia: the header's id (the .lst index)
    labels: array = field(default_factory=lambda: array("d"))  # the record's label
    classes: Counter = field(default_factory=Counter)  # reference: synset -> records
    findings: list[Finding] = field(default_factory=list)
    decoded: int = 0
    # (offset, position in the file (reference) or header id (nvidia), reason, image name when known)
    decode_failures: list[tuple[int, int, str, str | None]] = field(default_factory=list)

    @property
    def records(self) -> int:
        return len(self.offsets)


class RangeReader(io.RawIOBase):
    """A read-only stream over ``[start, end)`` of a stored file, summing the CRC-32C of every byte it
    hands out. ``tell`` is the position in the file, so parsers name real offsets."""

    def __init__(self, store: Store, key: str, start: int, end: int) -> None:
        self.crc, self.pos = 0, start
        self._buf, self._at = b"", 0  # the current piece and how far it has been handed out
        ranges = [(o, min(READ_BYTES, end - o)) for o in range(start, end, READ_BYTES)]
        self._pieces: Iterator[bytes] = store.iter_ranges(key, ranges, concurrency=4)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True  # for tell(); seeking is not supported

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        out = []
        want = n if n >= 0 else 1 << 62
        while want > 0:
            if self._at >= len(self._buf):
                piece = next(self._pieces, b"")
                if not piece:
                    break
                self.crc = crc32c(piece, self.crc)
                self._buf, self._at = piece, 0
            # Slices copy only what is handed out; the 8 MiB piece itself is never copied.
            take = self._buf[self._at : self._at + want]
            self._at += len(take)
            out.append(take)
            want -= len(take)
            self.pos += len(take)
        return out[0] if len(out) == 1 else b"".join(out)

    def drain(self) -> None:
        """Read (and sum) what is left, after a parse error stopped the reading early."""
        while self.read(READ_BYTES):
            pass


class _Decoder:
    """TensorFlow's JPEG decoder, made on first use in this process (``--decode`` only)."""

    _decoder: Any = None

    @classmethod
    def check(cls, data: bytes, where: str) -> tuple[int, int]:
        """(height, width) as decoded, or BadImageError."""
        if cls._decoder is None:
            from airflow_resnet_prep.formats.tfdecode import JpegDecoder

            cls._decoder = JpegDecoder()
        return cls._decoder.check(data, where)


def scan(store: Store, segment: Segment, classes: list[str], decode: bool) -> SegmentResult:
    """Read ``segment`` once: CRC, records, record-level findings, and decode failures (``decode``)."""
    result = SegmentResult(segment)
    reader = RangeReader(store, segment.key, segment.start, segment.end)
    try:
        if segment.kind == REFERENCE:
            _scan_tfrecords(reader, store.uri(segment.key), segment, classes, decode, result)
        elif segment.kind == WEBDATASET:
            _scan_webdataset(reader, store, segment, classes, decode, result)
        else:
            _scan_recordio(reader, store.uri(segment.key), segment, decode, result)
    except (tfrecord.TFRecordError, recordio.RecordIOError, wdstar.TarFormatError) as exc:
        # The framing is broken from here on: nothing after this point can be found as records.
        result.findings.append(Finding(segment.key, _without_name(str(exc), store.uri(segment.key))))
    reader.drain()
    result.crc, result.size = reader.crc, reader.pos - segment.start
    return result


def _without_name(message: str, name: str) -> str:
    return message.removeprefix(f"{name}: ")


def _scan_tfrecords(
    reader: RangeReader, name: str, segment: Segment, classes: list[str], decode: bool, result: SegmentResult
) -> None:
    label_of = {synset: i + 1 for i, synset in enumerate(classes)}
    offset = segment.start
    for position, data in enumerate(tfrecord.iter_records(reader, name, verify=True)):
        size = len(data) + tfrecord.OVERHEAD
        result.offsets.append(offset)
        result.sizes.append(size)
        try:
            features = parse_example(data)
        except PrepError as exc:
            result.findings.append(Finding(segment.key, f"not a tf.train.Example: {exc}", position, offset))
            result.labels.append(-1)
            offset += size
            continue
        filename = _first(features.get("image/filename"), b"?").decode("utf-8", "replace")
        problems = [k for k, kind in FEATURES.items() if not _has(features.get(k), kind)]
        if problems:
            result.findings.append(
                Finding(
                    segment.key,
                    f"missing or mistyped features: {', '.join(problems)}",
                    position,
                    offset,
                    filename,
                )
            )
        label = _first(features.get("image/class/label"), -1)
        synset = _first(features.get("image/class/synset"), b"").decode("utf-8", "replace")
        result.labels.append(float(label) if isinstance(label, int) else -1.0)
        expected = label_of.get(synset)
        if expected is None:
            result.findings.append(
                Finding(
                    segment.key,
                    f"class {synset!r} is not one of the manifest's classes",
                    position,
                    offset,
                    filename,
                )
            )
        elif label != expected:
            result.findings.append(
                Finding(
                    segment.key,
                    f"label {label} for class {synset}, expected {expected} (1 + its index among the "
                    f"{len(classes)} classes)",
                    position,
                    offset,
                    filename,
                )
            )
        result.classes[synset] += 1
        if decode:
            encoded = _first(features.get("image/encoded"), b"")
            try:
                decoded = _Decoder.check(encoded, filename)
                result.decoded += 1
            except BadImageError as exc:
                result.decode_failures.append((offset, position, exc.reason, filename))
            else:
                # The size features come from the header; a reader may rely on them (DALI's crops).
                said = (_first(features.get("image/height"), -1), _first(features.get("image/width"), -1))
                if said != decoded:
                    result.findings.append(
                        Finding(
                            segment.key,
                            f"image/height, image/width say {said[0]}x{said[1]}, the image decodes to "
                            f"{decoded[0]}x{decoded[1]}",
                            position,
                            offset,
                            filename,
                        )
                    )
        offset += size


def _scan_recordio(
    reader: RangeReader, name: str, segment: Segment, decode: bool, result: SegmentResult
) -> None:
    for offset, payload in recordio._iter_records(reader, name):
        result.offsets.append(offset)
        try:
            flag, label, index, _, image = recordio.unpack_header(payload)
        except recordio.RecordIOError as exc:
            result.findings.append(Finding(segment.key, str(exc), None, offset))
            result.ids.append(-1)
            result.labels.append(-1.0)
            continue
        result.ids.append(index)
        result.labels.append(label)
        if flag != 0:
            result.findings.append(
                Finding(segment.key, f"image header flag {flag}, expected 0 (one float label)", None, offset)
            )
        if decode:
            try:
                _Decoder.check(image, f"id {index}")
                result.decoded += 1
            except BadImageError as exc:
                result.decode_failures.append((offset, index, exc.reason, None))


def _scan_webdataset(
    reader: RangeReader,
    store: Store,
    segment: Segment,
    classes: list[str],
    decode: bool,
    result: SegmentResult,
) -> None:
    """A WebDataset shard (docs/formats.md, WebDataset): ustar members as written, samples of exactly
    ``.cls``, ``.jpg``, ``.json`` whose label is the 0-based index of the wnid the ``.json`` names, and,
    when ``<shard>.idx`` exists, that index equal to what DALI's ``wds2idx`` writes for the shard."""
    label_of = {synset: i for i, synset in enumerate(classes)}
    key = segment.key
    samples: list[list[wdstar.Component]] = []
    nondeterministic: list[Finding] = []
    group: list[tuple[wdstar.Entry, str, bytes]] = []

    def close_sample() -> None:
        if not group:
            return
        position, offset = len(samples), group[0][0].offset
        sample_key = wdstar.split_name(group[0][0].name)[0]
        samples.append([wdstar.Component(ext, e.data_offset, e.size, e.name) for e, ext, _ in group])
        result.offsets.append(offset)
        members = {ext: data for _, ext, data in group}
        exts = tuple(ext for _, ext, _ in group)
        if exts != WDS_MEMBERS:
            result.findings.append(
                Finding(
                    key,
                    f"members {', '.join(exts)}; expected {', '.join(WDS_MEMBERS)}",
                    position,
                    offset,
                    sample_key,
                )
            )
        try:
            meta = json.loads(members.get("json", b""))
            synset, filename = str(meta["wnid"]), str(meta["filename"])
        except (ValueError, KeyError, TypeError):
            result.findings.append(
                Finding(key, 'the .json member is not {"wnid", "filename"}', position, offset, sample_key)
            )
            synset, filename = "", sample_key
        cls_text = members.get("cls", b"").decode("ascii", "replace")
        label = int(cls_text) if cls_text.isdigit() else -1
        result.labels.append(float(label))
        expected = label_of.get(synset)
        if expected is None:
            result.findings.append(
                Finding(
                    key, f"class {synset!r} is not one of the manifest's classes", position, offset, filename
                )
            )
        elif label != expected:
            result.findings.append(
                Finding(
                    key,
                    f".cls {cls_text!r} for class {synset}, expected {expected} (its index among the "
                    f"{len(classes)} classes, from 0)",
                    position,
                    offset,
                    filename,
                )
            )
        if wdstar.key_of(filename) != sample_key:
            result.findings.append(
                Finding(
                    key,
                    f"key {sample_key!r} is not the stem of the file name it carries",
                    position,
                    offset,
                    filename,
                )
            )
        result.classes[synset] += 1
        if decode and "jpg" in members:
            try:
                _Decoder.check(members["jpg"], filename)
                result.decoded += 1
            except BadImageError as exc:
                result.decode_failures.append((offset, position, exc.reason, filename))
        group.clear()

    for entry, data in wdstar.iter_entries(reader, store.uri(key), segment.start):
        if not entry.deterministic:
            nondeterministic.append(
                Finding(
                    key,
                    "tar header differs from the one written (mode, owner, time or format)",
                    None,
                    entry.offset,
                    entry.name,
                )
            )
        sample_key, ext = wdstar.split_name(entry.name)
        if group and wdstar.split_name(group[0][0].name)[0] != sample_key:
            close_sample()
        group.append((entry, ext, data))
    close_sample()
    result.findings.extend(nondeterministic[:3])
    if reader.tell() != segment.end:
        result.findings.append(
            Finding(
                key,
                f"{segment.end - reader.tell():,} bytes after the end-of-archive blocks",
                None,
                reader.tell(),
            )
        )
    try:
        text = store.read_bytes(f"{key}.idx").decode("utf-8", "replace")
    except FileNotFoundError:
        return
    # The first line says the index version and the number of samples; then one line per sample.
    wanted = wdstar.dali_index(samples).splitlines() if samples else ["", ""]
    head, _, rest = text.partition("\n")
    if head != wanted[0]:
        result.findings.append(
            Finding(f"{key}.idx", f"first line {head[:40]!r}; the shard needs {wanted[0]!r}")
        )
    result.findings.extend(compare_lines(f"{key}.idx", rest, wanted[1:], "the shard", first_line=2))


def compare_lines(key: str, text: str, wanted: list[str], what: str, first_line: int = 1) -> list[Finding]:
    """``key``'s lines against ``wanted`` (what the data file says they must be), naming the first
    differences; a deleted or added line shows as a count difference and the first shifted line.
    ``first_line``: the number of ``text``'s first line in its file (after a header line: 2)."""
    lines = text.splitlines()
    findings = []
    if len(lines) != len(wanted):
        findings.append(Finding(key, f"{len(lines):,} lines, the data file has {len(wanted):,} records"))
    for i, (line, want) in enumerate(zip(lines, wanted, strict=False)):
        if line.split() != want.split():
            findings.append(
                Finding(
                    key, f"line {i + first_line:,} is {line[:200]!r}; {what} there says {want[:200]!r}", i
                )
            )
            if len(findings) >= 3:  # after a deleted line every later one differs: the first few say it
                break
    return findings


def _first(values: Any, default: Any) -> Any:
    return values[0] if values else default


def _has(values: Any, kind: str) -> bool:
    if not values or len(values) != 1:
        return False
    return isinstance(values[0], bytes) if kind == "b" else isinstance(values[0], int)
