"""A ``tf.train.Example`` for one ImageNet image, serialised by hand (docs/formats.md, TFRecords), without TensorFlow.

Workers that write TFRecords must not pay TensorFlow's import (seconds, hundreds of MB) nor build a
proto object per image, so the protobuf wire format is written directly::

    Example  { 1: Features }
    Features { 1: repeated MapEntry { 1: string key, 2: Feature value } }   # map<string, Feature>
    Feature  { 1: BytesList | 2: FloatList | 3: Int64List }                 # oneof kind
    BytesList { 1: repeated bytes value }
    Int64List { 1: repeated int64 value [packed] }

Map entries are written sorted by key, as protobuf's deterministic serialisation orders them, so the
output is byte-identical to ``example.SerializeToString(deterministic=True)`` and reruns are identical.
The constant features and every key's prefix are built once at import.

:func:`parse_example` reads the same wire format back (any ``tf.train.Example``, not only ours), so
the report can show what a shard holds without TensorFlow; record bytes are untrusted input there.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator

from airflow_resnet_prep.errors import PrepError

_U64 = (1 << 64) - 1

FeatureValues = list[bytes] | list[int] | list[float]


class ExampleParseError(PrepError):
    """Bytes that are not a well-formed serialised ``tf.train.Example``."""


_ONE_BYTE = tuple(bytes((v,)) for v in range(0x80))


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint; negative int64 values are written as their 64-bit two's complement."""
    if 0 <= value < 0x4000:  # every length and label but the image's: no loop (a few per record)
        return _ONE_BYTE[value] if value < 0x80 else bytes((value & 0x7F | 0x80, value >> 7))
    value &= _U64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _ld(field: int, data: bytes) -> bytes:
    """A length-delimited field (wire type 2); every field used here has a one-byte tag."""
    return bytes((field << 3 | 2,)) + _varint(len(data)) + data


def _bytes_feature(value: bytes) -> bytes:
    return _ld(1, _ld(1, value))  # Feature.bytes_list -> BytesList.value


def _int64_feature(value: int) -> bytes:
    return _ld(3, _ld(1, _varint(value)))  # Feature.int64_list -> Int64List.value (packed)


def _entry(key: bytes, feature: bytes) -> bytes:
    """One map entry {1: key, 2: Feature}, wrapped as a Features.feature field (field 1)."""
    return _ld(1, _ld(1, key) + _ld(2, feature))


def _key_prefix(key: bytes) -> bytes:
    """The constant start of a map entry: its key field and the tag of its value field (2, LEN)."""
    return _ld(1, key) + b"\x12"


_K_LABEL = _key_prefix(b"image/class/label")
_K_SYNSET = _key_prefix(b"image/class/synset")
_K_ENCODED = _key_prefix(b"image/encoded")
_K_FILENAME = _key_prefix(b"image/filename")
_K_HEIGHT = _key_prefix(b"image/height")
_K_WIDTH = _key_prefix(b"image/width")
# Whole entries of the constant features, in their sorted places below.
_E_CHANNELS = _entry(b"image/channels", _int64_feature(3))
_E_COLORSPACE = _entry(b"image/colorspace", _bytes_feature(b"RGB"))
_E_FORMAT = _entry(b"image/format", _bytes_feature(b"JPEG"))


def _wrap_entry(prefix: bytes, feature: bytes) -> bytes:
    entry = prefix + _varint(len(feature)) + feature
    return b"\x0a" + _varint(len(entry)) + entry


# The entries that repeat from image to image, built once each: the class's (one per class, 1,000 in
# all) and the image size's (few distinct sizes in ImageNet).
@functools.lru_cache(maxsize=4096)
def _class_entries(label: int, synset: str) -> bytes:
    return (
        _E_CHANNELS
        + _wrap_entry(_K_LABEL, _int64_feature(label))
        + _wrap_entry(_K_SYNSET, _bytes_feature(synset.encode()))
        + _E_COLORSPACE
    )


@functools.lru_cache(maxsize=4096)
def _size_entries(height: int, width: int) -> bytes:
    return _wrap_entry(_K_HEIGHT, _int64_feature(height)) + _wrap_entry(_K_WIDTH, _int64_feature(width))


def encode_example(
    *, encoded: bytes, filename: str, label: int, synset: str, height: int, width: int
) -> bytes:
    """Serialise the ``tf.train.Example`` of one image (docs/formats.md, TFRecords).

    ``encoded`` is the JPEG, ``filename`` its base name, ``label`` the 1-based class, ``synset`` the
    class's WordNet id, ``height``/``width`` the stored JPEG's size. Image/format, colorspace and
    channels are the constants ``JPEG``, ``RGB`` and ``3``.
    """
    return b"".join(
        example_parts(
            encoded=encoded, filename=filename, label=label, synset=synset, height=height, width=width
        )
    )


def example_parts(
    *, encoded: bytes, filename: str, label: int, synset: str, height: int, width: int
) -> tuple[bytes, bytes, bytes]:
    """:func:`encode_example` as three pieces, ``(head, encoded, tail)``, whose concatenation it is: a
    writer hands them to the file as they are, so the JPEG is never copied into a joined record."""
    n = len(encoded)
    blist_len = 1 + len(_varint(n)) + n
    feature_len = 1 + len(_varint(blist_len)) + blist_len
    entry_len = len(_K_ENCODED) + len(_varint(feature_len)) + feature_len
    # Features.feature tag+len, key, Feature len, Feature.bytes_list tag+len, BytesList.value tag+len.
    encoded_head = b"".join(
        (
            b"\x0a",
            _varint(entry_len),
            _K_ENCODED,
            _varint(feature_len),
            b"\x0a",
            _varint(blist_len),
            b"\x0a",
            _varint(n),
        )
    )
    before = _class_entries(label, synset)
    after = (
        _wrap_entry(_K_FILENAME, _bytes_feature(filename.encode())) + _E_FORMAT + _size_entries(height, width)
    )
    features_len = len(before) + len(encoded_head) + n + len(after)
    # Example.features (field 1) holding the entries in sorted key order.
    return b"".join((b"\x0a", _varint(features_len), before, encoded_head)), encoded, after


# -- reading ----------------------------------------------------------------------------------------
def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ExampleParseError("malformed protobuf: truncated or overlong varint")
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
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            if pos + n > len(buf):
                raise ExampleParseError("malformed protobuf: field runs past the end")
            value, pos = buf[pos : pos + n], pos + n
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise ExampleParseError("malformed protobuf: fixed field runs past the end")
            value, pos = int.from_bytes(buf[pos : pos + width], "little"), pos + width
        else:
            raise ExampleParseError(f"malformed protobuf: unsupported wire type {wire}")
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
                        x, pos = _read_varint(v, pos)
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
                        raise ExampleParseError("malformed protobuf: packed floats of odd length")
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
