"""Index tar archives in place: the byte offset and size of every member's data, nested tars included.

ImageNet's train tar holds one tar per class; indexing both levels lets a converter read any image
with one positioned read of the original file, so the 150 GB set never needs extracting. Every
member is checked before it is accepted: anything that is not a plain relative file inside the
archive (absolute paths, ``..``, links, devices) is refused with an error naming the archive and member.

Reading the headers of a tar in a bucket (a reader whose every read is one request:
:attr:`~airflow_resnet_prep.storage.rangefile.RangeFile.costly_reads`) adapts to the members' sizes, see
:class:`_ReadAhead`: small members are indexed from blocks of the tar holding many headers each, large
ones by one 512-byte read per header. A local file keeps one seek and 512-byte read per header.
"""

from __future__ import annotations

import functools
import os
import tarfile
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple
from zlib import adler32

from airflow_resnet_prep.errors import SourceError, UnsafeArchiveError
from airflow_resnet_prep.storage.rangefile import window


class TarMember(NamedTuple):
    path: str  # member path as written in the archive (normalised, "/"-separated)
    offset: int  # absolute byte offset of the data in the outermost file
    size: int


def check_member_name(archive: str, name: str) -> str:
    """Return the normalised member path, or raise if it could land outside the extraction target."""
    if "/" not in name and name not in ("", ".", "..") and "\x00" not in name and name[1:2] != ":":
        return name  # a plain file name (the usual case): as the checks below would return it
    if not name or "\x00" in name:
        raise UnsafeArchiveError(
            f"{archive}: a member has an empty name or one holding a NUL byte; refusing it"
        )
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing the archive")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} points outside the archive ('..'); refusing it")
    return "/".join(parts)


def _check_member_type(archive: str, info: tarfile.TarInfo) -> None:
    if info.issym() or info.islnk():
        raise UnsafeArchiveError(
            f"{archive}: member {info.name!r} is a {'symbolic' if info.issym() else 'hard'} link; "
            "ImageNet archives hold plain files only, refusing it"
        )
    if info.ischr() or info.isblk() or info.isfifo() or info.isdev():
        raise UnsafeArchiveError(f"{archive}: member {info.name!r} is a device or FIFO; refusing it")


def iter_tar(fh: BinaryIO, archive: str, start: int = 0, size: int | None = None) -> Iterator[TarMember]:
    """Yield the regular files of the tar stored at ``start`` (``size`` bytes) of ``fh``.

    Offsets are absolute in ``fh``. Directories are skipped; unsafe members raise. A member whose data
    would run past the end of its container means the archive is truncated.
    """
    total = size if size is not None else os.fstat(fh.fileno()).st_size - start
    members = _fast_index(fh, archive, start, total)
    if members is not None:
        yield from members
        return
    yield from _tarfile_index(fh, archive, start, total)


# Plain ustar/GNU headers (what ImageNet's tars hold) are read directly: about 5x faster than building
# tarfile.TarInfo objects, which matters for 1.3 M members. Anything else (long names, pax headers,
# sparse files) goes to the standard library's reader.
_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_FILE_TYPES = (b"0", b"\0", b"7")
_PLAIN_TYPES = {*_FILE_TYPES, b"5", b"1", b"2", b"3", b"4", b"6"}


def _octal(field: bytes) -> int | None:
    if field[:1] == b"\xff":  # GNU base-256 for a negative number: never a valid field here (tarfile says so)
        return None
    if field[:1] and field[0] & 0x80:  # GNU base-256 for large numbers
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        return None


def _fast_index(fh: BinaryIO, archive: str, start: int, total: int) -> list[TarMember] | None:
    """The archive's regular files from its raw headers, or None when a header is anything but plain
    and valid (tarfile then reads the archive, and reports damage).

    This loop runs once per member (1.3 M for ImageNet): it keeps to operations done in C."""
    members: list[TarMember] = []
    ahead = _ReadAhead(fh, start, total, members) if getattr(fh, "costly_reads", False) else None
    # A RangeFile's positioned read (a local file's pread through its store) spares a seek per header.
    read_at = getattr(fh, "read_at", None) if ahead is None else None
    pos = 0
    while pos + _BLOCK <= total:
        if ahead is not None:
            block = ahead.header(pos)
        elif read_at is not None:  # a local file: one 512-byte read (the page cache does the rest)
            block = read_at(start + pos, _BLOCK)
        else:
            fh.seek(start + pos)
            block = fh.read(_BLOCK)
        if block == _ZERO_BLOCK:
            return members
        if len(block) < _BLOCK:
            return None
        try:  # the usual fields: octal digits ending with a NUL (or spaces), see _octal
            size = int(block[124:136].partition(b"\0")[0], 8)
            stored = int(block[148:156].partition(b"\0")[0], 8)
        except ValueError:
            size, stored = _octal(block[124:136]), _octal(block[148:156])  # type: ignore[assignment]
        # The checksum sums the header's bytes, its own field read as spaces. Adler-32's low 16 bits hold
        # 1 + the byte sum modulo 65,521: exact over 256 bytes (at most 65,280), and computed in C.
        byte_sum = (adler32(block[:256]) & 0xFFFF) + (adler32(block[256:]) & 0xFFFF) - 2
        if stored != byte_sum - sum(block[148:156]) + 8 * 32 or size is None or size < 0:
            return None  # a negative size ("-5" reads as octal too) is tarfile's to report
        kind = block[156:157]
        if kind not in _PLAIN_TYPES:
            return None
        name = block[0:100].partition(b"\0")[0]
        if block[257:263] == b"ustar\0" and block[345] != 0:  # POSIX ustar: name = prefix/name
            name = block[345:500].partition(b"\0")[0] + b"/" + name
        text = name.decode("utf-8", "surrogateescape")
        if kind == b"\0" and text.endswith("/"):
            kind = b"5"
        path = check_member_name(archive, text)
        if kind in (b"1", b"2"):
            # The link's target is not shown: it may name anything on the machine that made the tar.
            raise UnsafeArchiveError(
                f"{archive}: member {text!r} is a {'symbolic' if kind == b'2' else 'hard'} link; ImageNet "
                "archives hold plain files only, refusing it"
            )
        if kind in (b"3", b"4", b"6"):
            raise UnsafeArchiveError(f"{archive}: member {text!r} is a device or FIFO; refusing it")
        data = pos + _BLOCK
        if kind in _FILE_TYPES:
            if data + size > total:
                raise SourceError(
                    f"{archive}: truncated: member {text!r} needs {size} bytes at offset "
                    f"{start + data}, the archive ends first"
                )
            members.append(_new_member((path, start + data, size)))
        pos = data + (size if kind in _FILE_TYPES else 0)
        pos += -pos % _BLOCK
    return None  # no end-of-archive marker: let tarfile find out what is wrong


# A TarMember made in C (the class's own __new__ is a Python function: a call per member).
_new_member = functools.partial(tuple.__new__, TarMember)


# Read-ahead for a tar in a bucket. A request costs milliseconds of latency and CPU (client and server)
# whatever its size, about as much as transferring 1 MiB (see storage.base.MAX_GAP): reading a member's
# data to reach the next header pays when the member is smaller than that, and not when it is larger.
_SMALL_MEMBER = 1 << 20  # members up to this size (header to header) are read through, not skipped
_FIRST_READ = 64 << 10  # the first read of a tar: its first header, and the next ones if members are small
_MIN_AHEAD = 64 << 10  # the first block after a large member (at least _HEADERS_AHEAD members' worth)...
_MAX_AHEAD = 4 << 20  # ...grows while members stay small, up to this (times INDEX_CONCURRENCY in memory)
_GROWTH = 4  # factor from one block to the next: 64 KiB, 256 KiB, 1 MiB, 4 MiB
_HEADERS_AHEAD = 4  # a block is at least this many times the last member's size


class _ReadAhead:
    """The headers of the tar at ``start`` (``total`` bytes) of ``fh``, read with few requests.

    Each header tells where the next one is. When the next header is not in the block already read,
    the distance from the previous header (the member just passed, header and padding included) picks
    the next read:

    - at most ``_SMALL_MEMBER``: a block of the tar starting at the header, at first ``_MIN_AHEAD`` or
      ``_HEADERS_AHEAD`` times that distance if larger, then ``_GROWTH`` times larger at each such
      read up to ``_MAX_AHEAD``; every header inside it is parsed from memory;
    - larger, or a nested tar (whose headers its own indexing reads: reading its data here would
      fetch it twice): the member's data is skipped (a seek) and only the 512-byte
      header is read, and the next block starts from ``_MIN_AHEAD`` again.

    Bounds, per tar: a tar of small members costs about ``tar size / _MAX_AHEAD`` requests (plus the
    few of the ramp, at most 5) and reads each byte at most once (blocks start at or after the end
    of the previous one, except for a header straddling a block's end, re-read: 511 bytes at most); a
    tar of large members costs one request and 512 bytes per member, plus the first read (``_FIRST_READ``).
    Never more than the tar's size plus 512 bytes per request is read. Indexing a tar of ImageNet's
    ~110 KB images thus reads the whole tar (once), in about 1/40 of the requests of one per header:
    the deliberate trade, since a request costs about what 1 MiB of transfer does.
    """

    def __init__(self, fh: BinaryIO, start: int, total: int, members: list[TarMember]) -> None:
        self._fh, self._start, self._total = fh, start, total
        self._members = members  # what the caller has found so far (read on a miss only)
        self._buf = b""
        self._buf_pos = 0  # where the buffer starts, relative to start
        self._last: int | None = None  # the previous header's position
        self._ahead = _MIN_AHEAD

    def header(self, pos: int) -> bytes:
        """The 512 bytes at ``pos`` (the next header: positions only go forward)."""
        last, self._last = self._last, pos
        at = pos - self._buf_pos
        if at >= 0 and at + _BLOCK <= len(self._buf):
            return self._buf[at : at + _BLOCK]
        if last is None:  # the first read: a block, the next one grows from it
            want, self._ahead = _FIRST_READ, min(_GROWTH * _FIRST_READ, _MAX_AHEAD)
        elif pos - last <= _SMALL_MEMBER and not self._after_tar(last):
            want = min(max(self._ahead, _HEADERS_AHEAD * (pos - last)), _MAX_AHEAD)
            self._ahead = min(_GROWTH * want, _MAX_AHEAD)
        else:
            want, self._ahead = _BLOCK, _MIN_AHEAD
        want = min(max(want, _BLOCK), self._total - pos)
        self._fh.seek(self._start + pos)
        self._buf, self._buf_pos = self._fh.read(want), pos
        return self._buf[:_BLOCK]

    def _after_tar(self, last: int) -> bool:
        """Whether the member whose header is at ``last`` is a nested tar."""
        found = self._members[-1] if self._members else None
        return (
            found is not None and found.offset == self._start + last + _BLOCK and found.path.endswith(".tar")
        )


def _tarfile_index(fh: BinaryIO, archive: str, start: int, total: int) -> Iterator[TarMember]:
    view: BinaryIO = window(fh, start, total)  # type: ignore[assignment]
    try:
        tar = tarfile.open(fileobj=view, mode="r:")  # noqa: SIM115 (closed by the with below)
    except tarfile.TarError as exc:
        raise SourceError(f"{archive}: not a readable tar archive ({exc})") from exc
    with tar:
        try:
            for info in tar:
                path = check_member_name(archive, info.name)
                _check_member_type(archive, info)
                if info.isdir():
                    continue
                if not info.isfile():
                    raise UnsafeArchiveError(
                        f"{archive}: member {info.name!r} has unsupported type {info.type!r}"
                    )
                if info.size < 0:
                    raise SourceError(
                        f"{archive}: corrupt tar archive: member {info.name!r} has a negative size "
                        f"({info.size}) in its header at offset {start + info.offset}"
                    )
                if info.offset_data + info.size > total:
                    raise SourceError(
                        f"{archive}: truncated: member {info.name!r} needs {info.size} bytes at offset "
                        f"{start + info.offset_data}, the archive ends first"
                    )
                yield TarMember(path, start + info.offset_data, info.size)
        except tarfile.TarError as exc:
            raise SourceError(f"{archive}: corrupt or truncated tar archive ({exc})") from exc
        # tarfile ends quietly on a missing or garbled header after the first one; a whole archive
        # ends with a zero block, so anything else where the next header should be means damage.
        view.seek(tar.offset)
        if view.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
            raise SourceError(
                f"{archive}: truncated or corrupt tar archive: no valid header or end-of-archive "
                f"marker at offset {start + tar.offset}"
            )
