"""Index a zip archive in place through its central directory, and read one member from its span.

Kaggle's ImageNet (``imagenet-object-localization-challenge.zip``, ~160 GB, ~1.4 M members) is read as it
was downloaded: the central directory at the end of the archive lists every member with the offset of
its local header, so an image is one positioned read, as a tar member is (:mod:`.tarindex`). The span
recorded for a member runs from its local header to the next member's (or to the central directory):
the local header's own lengths (name, extra field: they may differ from the central directory's) are
read with the data, so indexing reads only the central directory. Zip64 (the end record, and the
extra field's 64-bit sizes and offsets) is read; deflated members are inflated when they are read.

Members are checked as tar members are: absolute paths, ``..``, links, encryption, overlapping spans
and methods other than stored (0) and deflated (8) are refused, naming the archive and member.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

from airflow_resnet_prep.errors import SourceError, UnsafeArchiveError
from airflow_resnet_prep.sources.tarindex import check_member_name

STORED, DEFLATED = 0, 8
_EOCD = struct.Struct("<IHHHHIIH")  # end of central directory record (22 bytes + comment)
_EOCD_SIG = 0x06054B50
_LOC64 = struct.Struct("<IIQI")  # Zip64 end of central directory locator (20 bytes)
_LOC64_SIG = 0x07064B50
_EOCD64 = struct.Struct("<IQHHIIQQQQ")  # Zip64 end of central directory record (56 bytes)
_EOCD64_SIG = 0x06064B50
_CEN = struct.Struct("<IHHHHHHIIIHHHHHII")  # central directory header (46 bytes)
_CEN_SIG = 0x02014B50
_LOC = struct.Struct("<IHHHHHIIIHH")  # local file header (30 bytes)
_LOC_SIG = 0x04034B50
_ZIP64_EXTRA = 0x0001
_MAX_TAIL = _EOCD.size + 0xFFFF + _LOC64.size  # the end records plus the longest comment
_CD_CHUNK = 8 << 20  # the central directory is read in pieces of this size (~150 MB for ImageNet)
_S_IFMT, _S_IFLNK = 0o170000, 0o120000


class ZipMember(NamedTuple):
    path: str  # normalised member path
    offset: int  # of its local header
    span: int  # bytes from its local header to the next member's (or the central directory)
    method: int
    size: int  # uncompressed


ReadAt = Callable[[int, int], bytes]


def is_zip(head: bytes) -> bool:
    """Whether the first bytes of a file are a zip's (a local header, or the end record of an empty zip)."""
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def _end_records(read_at: ReadAt, size: int, archive: str) -> tuple[int, int, int]:
    """(members, central directory offset, its size), from the end record (Zip64's when present)."""
    tail_start = max(0, size - _MAX_TAIL)
    tail = read_at(tail_start, size - tail_start)
    at = tail.rfind(b"PK\x05\x06")
    while at >= 0 and at + _EOCD.size > len(tail):
        at = tail.rfind(b"PK\x05\x06", 0, at)
    if at < 0:
        raise SourceError(f"{archive}: not a zip archive, or truncated (no end of central directory record)")
    _, disk, cd_disk, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
    if disk or cd_disk:
        raise SourceError(f"{archive}: a multi-part (split) zip archive; join its parts into one file first")
    loc = at - _LOC64.size
    if loc >= 0 and struct.unpack_from("<I", tail, loc)[0] == _LOC64_SIG:
        _, _, eocd64_offset, _ = _LOC64.unpack_from(tail, loc)
        record = read_at(eocd64_offset, _EOCD64.size)
        if len(record) < _EOCD64.size or struct.unpack_from("<I", record)[0] != _EOCD64_SIG:
            raise SourceError(f"{archive}: damaged zip: the Zip64 end record is not where its locator says")
        _, _, _, _, _, _, _, count, cd_size, cd_offset = _EOCD64.unpack(record)
    if cd_offset + cd_size > size:
        raise SourceError(f"{archive}: truncated zip: its central directory would end past the file's end")
    return count, cd_offset, cd_size


def _zip64_values(extra: bytes, wanted: list[str], where: str) -> dict[str, int]:
    """The 64-bit values of the Zip64 extra field, in the order the spec gives them."""
    pos = 0
    while pos + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, pos)
        if kind == _ZIP64_EXTRA:
            body = extra[pos + 4 : pos + 4 + length]
            if len(body) < 8 * len(wanted):
                raise SourceError(f"{where}: damaged Zip64 extra field")
            return {name: struct.unpack_from("<Q", body, 8 * i)[0] for i, name in enumerate(wanted)}
        pos += 4 + length
    raise SourceError(f"{where}: sizes need a Zip64 extra field, and the member has none")


def iter_zip(read_at: ReadAt, size: int, archive: str) -> Iterator[ZipMember]:
    """The regular files of the zip read through ``read_at(offset, n)`` (``size`` bytes), by offset."""
    count, cd_offset, cd_size = _end_records(read_at, size, archive)
    found: list[tuple[int, str, int, int, int, int]] = []  # offset, path, method, flags, csize, size
    buf, buf_at, pos = b"", cd_offset, cd_offset
    end = cd_offset + cd_size
    for _ in range(count):
        need = min(end, pos + _CEN.size + 3 * 0xFFFF)  # a whole header: name, extra and comment
        while buf_at + len(buf) < need:
            have = buf_at + len(buf)
            more = read_at(have, min(_CD_CHUNK, end - have))
            if not more:
                raise SourceError(f"{archive}: truncated zip: the central directory ends early")
            buf, buf_at = buf[pos - buf_at :] + more, pos
        at = pos - buf_at
        if at + _CEN.size > len(buf):
            raise SourceError(f"{archive}: damaged zip: the central directory ends before its last member")
        fields = _CEN.unpack_from(buf, at)
        if fields[0] != _CEN_SIG:
            raise SourceError(f"{archive}: damaged zip: no central directory header at offset {pos}")
        _, made_by, _, flags, method, _, _, _, csize, usize, n, m, k, _, _, attrs, offset = fields
        raw = buf[at + _CEN.size : at + _CEN.size + n]
        extra = buf[at + _CEN.size + n : at + _CEN.size + n + m]
        pos += _CEN.size + n + m + k
        text = raw.decode("utf-8" if flags & 0x800 else "cp437", "surrogateescape")
        where = f"{archive}[{text}]"
        wanted = [f for f, v in (("size", usize), ("csize", csize), ("offset", offset)) if v == 0xFFFFFFFF]
        if wanted:
            big = _zip64_values(extra, wanted, where)
            usize, csize, offset = big.get("size", usize), big.get("csize", csize), big.get("offset", offset)
        path = check_member_name(archive, text)
        if text.endswith("/"):
            continue
        if made_by >> 8 == 3 and (attrs >> 16) & _S_IFMT == _S_IFLNK:  # made on Unix: st_mode in the top half
            raise UnsafeArchiveError(f"{where}: a symbolic link; ImageNet archives hold plain files only")
        if flags & 0x1:
            raise SourceError(f"{where}: encrypted; the pipeline reads unencrypted archives only")
        if method not in (STORED, DEFLATED):
            raise SourceError(
                f"{where}: compression method {method}; only stored (0) and deflated (8) are read"
            )
        if method == STORED and (flags & 0x8 or csize != usize):
            raise SourceError(f"{where}: a stored member whose sizes are not in its header; not supported")
        found.append((offset, path, method, flags, csize, usize))
    found.sort()
    for i, (offset, path, method, _, csize, usize) in enumerate(found):
        limit = found[i + 1][0] if i + 1 < len(found) else cd_offset
        if offset + _LOC.size + csize > limit:
            raise UnsafeArchiveError(f"{archive}[{path}]: overlaps the next member; refusing the archive")
        yield ZipMember(path, offset, limit - offset, method, usize)


def member_bytes(span: bytes, where: str) -> bytes:
    """The content of the member whose span (local header onwards, :class:`ZipMember`) is ``span``."""
    if len(span) < _LOC.size or struct.unpack_from("<I", span)[0] != _LOC_SIG:
        raise SourceError(f"{where}: no zip local header where the central directory says (archive changed?)")
    _, _, flags, method, _, _, crc, csize, usize, n, m = _LOC.unpack_from(span)
    start = _LOC.size + n + m
    if csize == 0xFFFFFFFF or usize == 0xFFFFFFFF:
        big = _zip64_values(span[_LOC.size + n : start], ["size", "csize"], where)
        csize, usize = big["csize"], big["size"]
    if flags & 0x8 and method == DEFLATED:
        csize = len(span) - start  # sizes in the descriptor after the data: the stream ends itself
    data = span[start : start + csize]
    if method == DEFLATED:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(data)
        except zlib.error as exc:
            raise SourceError(f"{where}: damaged deflate data ({exc})") from None
        if not inflater.eof:
            raise SourceError(f"{where}: truncated deflate data")
    elif method != STORED:
        raise SourceError(f"{where}: compression method {method}; only stored (0) and deflated (8) are read")
    if len(data) < (csize if method == STORED else 0) or (not flags & 0x8 and len(data) != usize):
        raise SourceError(f"{where}: truncated member ({len(data)} bytes, its header says {usize})")
    if not flags & 0x8 and zlib.crc32(data) != crc:
        raise SourceError(f"{where}: CRC-32 mismatch: the member is damaged")
    return data
