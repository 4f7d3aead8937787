"""Read chosen records of a TFRecord shard back, and parse their ``tf.train.Example``, without TensorFlow.

A TFRecord file is a run of ``uint64 length | uint32 masked crc32c(length) | data | uint32 masked
crc32c(data)`` (see ``formats/tfrecord.py``). To reach record *k* only the 12-byte heads of the
records before it are read (one ``pread`` each), so a 140 MB shard costs a few kilobytes of I/O plus
the records wanted. Every head's checksum and the data checksum of each record read are checked.

The Example is decoded with a minimal protobuf wire-format reader (SPEC §3 layout, see
``formats/tfexample.py`` for the writer); every malformed input raises :class:`RecordReadError`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator

from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.formats.tfrecord import FOOTER_SIZE, HEADER_SIZE, masked_crc32c

_LEN = struct.Struct("<Q")
_CRC = struct.Struct("<I")
# A record above this is not one of ours (images are < 100 MB); refuse it rather than allocate it.
MAX_RECORD = 1 << 30

FeatureValues = list[bytes] | list[int] | list[float]


class RecordReadError(PrepError):
    """An output file that cannot be read back: truncated, bad framing or a malformed record."""


def read_records(path: str | os.PathLike[str], positions: Iterable[int]) -> dict[int, bytes]:
    """The data of the records at ``positions`` (0-based) of the TFRecord file ``path``.

    One pass over the heads up to the last position wanted; raises :class:`RecordReadError` when the
    file ends before it, a length is implausible or a checksum does not match.
    """
    wanted_set = set(positions)
    out: dict[int, bytes] = {}
    if not wanted_set:
        return out
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        offset = 0
        for index in range(max(wanted_set) + 1):
            head = os.pread(fd, HEADER_SIZE, offset)
            if len(head) < HEADER_SIZE:
                raise RecordReadError(f"{path}: ends at offset {offset}, before record {index}")
            (length,) = _LEN.unpack_from(head)
            if _CRC.unpack_from(head, 8)[0] != masked_crc32c(head[:8]):
                raise RecordReadError(f"{path}: record {index} at offset {offset}: bad length checksum")
            end = offset + HEADER_SIZE + length + FOOTER_SIZE
            if length > MAX_RECORD or end > size:
                raise RecordReadError(f"{path}: record {index} at offset {offset} claims {length} bytes")
            if index in wanted_set:
                body = os.pread(fd, length + FOOTER_SIZE, offset + HEADER_SIZE)
                data = body[:length]
                whole = len(body) == length + FOOTER_SIZE
                if not whole or _CRC.unpack_from(body, length)[0] != masked_crc32c(data):
                    raise RecordReadError(f"{path}: record {index} at offset {offset}: bad data checksum")
                out[index] = data
            offset = end
    finally:
        os.close(fd)
    return out


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise RecordReadError("malformed protobuf: truncated or overlong varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)`` of each field: an int for varints and fixed-width values,
    the bytes for length-delimited ones."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise RecordReadError("malformed protobuf: field runs past the end")
            value, pos = buf[pos : pos + n], pos + n
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise RecordReadError("malformed protobuf: fixed field runs past the end")
            value, pos = int.from_bytes(buf[pos : pos + width], "little"), pos + width
        else:
            raise RecordReadError(f"malformed protobuf: unsupported wire type {wire}")
        yield number, wire, value


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _feature(buf: bytes) -> FeatureValues:
    """The values of one ``Feature``: bytes, int64 (packed or not) or float lists."""
    for number, wire, value in _fields(buf):
        if wire != 2 or not isinstance(value, bytes):
            continue
        if number == 1:  # BytesList
            return [v for n, _w, v in _fields(value) if n == 1 and isinstance(v, bytes)]
        if number == 3:  # Int64List
            ints: list[int] = []
            for n, _w, v in _fields(value):
                if n != 1:
                    continue
                if isinstance(v, bytes):  # packed
                    pos = 0
                    while pos < len(v):
                        x, pos = _varint(v, pos)
                        ints.append(_signed(x))
                else:
                    ints.append(_signed(v))
            return ints
        if number == 2:  # FloatList
            floats: list[float] = []
            for n, _w, v in _fields(value):
                if n != 1:
                    continue
                if isinstance(v, bytes):
                    if len(v) % 4:
                        raise RecordReadError("malformed protobuf: packed floats of odd length")
                    floats.extend(struct.unpack(f"<{len(v) // 4}f", v))
                else:
                    floats.append(struct.unpack("<f", v.to_bytes(4, "little"))[0])
            return floats
    return []


def parse_example(data: bytes) -> dict[str, FeatureValues]:
    """The features of a serialised ``tf.train.Example``: key -> list of values."""
    features: dict[str, FeatureValues] = {}
    for number, _, value in _fields(data):
        if number != 1 or not isinstance(value, bytes):
            continue
        for n, _, entry in _fields(value):
            if n != 1 or not isinstance(entry, bytes):
                continue
            key, feature = None, b""
            for m, _, v in _fields(entry):
                if m == 1 and isinstance(v, bytes):
                    key = v.decode("utf-8", "replace")
                elif m == 2 and isinstance(v, bytes):
                    feature = v
            if key is not None:
                features[key] = _feature(feature)
    return features
