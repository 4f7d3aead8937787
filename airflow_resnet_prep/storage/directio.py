"""Writing a large output around the page cache (``O_DIRECT``), where the file system allows it.

The ``nvidia`` one-machine path writes each split's ``.rec`` from several processes, run by run. On the
benchmark machine a buffered write of it cost more CPU than anything the converter does per byte but
framing: the copy into the page cache, then the writeback and the dropping of its pages (started in
the writing process so that the output does not fill the cache). A direct write hands the disk the
process's own page-aligned buffer: about a tenth of that system time, for one copy into the buffer in
user space (docs/performance.md). The output is written once and read by other programs, so the page
cache gains nothing from holding it.

Direct writes must start, end and sit in memory on 4 KiB boundaries. A run's whole pages are written
directly; the bytes of a page that two runs share (a run starts where another ended; the file's last
partial page) are *edges*, written buffered once every direct write of the file is done, so that a
cached page never meets a direct write of the same page. A file system that refuses ``O_DIRECT`` (on
open, or on the first write: some FUSE and network file systems) gets buffered writes throughout.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

ALIGN = 4096
Edge = tuple[int, bytes]  # (file offset, bytes) written buffered at the end


class Staged(NamedTuple):
    """A run copied into the aligned buffer (:meth:`DirectFile.stage`), at ``offset % ALIGN`` in it."""

    offset: int  # where the run starts in the file
    size: int


def _whole_pages(offset: int, size: int) -> tuple[int, int]:
    """The file range ``[first, last)`` of the whole pages of ``size`` bytes at ``offset``."""
    return -(-offset // ALIGN) * ALIGN, (offset + size) // ALIGN * ALIGN


class DirectFile:
    """A new file (created or truncated) written at given offsets, directly where possible.

    ``fd`` is an ordinary descriptor (edges, fsync, and everything when direct writes are refused).
    Processes forked after it was made may write runs of their own; each gets its own buffer.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._direct: int | None = None
        with contextlib.suppress(OSError, AttributeError):  # AttributeError: no O_DIRECT on this OS
            self._direct = os.open(path, os.O_WRONLY | os.O_DIRECT)
        self._buffer: mmap.mmap | None = None  # made by the process that writes (after a fork)
        self.direct_bytes = 0  # written around the page cache by this process

    def buffer(self, size: int) -> mmap.mmap:
        """This process's page-aligned buffer of at least ``size`` bytes (its content is not kept)."""
        if self._buffer is None or len(self._buffer) < size:
            if self._buffer is not None:
                with contextlib.suppress(BufferError):  # see close()
                    self._buffer.close()
            self._buffer = mmap.mmap(-1, -(-size // ALIGN) * ALIGN)
        return self._buffer

    def write_direct(self, view: memoryview, offset: int) -> bool:
        """Write ``view`` (aligned in memory, length and ``offset`` multiples of :data:`ALIGN`) directly;
        False when the file system refused, in which case nothing was written and the file is
        buffered from now on."""
        assert self._direct is not None
        try:
            pwrite_all(self._direct, [view], offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            os.close(self._direct)
            self._direct = None
            return False
        self.direct_bytes += len(view)
        return True

    def stage(self, buffers: Sequence[Any], offset: int, size: int) -> Staged | None:
        """Copy the ``size`` bytes of ``buffers``, bound for ``offset``, into this process's aligned
        buffer for :meth:`write_staged` (so the caller may let them go); None when the run cannot be
        written directly (direct writes refused, or it holds no whole page): the caller writes it
        buffered. The buffer holds one run: stage the next once this one is written."""
        first, last = _whole_pages(offset, size)
        if self._direct is None or last <= first:
            return None
        skew = offset % ALIGN  # memory and file share their alignment
        buf = self.buffer(skew + size)
        at = skew
        for b in buffers:
            buf[at : at + len(b)] = b
            at += len(b)
        return Staged(offset, size)

    def write_staged(self, run: Staged) -> list[Edge]:
        """Write the staged ``run``: its whole pages directly, its edges returned for the end; the whole
        run buffered (no edges) when the file system refuses the first direct write."""
        offset, size = run
        (first, last), skew = _whole_pages(offset, size), offset % ALIGN
        assert self._buffer is not None
        # Views are left to the garbage collector: one released while an error's traceback still
        # holds a slice of it would replace that error (a full disk) with a BufferError.
        view = memoryview(self._buffer)
        if not self.write_direct(view[first - offset + skew : last - offset + skew], first):
            pwrite_all(self.fd, [view[skew : skew + size]], offset)
            return []
        edges = [(offset, bytes(view[skew : first - offset + skew]))] if first > offset else []
        if last < offset + size:
            edges.append((last, bytes(view[last - offset + skew : skew + size])))
        return edges

    def write_edges(self, edges: Sequence[Edge]) -> None:
        for offset, data in edges:
            pwrite_all(self.fd, [memoryview(data)], offset)

    def close(self) -> None:
        if self._direct is not None:
            os.close(self._direct)
            self._direct = None
        if self._buffer is not None:
            # A view still held (by an error's traceback) keeps it open until the view is collected.
            with contextlib.suppress(BufferError):
                self._buffer.close()
            self._buffer = None
        os.close(self.fd)


def pwrite_all(fd: int, pending: list[memoryview], offset: int) -> None:
    """Write ``pending`` at ``offset``: os.pwritev may write less than asked and takes at most IOV_MAX."""
    while pending:
        batch = pending[:512]
        written = os.pwritev(fd, batch, offset)
        offset += written
        while written:
            if written >= len(pending[0]):
                written -= len(pending.pop(0))
            else:
                pending[0] = pending[0][written:]
                written = 0
