"""MXNet RecordIO, byte for byte as dmlc-core's ``RecordIOWriter`` and MXNet's ``recordio.pack`` write it.

A ``.rec`` file is a run of records. Each record's payload is the 24-byte image header
(``struct.pack('<IfQQ', flag, label, id, id2)``) followed by the image bytes, and is framed as parts::

    uint32 magic 0xced7230a | uint32 lrec = cflag << 29 | length | length bytes | zero pad to 4

The reader (and dmlc's splitter, which jumps into the middle of a file and looks for a record start)
finds records by the magic at 4-aligned positions, so the writer escapes every copy of the magic that
sits at a 4-aligned offset of the payload: it ends the current part there (cflag 1 for the first part,
2 for the later ones), drops the 4 magic bytes (the reader puts them back between parts) and goes on;
the last part of a split record has cflag 3, an unsplit record cflag 0. See docs/formats.md, RecordIO.

This is the hot path of the ``nvidia`` converter (1.28 M records), so the work per record is a C-speed
scan of the image for the magic plus a handful of small buffers handed to ``writelines``; the image
bytes are never copied or concatenated with the header.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from typing import BinaryIO

from airflow_resnet_prep.errors import PrepError

MAGIC: int = 0xCED7230A
# dmlc-core checks ``size < (1 << 29)``: the length word keeps the top 3 bits for the cflag.
MAX_RECORD: int = (1 << 29) - 1
HEADER_SIZE: int = 24

Buffer = bytes | bytearray | memoryview

_MAGIC_BYTES = struct.pack("<I", MAGIC)
# The magic cannot overlap itself (no proper prefix equals a suffix), so the non-overlapping matches of
# finditer are all the matches. ``re`` scans any buffer (memoryview of an mmap too) without a copy and,
# measured on JPEG data, about 1.6x faster than bytes.find for this 4-byte needle.
_MAGIC_RE = re.compile(re.escape(_MAGIC_BYTES))
# numpy (installed with TensorFlow, and a dependency of the package) scans images faster; the
# standard library's scan stays for small buffers (headers) and for an environment without it.
try:
    import numpy as _np
except ImportError:  # pragma: no cover - numpy is a dependency; kept for a trimmed environment
    _np = None
_NUMPY_FROM = 1024
_HEAD = struct.Struct("<II")
_IMAGE_HEADER = struct.Struct("<IfQQ")
_LEN_MASK = (1 << 29) - 1
# Zero padding indexed by length % 4.
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")


class RecordTooLargeError(PrepError, ValueError):
    """A payload longer than RecordIO's limit of 2^29 - 1 bytes."""


class RecordIOError(PrepError):
    """A ``.rec`` file that is not valid RecordIO: bad magic, bad continuation flag, or truncated."""


def pack_header(label: float, index: int) -> bytes:
    """The 24-byte image header im2rec writes for a single float label: flag 0, label, id=index, id2 0."""
    return _IMAGE_HEADER.pack(0, label, index, 0)


def unpack_header(payload: Buffer) -> tuple[int, float, int, int, bytes]:
    """Split a record payload into ``(flag, label, id, id2, image bytes)``.

    A non-zero flag (MXNet's multi-label records, which we never write) is returned as is and the
    bytes after the header are not interpreted: they hold ``flag`` float32 labels, then the image.
    """
    payload = _as_bytes_view(payload)
    if len(payload) < HEADER_SIZE:
        raise RecordIOError(
            f"record payload of {len(payload)} bytes is shorter than the {HEADER_SIZE}-byte image header"
        )
    flag, label, id1, id2 = _IMAGE_HEADER.unpack_from(payload, 0)
    return flag, label, id1, id2, bytes(payload[HEADER_SIZE:])


def _as_bytes_view(buf: Buffer) -> Buffer:
    """A buffer whose ``len`` is its size in bytes (a memoryview of wider items is cast to bytes)."""
    if isinstance(buf, memoryview) and (buf.itemsize != 1 or buf.ndim != 1):
        return buf.cast("B")
    return buf


def _aligned_magics(buf: Buffer, base: int = 0) -> list[int]:
    """Offsets (``base`` + position) of the magic at 4-aligned positions of ``buf``.

    ``base`` must be a multiple of 4. A match is always whole, so an aligned match lies below the
    length rounded down to 4, which is the bound dmlc-core's loop uses.
    """
    if _np is not None and len(buf) >= _NUMPY_FROM:
        # The buffer as little-endian 32-bit words compared with the magic at once: only aligned
        # positions, about twice as fast as the regular expression's byte-by-byte scan (the largest
        # single cost of the nvidia converter per image).
        words = _np.frombuffer(buf, dtype="<u4", count=len(buf) >> 2)
        if MAGIC not in words:
            return []
        return [base + (int(i) << 2) for i in _np.flatnonzero(words == MAGIC)]
    if isinstance(buf, bytes) and _MAGIC_BYTES not in buf:  # headers: a C substring test, no scan
        return []
    return [base + m.start() for m in _MAGIC_RE.finditer(buf) if not m.start() & 3]


def _check_size(n: int) -> None:
    if n > MAX_RECORD:
        raise RecordTooLargeError(
            f"record payload of {n} bytes exceeds the RecordIO limit of {MAX_RECORD} bytes (2^29 - 1)"
        )


def _split_frame(segments: list[Buffer], n: int, hits: list[int]) -> list[Buffer]:
    """Frame a payload (the concatenation of ``segments``, ``n`` bytes) that holds aligned magics.

    Parts are emitted as memoryview slices of the segments, so nothing large is copied.
    """
    views = [memoryview(s) for s in segments]
    starts = []
    pos = 0
    for v in views:
        starts.append(pos)
        pos += len(v)

    def pieces(a: int, b: int) -> list[memoryview]:
        out = []
        for v, s in zip(views, starts, strict=True):
            lo, hi = max(a, s), min(b, s + len(v))
            if lo < hi:
                out.append(v[lo - s : hi - s])
        return out

    bufs: list[Buffer] = []
    dptr = 0
    for i in hits:
        bufs.append(_HEAD.pack(MAGIC, (1 if dptr == 0 else 2) << 29 | (i - dptr)))
        bufs.extend(pieces(dptr, i))
        dptr = i + 4
    bufs.append(_HEAD.pack(MAGIC, 3 << 29 | (n - dptr)))
    bufs.extend(pieces(dptr, n))
    bufs.append(_PAD[n & 3])
    return bufs


def frame(payload: Buffer) -> list[Buffer]:
    """The buffers that make up ``payload`` framed as one RecordIO record (for ``writelines``/``writev``).

    Without an aligned magic in the payload (the common case) these are exactly three: the 8-byte
    head, the payload itself, the padding (possibly empty).
    """
    payload = _as_bytes_view(payload)
    n = len(payload)
    _check_size(n)
    hits = _aligned_magics(payload)
    if not hits:
        return [_HEAD.pack(MAGIC, n), payload, _PAD[n & 3]]
    return _split_frame([payload], n, hits)


def framed_size(payload: Buffer) -> int:
    """Bytes that ``payload`` takes in the file: 8 + len + pad, plus 4 per aligned magic (an extra head
    of 8 bytes per split, minus the 4 magic bytes that are dropped)."""
    payload = _as_bytes_view(payload)
    n = len(payload)
    return 8 + n + (-n & 3) + 4 * len(_aligned_magics(payload))


def record_buffers(header: Buffer, image: Buffer) -> list[Buffer]:
    """The buffers of the record whose payload is ``header + image``, without joining the two.

    The common case is four buffers: head, header, image, padding.
    """
    header = _as_bytes_view(header)
    image = _as_bytes_view(image)
    h = len(header)
    n = h + len(image)
    _check_size(n)
    if h & 3:
        # Alignment inside the image would differ from alignment inside the payload: scan the join.
        return frame(bytes(header) + bytes(image))
    hits = _aligned_magics(header) + _aligned_magics(image, h)
    if not hits:
        return [_HEAD.pack(MAGIC, n), header, image, _PAD[n & 3]]
    return _split_frame([header, image], n, hits)


def write_record(fh: BinaryIO, header: Buffer, image: Buffer) -> int:
    """Write one record with payload ``header + image`` to ``fh``; return the number of bytes written.

    ``fh`` must write whole buffers (a buffered binary file from ``open(path, 'wb')``, or BytesIO).
    A payload over :data:`MAX_RECORD` raises :class:`RecordTooLargeError` (a ``ValueError``) naming
    its size; the caller adds the file's name.
    """
    bufs = record_buffers(header, image)
    fh.writelines(bufs)
    return sum(len(b) for b in bufs)


def is_record_head(head: bytes) -> bool:
    """Whether 8 bytes at a 4-aligned offset start a record: the magic and a first-part flag (0 or 1).
    The writer escapes the magic at every aligned position inside payloads, so only record heads and
    continuation parts carry it there (what lets a reader start in the middle of a file, as dmlc's
    splitter does)."""
    if len(head) != 8:
        return False
    magic, lrec = _HEAD.unpack(head)
    return magic == MAGIC and lrec >> 29 in (0, 1)


def iter_records(path_or_fh: str | os.PathLike[str] | BinaryIO) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset of the record's first magic, payload)`` for each record, undoing the escaping.

    Raises :class:`RecordIOError` naming the file and the offset on a bad magic, a continuation flag
    out of sequence, or a truncated record.
    """
    if isinstance(path_or_fh, (str, os.PathLike)):
        with open(path_or_fh, "rb") as fh:
            yield from _iter_records(fh, os.fspath(path_or_fh))
    else:
        yield from _iter_records(path_or_fh, str(getattr(path_or_fh, "name", "<stream>")))


def _iter_records(fh: BinaryIO, name: str) -> Iterator[tuple[int, bytes]]:
    offset = fh.tell() if fh.seekable() else 0
    start = offset  # offset of the current record's first part
    parts: list[bytes] = []  # non-empty while inside a split record
    while True:
        head = fh.read(8)
        if not head:
            if parts:
                raise RecordIOError(
                    f"{name}: truncated: the split record starting at offset {start} has no last part"
                )
            return
        if len(head) < 8:
            raise RecordIOError(f"{name}: truncated record head at offset {offset} ({len(head)} of 8 bytes)")
        magic, lrec = _HEAD.unpack(head)
        if magic != MAGIC:
            raise RecordIOError(
                f"{name}: bad magic 0x{magic:08x} at offset {offset} (expected 0x{MAGIC:08x}); "
                "the file is corrupt or not RecordIO"
            )
        cflag, length = lrec >> 29, lrec & _LEN_MASK
        if parts and cflag in (0, 1):
            raise RecordIOError(
                f"{name}: part with cflag {cflag} at offset {offset} inside the split record starting at "
                f"offset {start} (expected cflag 2 or 3)"
            )
        if not parts and cflag in (2, 3):
            raise RecordIOError(
                f"{name}: continuation part (cflag {cflag}) at offset {offset} without a first part"
            )
        if cflag in (0, 1):
            start = offset
        padded = length + (-length & 3)
        data = fh.read(padded)
        if len(data) < padded:
            raise RecordIOError(
                f"{name}: truncated record at offset {offset}: part of {length} bytes (+ padding) "
                f"but only {len(data)} bytes left"
            )
        offset += 8 + padded
        if padded != length:
            data = data[:length]
        if cflag == 0:
            yield start, data
        elif cflag == 3:
            parts.append(data)
            payload = b"".join(parts)
            parts = []
            yield start, payload
        else:
            parts.append(data)
            parts.append(_MAGIC_BYTES)
