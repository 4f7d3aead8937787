"""Index tar archives in place: the byte offset and size of every member's data, nested tars included.

ImageNet's train tar holds one tar per class; indexing both levels lets a converter read any image
with one positioned read of the original file, so the 150 GB set never needs extracting. Every
member is checked before it is accepted: anything that is not a plain relative file inside the
archive (absolute paths, ``..``, links, devices) is refused with an error naming the archive and member.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import BinaryIO, NamedTuple

from airflow_resnet_prep.errors import SourceError, UnsafeArchiveError


class TarMember(NamedTuple):
    path: str  # member path as written in the archive (normalised, "/"-separated)
    offset: int  # absolute byte offset of the data in the outermost file
    size: int


class _Window(io.RawIOBase):
    """A read-only view of ``size`` bytes at ``start`` of a file: lets tarfile parse a nested tar in place."""

    def __init__(self, fh: BinaryIO, start: int, size: int) -> None:
        self._fh, self._start, self._size, self._pos = fh, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buf) -> int:  # type: ignore[override]
        n = min(len(buf), self._size - self._pos)
        if n <= 0:
            return 0
        self._fh.seek(self._start + self._pos)
        data = self._fh.read(n)
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)


def check_member_name(archive: str, name: str) -> str:
    """Return the normalised member path, or raise if it could land outside the extraction target."""
    if not name or "\x00" in name:
        raise UnsafeArchiveError(f"{archive}: member with an empty or invalid name {name!r}")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refusing the archive")
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} points outside the archive ('..'); refusing it")
    return "/".join(parts)


def _check_member_type(archive: str, info: tarfile.TarInfo) -> None:
    if info.issym() or info.islnk():
        raise UnsafeArchiveError(
            f"{archive}: member {info.name!r} is a {'symbolic' if info.issym() else 'hard'} link "
            f"(to {info.linkname!r}); ImageNet archives hold plain files only, refusing it"
        )
    if info.ischr() or info.isblk() or info.isfifo() or info.isdev():
        raise UnsafeArchiveError(f"{archive}: member {info.name!r} is a device or FIFO; refusing it")


def iter_tar(fh: BinaryIO, archive: str, start: int = 0, size: int | None = None) -> Iterator[TarMember]:
    """Yield the regular files of the tar stored at ``start`` (``size`` bytes) of ``fh``.

    Offsets are absolute in ``fh``. Directories are skipped; unsafe members raise. A member whose data
    would run past the end of its container means the archive is truncated.
    """
    total = size if size is not None else os.fstat(fh.fileno()).st_size - start
    view: BinaryIO = _Window(fh, start, total)  # type: ignore[assignment]
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
