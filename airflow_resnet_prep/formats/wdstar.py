"""WebDataset shards: POSIX (ustar) tar members with deterministic headers, and DALI's index of them.

A WebDataset shard is a plain tar whose members are grouped into *samples* by key: the member name up
to the first dot of its base name is the sample's ``__key__``, the rest its extension (``n01440764_10026``
+ ``jpg``). Readers (the ``webdataset`` library, timm, DALI) group consecutive members with the same
key, so a sample's members must follow each other.

The headers are written here, not by :mod:`tarfile`, so that the bytes depend only on the members'
names and contents: ``mtime`` 0, uid/gid 0, empty ``uname``/``gname``, mode ``0644``, type ``0``
(regular file), ``ustar\\0`` + ``00``: the header Python's ``tarfile`` writes in ``USTAR_FORMAT`` for
those fields (tested byte for byte). A member is its 512-byte header, its data and zero padding to a
multiple of 512; an archive ends with two zero blocks (1024 bytes; no padding to tar's 10 KiB record,
which only tapes need). So a member's bytes can be made anywhere, in any process, and a shard written
in pieces (a bucket's multipart upload) is the same as one written at once.

DALI's ``fn.readers.webdataset`` takes an index per shard (``index_paths``), as its ``wds2idx`` tool
writes it (DALI ``tools/wds2idx.py``, index version ``v1.2``): a first line ``v1.2 <samples>``, then one
line per sample listing each member as ``<ext> <data offset> <size> <member name>``, separated by
spaces, in archive order. :func:`dali_index` writes exactly that.

Pure byte functions: no location, no ImageNet.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)
MODE = 0o644
NAME_MAX = 100  # ustar's name field; longer names need the prefix field, which keys never need here
SIZE_MAX = 8**11 - 1  # 11 octal digits
DALI_INDEX_VERSION = "v1.2"
USTAR_MAGIC = b"ustar\x0000"


class TarFormatError(ValueError):
    """A tar header that is not one of ours (or not a tar header at all)."""


def _octal(value: int, width: int) -> bytes:
    """``width - 1`` octal digits and a NUL, as ustar's numeric fields."""
    return b"%0*o\x00" % (width - 1, value)


def header(name: str, size: int) -> bytes:
    """The 512-byte ustar header of a regular file ``name`` of ``size`` bytes (see the module doc)."""
    raw = name.encode("utf-8")
    if not raw or len(raw) > NAME_MAX:
        raise TarFormatError(f"member name {name!r}: must be 1 to {NAME_MAX} bytes for a ustar header")
    if not 0 <= size <= SIZE_MAX:
        raise TarFormatError(f"member {name!r}: {size:,} bytes is more than a ustar header can say")
    fields = [
        raw.ljust(100, b"\0"),  # name
        _octal(MODE, 8),
        _octal(0, 8),  # uid
        _octal(0, 8),  # gid
        _octal(size, 12),
        _octal(0, 12),  # mtime
        b" " * 8,  # checksum, counted as spaces
        b"0",  # typeflag: regular file
        bytes(100),  # linkname
        USTAR_MAGIC,
        bytes(32),  # uname
        bytes(32),  # gname
        bytes(8),  # devmajor: empty for a regular file, as tarfile writes it
        bytes(8),  # devminor
        bytes(155),  # prefix
    ]
    block = b"".join(fields).ljust(BLOCK, b"\0")
    checksum = b"%06o\x00 " % sum(block)
    return block[:148] + checksum + block[156:]


def padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def member_size(size: int) -> int:
    """Bytes a member of ``size`` data bytes takes in the archive (header and padding included)."""
    return BLOCK + size + -size % BLOCK


def member(name: str, data: bytes) -> list[bytes]:
    """The buffers of one member: header, data, padding (write them in order, e.g. ``writelines``)."""
    return [header(name, len(data)), data, padding(len(data))]


def split_name(name: str) -> tuple[str, str]:
    """(key, extension) as WebDataset readers and DALI split a member name: at the first dot of its
    base name."""
    dot = name.find(".", name.rfind("/") + 1)
    return (name, "") if dot < 0 else (name[:dot], name[dot + 1 :])


def key_of(file_name: str) -> str:
    """The sample key of an image's file name: its stem, as it is when it holds no dot and no ``%``
    (every ILSVRC name). Readers split a key from its extension at the first dot, so in any other stem
    (an image named ``a.b.JPEG``) each ``%`` and ``.`` is percent-encoded (``a%2Eb``): the key stays
    one per stem, and the file name is still recorded whole in the sample's ``.json``."""
    stem = posixpath.splitext(file_name)[0]
    return stem.replace("%", "%25").replace(".", "%2E")


@dataclass(frozen=True)
class Component:
    """One member of a sample, as DALI's index lists it."""

    ext: str
    offset: int  # of the member's data in the archive (its header is 512 bytes before)
    size: int
    name: str


def sample_members(
    key: str, parts: Iterable[tuple[str, bytes]], start: int
) -> tuple[list[bytes], list[Component]]:
    """The buffers of a sample ``key`` whose members are ``(ext, data)`` in the order given, written at
    archive offset ``start``; and its components (for the index)."""
    buffers: list[bytes] = []
    components: list[Component] = []
    offset = start
    for ext, data in parts:
        name = f"{key}.{ext}"
        buffers.extend(member(name, data))
        components.append(Component(ext, offset + BLOCK, len(data), name))
        offset += member_size(len(data))
    return buffers, components


def dali_index(samples: Iterable[Iterable[Component]]) -> str:
    """The text DALI's ``wds2idx`` writes for an archive holding ``samples`` (each its components in
    archive order)."""
    lines = [" ".join(f"{c.ext} {c.offset} {c.size} {c.name}" for c in sample) for sample in samples]
    if not lines:
        raise TarFormatError("an index of an empty archive: DALI refuses a sample count of 0")
    return f"{DALI_INDEX_VERSION} {len(lines)}\n" + "".join(line + "\n" for line in lines)


@dataclass(frozen=True)
class Entry:
    """A member found by :func:`iter_entries`."""

    offset: int  # of its header
    name: str
    size: int
    deterministic: bool  # the header is the one :func:`header` writes for this name and size

    @property
    def data_offset(self) -> int:
        return self.offset + BLOCK


def parse_header(block: bytes, where: str, offset: int) -> Entry | None:
    """The member a 512-byte header describes; None for a zero block (the end of the archive)."""
    if len(block) < BLOCK:
        raise TarFormatError(f"{where}: truncated tar header at offset {offset:,} ({len(block)} bytes)")
    if not any(block):
        return None
    try:
        stored = int(block[148:156].split(b"\0")[0].strip() or b"-1", 8)
    except ValueError:
        stored = -1
    if stored != sum(block[:148]) + 8 * 32 + sum(block[156:]):
        raise TarFormatError(f"{where}: no valid tar header at offset {offset:,} (checksum mismatch)")
    name = block[:100].split(b"\0")[0].decode("utf-8", "replace")
    try:
        size = int(block[124:136].split(b"\0")[0].strip() or b"0", 8)
    except ValueError:
        raise TarFormatError(f"{where}: tar header at offset {offset:,} has no octal size") from None
    if block[156:157] not in (b"0", b"\0"):
        raise TarFormatError(
            f"{where}: member {name!r} at offset {offset:,} is not a regular file "
            f"(type {block[156:157].decode('latin-1')!r})"
        )
    deterministic = (
        size <= SIZE_MAX and name and len(name.encode()) <= NAME_MAX and header(name, size) == block
    )
    return Entry(offset, name, size, bool(deterministic))


def iter_entries(fh: BinaryIO, where: str, start: int = 0) -> Iterator[tuple[Entry, bytes]]:
    """Every member of a tar read from ``fh`` (positioned at archive offset ``start``) with its data, up
    to the end-of-archive blocks, which must follow (both). Raises :class:`TarFormatError` naming
    ``where`` and the offset of the first thing wrong."""
    offset = start
    while True:
        block = fh.read(BLOCK)
        entry = parse_header(block, where, offset)
        if entry is None:
            second = fh.read(BLOCK)
            if len(second) < BLOCK or any(second):
                raise TarFormatError(
                    f"{where}: one zero block at offset {offset:,}, the end of an archive needs two"
                )
            return
        data = fh.read(entry.size)
        pad = fh.read(-entry.size % BLOCK)
        if len(data) < entry.size or len(pad) < -entry.size % BLOCK:
            raise TarFormatError(
                f"{where}: member {entry.name!r} at offset {offset:,} is cut short ({entry.size:,} bytes expected)"
            )
        yield entry, data
        offset += member_size(entry.size)
