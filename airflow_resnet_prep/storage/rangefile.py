"""A seekable read-only file whose every read is one exact ranged read: no read-ahead, no buffer.

Three things need one: ``tarfile`` parsing a nested tar in place (a window of the outer archive),
indexing a tar in a bucket by its headers, and a store's ``open_read``. fsspec's default file would
fetch up to 50 MiB for a 512-byte header read; this one asks for exactly what is read, and leaves the
choice of how much to read to the caller: :func:`airflow_resnet_prep.sources.tarindex.iter_tar` sees
:attr:`RangeFile.costly_reads` and reads many headers per request when they lie close together.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any


class RangeFile(io.RawIOBase):
    """``size`` bytes read through ``read_at(offset, n)``, which returns up to ``n`` bytes at ``offset``.

    ``costly_reads`` (default True: a RangeFile is normally a view of an object in a bucket) tells
    readers that every ``read`` is one request costing milliseconds whatever its size, so that they
    should read a few large pieces rather than many small ones; False for a window of a local file.
    """

    def __init__(self, read_at: Callable[[int, int], bytes], size: int, costly_reads: bool = True) -> None:
        self._size, self._pos = size, 0
        #: the positioned read itself, for a caller that knows its offsets (no seek, no position kept)
        self.read_at = read_at
        self.costly_reads = costly_reads

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
        data = self.read_at(self._pos, end - self._pos)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def window(fh: Any, start: int, size: int) -> RangeFile:
    """The ``size`` bytes at ``start`` of the seekable file ``fh``, as a file of their own (its reads as
    costly as ``fh``'s: see :attr:`RangeFile.costly_reads`)."""

    def read_at(offset: int, n: int) -> bytes:
        fh.seek(start + offset)
        return fh.read(n)

    return RangeFile(read_at, size, costly_reads=bool(getattr(fh, "costly_reads", False)))
