"""TFRecord framing without TensorFlow: the bytes ``tf.io.TFRecordWriter`` writes, written by the package.

TensorFlow 2.21 has no ``s3://`` file system (it moved to tensorflow-io, which does not load with 2.21),
so shards bound for object storage are framed here and written through the storage seam. Each record
(TensorFlow's ``core/lib/io/record_writer.cc``, uncompressed)::

    uint64 length          little-endian
    uint32 masked_crc32c(length bytes)
    byte   data[length]
    uint32 masked_crc32c(data)

``masked_crc32c(x) = ((crc >> 15) | (crc << 17)) + 0xa282ead8`` (mod 2**32), where ``crc`` is the
CRC-32C (Castagnoli) of ``x``. The CRC comes from ``google-crc32c`` (Google's C library, with SSE4.2 /
ARMv8 CRC instructions), which TensorFlow itself no longer exposes to Python.

The reader checks both CRCs of every record and names the file and byte offset of the first bad one.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import BinaryIO

import google_crc32c

from airflow_resnet_prep.errors import SourceError

HEADER_SIZE = 12  # uint64 length + uint32 masked CRC of the length
FOOTER_SIZE = 4  # uint32 masked CRC of the data
OVERHEAD = HEADER_SIZE + FOOTER_SIZE  # bytes a record adds to its data
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")
_crc32c = google_crc32c.value
_extend = google_crc32c.extend


class TFRecordError(SourceError):
    """A TFRecord file that is truncated or whose checksums do not match its bytes."""


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's checksum of ``data``: its CRC-32C rotated right by 15 bits plus a constant."""
    # google-crc32c takes read-only buffers only: bytes as they are, anything else copied once.
    return _mask(_crc32c(data if isinstance(data, bytes) else bytes(data)))


def _mask(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def frame_parts(data: bytes | bytearray | memoryview) -> tuple[bytes, bytes]:
    """The 12-byte header and 4-byte footer that frame ``data`` as one record.

    Write ``header``, ``data``, ``footer`` in that order; unlike :func:`frame_record` this never copies
    ``data`` (an image of megabytes), which is what a writer wants.
    """
    length = _LENGTH.pack(len(data))
    return length + _CRC.pack(masked_crc32c(length)), _CRC.pack(masked_crc32c(data))


def frame_record(data: bytes | bytearray | memoryview) -> bytes:
    """``data`` framed as one TFRecord, exactly as ``tf.io.TFRecordWriter`` writes it."""
    header, footer = frame_parts(data)
    return b"".join((header, data, footer))


def write_record(fh: BinaryIO, data: bytes | bytearray | memoryview) -> int:
    """Append ``data`` as one record to the binary file ``fh``; return the bytes written."""
    header, footer = frame_parts(data)
    fh.write(header)
    fh.write(data)
    fh.write(footer)
    return len(data) + OVERHEAD


class TFRecordWriter:
    """Writes records to a binary file object (a local file, or a storage-seam writer).

    Like ``tf.io.TFRecordWriter`` without compression, but on any ``fh`` with ``write``; it neither
    opens nor closes ``fh``. ``offsets`` and ``sizes`` (framed sizes) of the records written so far
    are what a DALI index lists; ``crc`` is the CRC-32C of every byte written so far (the manifest's
    checksum of the file), extended over every byte written (in C: at ~4 GB/s, hashing the data a second
    time is cheaper than joining the footer's CRC to the file's in Python).
    """

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.offsets: list[int] = []
        self.sizes: list[int] = []
        self.position = 0
        self.crc = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        data = data if isinstance(data, bytes) else bytes(data)
        length = _LENGTH.pack(len(data))
        header = length + _CRC.pack(masked_crc32c(length))
        data_crc = _crc32c(data)
        footer = _CRC.pack(_mask(data_crc))
        self.fh.write(header)
        self.fh.write(data)
        self.fh.write(footer)
        # The file's CRC extended over the data in C again costs less than joining the data's CRC to it
        # in Python (combine, ~30 us a record).
        self.crc = _extend(_extend(_extend(self.crc, header), data), footer)
        size = len(data) + OVERHEAD
        self.offsets.append(self.position)
        self.sizes.append(size)
        self.position += size
        return size

    def write_parts(self, parts: Sequence[bytes]) -> int:
        """Write one record whose data is the concatenation of ``parts`` (e.g.
        :func:`~airflow_resnet_prep.formats.tfexample.example_parts`), without joining them."""
        n = sum(len(p) for p in parts)
        length = _LENGTH.pack(n)
        header = length + _CRC.pack(masked_crc32c(length))
        data_crc = 0
        for p in parts:
            data_crc = _extend(data_crc, p)
        footer = _CRC.pack(_mask(data_crc))
        crc = _extend(self.crc, header)
        self.fh.write(header)
        for p in parts:
            self.fh.write(p)
            crc = _extend(crc, p)
        self.fh.write(footer)
        self.crc = _extend(crc, footer)
        size = n + OVERHEAD
        self.offsets.append(self.position)
        self.sizes.append(size)
        self.position += size
        return size

    def write_all(self, records: Iterable[bytes]) -> None:
        for data in records:
            self.write(data)


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = fh.read(n - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _length_of(header: bytes, name: str, offset: int, verify: bool) -> int:
    """The data length a record header announces, after checking it is whole (and its checksum)."""
    if len(header) < HEADER_SIZE:
        raise TFRecordError(
            f"{name}: truncated record header at offset {offset} "
            f"({len(header)} of {HEADER_SIZE} bytes before the end of the file)"
        )
    (length,) = _LENGTH.unpack_from(header)
    if verify and _CRC.unpack_from(header, 8)[0] != masked_crc32c(header[:8]):
        raise TFRecordError(
            f"{name}: corrupt record at offset {offset}: the length field's checksum does not match "
            "(not a TFRecord file, or damaged)"
        )
    return length


def _data_of(body: bytes, length: int, name: str, offset: int, verify: bool) -> bytes:
    """A record's data from its body (data + checksum), after checking it is whole (and its checksum)."""
    if len(body) < length + FOOTER_SIZE:
        raise TFRecordError(
            f"{name}: truncated record at offset {offset}: {length + FOOTER_SIZE} bytes of data and "
            f"checksum expected, the file ends after {len(body)}"
        )
    data = body[:length]
    if verify and _CRC.unpack_from(body, length)[0] != masked_crc32c(data):
        raise TFRecordError(
            f"{name}: corrupt record at offset {offset}: the data's checksum does not match "
            f"({length} bytes of data)"
        )
    return data


def iter_records(fh: BinaryIO, name: str, verify: bool = True) -> Iterator[bytes]:
    """Yield the data of every record of the TFRecord stream ``fh``, from its current position.

    ``name`` is the file's name or URI, for messages. Raises :class:`TFRecordError` naming the file and
    the byte offset (from where reading started) of a truncated record or of a checksum that does not
    match; with ``verify=False`` only the framing is checked.
    """
    offset = 0
    while True:
        header = _read_exact(fh, HEADER_SIZE)
        if not header:
            return
        length = _length_of(header, name, offset, verify)
        yield _data_of(_read_exact(fh, length + FOOTER_SIZE), length, name, offset, verify)
        offset += HEADER_SIZE + length + FOOTER_SIZE


def read_records(path: str, verify: bool = True) -> list[bytes]:
    """Every record of the local TFRecord file ``path`` (see :func:`iter_records`)."""
    with open(path, "rb") as fh:
        return list(iter_records(fh, path, verify))


def read_records_at(
    path: str | os.PathLike[str], positions: Iterable[int], verify: bool = True
) -> dict[int, bytes]:
    """The data of the records at ``positions`` (0-based) of the local TFRecord file ``path``.

    Only the 12-byte headers of the records before the last one wanted are read (one ``pread`` each)
    and the data of the records wanted, so picking a few records of a 140 MB shard costs kilobytes.
    Errors as :func:`iter_records`, also when the file ends before a position.
    """
    wanted = set(positions)
    out: dict[int, bytes] = {}
    if not wanted:
        return out
    name = str(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        offset = 0
        for index in range(max(wanted) + 1):
            length = _length_of(os.pread(fd, HEADER_SIZE, offset), name, offset, verify)
            if index in wanted:
                body = os.pread(fd, length + FOOTER_SIZE, offset + HEADER_SIZE)
                out[index] = _data_of(body, length, name, offset, verify)
            offset += HEADER_SIZE + length + FOOTER_SIZE
    finally:
        os.close(fd)
    return out
