"""CRC-32C (Castagnoli) of whole output files, computed while they are written (docs/formats.md, Checks).

The manifest records each output file's CRC-32C, the checksum Google Cloud Storage keeps for every
object (``gcloud storage hash`` prints it base64-encoded, big-endian; we write 8 hex digits) and S3
offers as ``x-amz-checksum-crc32c``. It is computed from the buffers on their way to the file, never by
reading the file back. A file written by pieces (the ``nvidia`` ``.rec``: units write pieces, a process
pool writes chunks) gets its checksum by :func:`combine`, which joins the CRCs of consecutive pieces
from their CRCs and lengths alone, as zlib's ``crc32_combine`` does.

The CRC itself is ``google-crc32c`` (Google's C library with SSE4.2 / ARMv8 instructions, ~3 GB/s per
core here); :func:`combine` is pure Python over a table of precomputed operators (~30 µs a call).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, BinaryIO

import google_crc32c

_POLY = 0x82F63B78  # CRC-32C, reflected
_value = google_crc32c.value
_extend = google_crc32c.extend


def _ro(data: Any) -> bytes:
    """google-crc32c takes read-only ``bytes`` only; other buffers (memoryview slices of split RecordIO
    records, bytearrays) are copied once. Those are a few per thousand records."""
    return data if isinstance(data, bytes) else bytes(data)


def crc32c(data: Any, crc: int = 0) -> int:
    """CRC-32C of ``data`` appended to what ``crc`` (the CRC of the bytes before it) covers."""
    return _extend(crc, _ro(data)) if crc else _value(_ro(data))


def crc32c_of(buffers: Iterable[Any], crc: int = 0) -> int:
    """CRC-32C of the concatenation of ``buffers``, continuing ``crc``."""
    for b in buffers:
        crc = _extend(crc, _ro(b))
    return crc


def to_hex(crc: int) -> str:
    """How the manifest writes a CRC: 8 lowercase hex digits."""
    return f"{crc & 0xFFFFFFFF:08x}"


def from_hex(text: str) -> int:
    return int(text, 16)


# -- combining: crc(A + B) from crc(A), crc(B) and len(B) --------------------------------------------
def _times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _square(mat: list[int]) -> list[int]:
    return [_times(mat, mat[n]) for n in range(32)]


def _zero_byte_operators() -> list[list[int]]:
    """``ops[k]``: the GF(2) matrix that moves a CRC register over 2**k zero bytes (k < 64)."""
    one_bit = [_POLY] + [1 << n for n in range(31)]
    op = _square(_square(_square(one_bit)))  # 8 zero bits: one zero byte
    ops = [op]
    for _ in range(63):
        op = _square(op)
        ops.append(op)
    return ops


_OPS = _zero_byte_operators()
_TABLES: dict[int, tuple[list[int], list[int], list[int], list[int]]] = {}


def _tables(k: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """``_OPS[k]`` as four 256-entry tables, one per byte of the register: applying it is then four
    lookups instead of a loop over 32 bits (combine runs once per record on the TFRecord path)."""
    found = _TABLES.get(k)
    if found is None:
        mat = _OPS[k]
        out = []
        for j in range(4):
            table = [0] * 256
            for b in range(1, 256):
                low = b & -b
                table[b] = table[b ^ low] ^ mat[8 * j + low.bit_length() - 1]
            out.append(table)
        found = _TABLES[k] = (out[0], out[1], out[2], out[3])
    return found


def combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32C of ``A + B`` given ``crc1 = crc(A)``, ``crc2 = crc(B)`` and ``len2 = len(B)``."""
    if len2 < 0:
        raise ValueError(f"negative length {len2}")
    k = 0
    while len2:
        if len2 & 1:
            t0, t1, t2, t3 = _tables(k)
            crc1 = t0[crc1 & 255] ^ t1[(crc1 >> 8) & 255] ^ t2[(crc1 >> 16) & 255] ^ t3[crc1 >> 24]
        len2 >>= 1
        k += 1
    return crc1 ^ crc2


def combine_all(pieces: Iterable[tuple[int, int]]) -> int:
    """CRC-32C of consecutive pieces given as ``(crc, length)`` in order."""
    crc = 0
    for piece_crc, length in pieces:
        crc = combine(crc, piece_crc, length)
    return crc


class ChecksumWriter:
    """Wraps a binary file object: every buffer written also extends a running CRC-32C and byte count.

    Works over a local file, a store's streaming writer or an assembly's piece sink alike; it neither
    opens nor closes ``fh``.
    """

    def __init__(self, fh: BinaryIO | Any) -> None:
        self.fh = fh
        self.crc = 0
        self.size = 0

    def write(self, data: Any) -> int:
        b = _ro(data)
        self.crc = _extend(self.crc, b)
        self.size += len(b)
        self.fh.write(data)
        return len(b)

    def writelines(self, buffers: Iterable[Any]) -> None:
        for b in buffers:
            self.write(b)

    def tell(self) -> int:
        return self.size

    def writable(self) -> bool:
        return True

    @property
    def hex(self) -> str:
        return to_hex(self.crc)
