"""A seekable read-only file whose every read is one exact ranged read: no read-ahead, no buffer.

Three things need one: ``tarfile`` parsing a nested tar in place (a window of the outer archive),
indexing a tar in a bucket by its headers, and a store's ``open_read``. fsspec's default file would
fetch up to 50 MiB for a 512-byte header read; this one asks for exactly what is read.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any


class RangeFile(io.RawIOBase):
    """``size`` bytes read through ``read_at(offset, n)``, which returns up to ``n`` bytes at ``offset``."""

    def __init__(self, read_at: Callable[[int, int], bytes], size: int) -> None:
        self._read_at, self._size, self._pos = read_at, size, 0

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

    def read(self, n: int | None = -1) -> bytes:
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        if end <= self._pos:
            return b""
        data = self._read_at(self._pos, end - self._pos)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def window(fh: Any, start: int, size: int) -> RangeFile:
    """The ``size`` bytes at ``start`` of the seekable file ``fh``, as a file of their own."""

    def read_at(offset: int, n: int) -> bytes:
        fh.seek(start + offset)
        return fh.read(n)

    return RangeFile(read_at, size)
