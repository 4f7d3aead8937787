"""Crash-safe file writing: a finished name only ever points at a complete, synced file."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from airflow_resnet_prep.errors import DiskFullError, OutputConflictError

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Persist a rename: sync the directory that holds the entry."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(path: str | os.PathLike[str]) -> Path:
    """The in-progress name of ``path``: same folder (so the rename is atomic), never a final name."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}{TMP_SUFFIX}")


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` reports a full disk or an exhausted quota.

    An ``OSError`` says so by its errno. TensorFlow's file writers (``tf.io.TFRecordWriter``) raise
    ``ResourceExhaustedError``, not an ``OSError``, carrying only the C library's text.
    """
    if isinstance(exc, OSError):
        return exc.errno in _DISK_FULL_ERRNOS
    return type(exc).__name__ == "ResourceExhaustedError" and any(
        os.strerror(code) in str(exc) for code in _DISK_FULL_ERRNOS
    )


@contextlib.contextmanager
def disk_full_as_error(where: str | os.PathLike[str]) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT (from Python or TensorFlow) into a :class:`DiskFullError` naming the place."""
    try:
        yield
    except Exception as exc:
        if is_disk_full(exc):
            raise DiskFullError(
                f"{where}: the disk is full (no space left on the device holding it); free space and rerun "
                "(finished work is kept)"
            ) from exc
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], sync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success sync it and rename it to ``path``.

    On any error the temporary file is removed, so a half-written file never carries the final name.
    ``sync=False`` skips the fsyncs, for scratch files whose consumer checks them and syncs its own output.
    """
    final = Path(path)
    tmp = tmp_name(final)
    try:
        with disk_full_as_error(final):
            yield tmp
            if sync:
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
            os.replace(tmp, final)
            if sync:
                fsync_dir(final.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


# How far back each writeback call reaches: pages written back by then are dropped from the cache.
WRITEBACK_WINDOW = 64 << 20


class EarlyWriteback:
    """Starts the writeback of a file being written, so its final fsync has little left to wait for.

    ``POSIX_FADV_DONTNEED`` makes Linux begin writing the file's dirty pages without waiting for them
    (and drop clean ones from the cache, which an output does not need); the disk then works while
    the CPU produces the next records instead of all at once at the end. Each call covers what was
    written since the last one and :data:`WRITEBACK_WINDOW` before it (whose pages were still being
    written back then), not the whole file: the call's cost grows with the range it covers.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = path
        self.fd: int | None = None
        self._started = 0  # bytes whose writeback has been started

    def start(self, written: int) -> None:
        """Start the writeback of the file's first ``written`` bytes (all of them flushed)."""
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDONLY)
        low = max(0, self._started - WRITEBACK_WINDOW)
        os.posix_fadvise(self.fd, low, written - low, os.POSIX_FADV_DONTNEED)
        self._started = written

    def __enter__(self) -> EarlyWriteback:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)


@contextlib.contextmanager
def durable_writer(
    path: str | os.PathLike[str], buffering: int = 1 << 20, writeback_bytes: int = 16 << 20
) -> Iterator[BinaryIO]:
    """A file for a large output: written under a temporary name, renamed whole and synced on success
    (see :func:`atomic_path`), a full disk reported as :class:`DiskFullError` naming ``path``, and its
    writeback started every ``writeback_bytes`` (:class:`EarlyWriteback`), so the final fsync is short
    and the output does not fill the page cache. (Written around the page cache instead, with
    :mod:`.directio`'s buffers and a writer thread, shards took 20 % more wall time for the same CPU:
    docs/performance.md.)"""
    with atomic_path(path) as tmp, written_back(tmp, buffering, writeback_bytes) as fh:
        yield fh


@contextlib.contextmanager
def written_back(
    path: str | os.PathLike[str], buffering: int = 1 << 20, writeback_bytes: int = 16 << 20
) -> Iterator[BinaryIO]:
    """``path`` opened for writing, its writeback started every ``writeback_bytes``
    (:class:`EarlyWriteback`): a large file that does not pile up in the page cache."""
    with open(path, "wb", buffering=buffering) as fh, EarlyWriteback(path) as wb:
        yield _WritebackFile(fh, wb, writeback_bytes)  # type: ignore[misc]


class _WritebackFile:
    def __init__(self, fh: BinaryIO, writeback: EarlyWriteback, every: int) -> None:
        self._fh, self._writeback, self._every = fh, writeback, every
        self._written = self._pending = 0

    def write(self, data: Any) -> int:
        n = self._fh.write(data)
        self._pending += n
        if self._pending >= self._every:
            self._fh.flush()
            self._written += self._pending
            self._writeback.start(self._written)
            self._pending = 0
        return n

    def writelines(self, buffers: Any) -> None:
        for b in buffers:
            self.write(b)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def copy_range(src_fd: int, dst_fd: int, size: int, offset: int = 0) -> None:
    """Append ``size`` bytes from ``offset`` of ``src_fd`` to ``dst_fd`` (at its position), in the kernel
    with ``os.copy_file_range`` where the OS allows (shared extents on file systems with reflinks),
    else with reads and writes. Raises OSError if the source ends early."""
    done = 0
    with contextlib.suppress(OSError):  # e.g. across file systems on old kernels: plain copy below
        while done < size:
            n = os.copy_file_range(src_fd, dst_fd, size - done, offset + done)
            if n == 0:
                break
            done += n
    while done < size:
        chunk = os.pread(src_fd, min(size - done, 8 << 20), offset + done)
        if not chunk:
            raise OSError(f"source ended {size - done} bytes early")
        view = memoryview(chunk)
        while view:  # write() may take less than it is given (a signal, a nearly full disk)
            view = view[os.write(dst_fd, view) :]
        done += len(chunk)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def remove_stale_tmp(folder: str | os.PathLike[str]) -> int:
    """Delete in-progress files a crashed run left behind in ``folder``; return how many."""
    removed = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for entry in folder.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], wait_s: float = 0.0) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block.

    Waits up to ``wait_s`` seconds for another holder, then fails with a message naming the lock, so
    two runs on one ``data_dir`` never write the same files at once. The lock dies with its process,
    so a killed run never leaves a stale lock behind.
    """
    lock_path = Path(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    raise OutputConflictError(
                        f"{lock_path}: another run is writing this data_dir ({holder}); "
                        "wait for it to finish or use a different data_dir"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)


def read_json(path: str | os.PathLike[str]) -> Any | None:
    """The JSON document at ``path``, or None when it does not exist or cannot be read whole.

    Every JSON file of this package is a record that can be rebuilt (a plan, a done record, a sidecar,
    a cache), so a damaged one is logged and treated as missing rather than failing the run.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bad UTF-8
        log.warning("%s: unreadable (%s); ignoring it", path, exc)
        return None
