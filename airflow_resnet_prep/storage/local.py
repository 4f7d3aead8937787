"""The local-disk store: positioned reads on cached file descriptors, atomic renames, ``flock`` leases.

The package's existing crash-safe helpers (:mod:`airflow_resnet_prep.fsutil`) do the writing, so a
local run behaves exactly as before the seam; :meth:`LocalStore.local_path` hands the fast paths
(``os.pread``, ``copy_file_range``, in-place writes) the real path.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from airflow_resnet_prep.fsutil import (
    TMP_SUFFIX,
    atomic_path,
    atomic_write_bytes,
    copy_range,
    disk_full_as_error,
    durable_writer,
    fsync_dir,
    remove_stale_tmp,
    tmp_name,
    written_back,
)
from airflow_resnet_prep.storage.base import (
    Assembly,
    Lease,
    LeaseHeldError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectVersion,
    Part,
    PieceSink,
    StorageError,
    Store,
    assembly_token,
    check_key,
    join_key,
    key_tag,
)


class _CountingReader:
    """A local file whose reads are counted in the store's stats (so tests compare local and remote)."""

    def __init__(self, fh: BinaryIO, store: LocalStore) -> None:
        self._fh, self._store = fh, store

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self._store.stats.add("read", read=len(data))
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


class LocalStore(Store):
    """A folder (or one file) on a local or shared POSIX file system."""

    requests_are_costly = False

    def __init__(self, root: str | os.PathLike[str]) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_absolute():
            raise StorageError(
                f"{root}: a local path must be absolute (a relative one means another folder on every worker)"
            )
        self.url = str(self.root)
        self._fds: dict[str, int] = {}
        self._pid = os.getpid()

    def __reduce__(self) -> tuple[Any, ...]:
        return (LocalStore, (str(self.root),))

    def child(self, key: str) -> LocalStore:
        return LocalStore(self._path(key))

    def _path(self, key: str) -> Path:
        key = check_key(key)
        return self.root / key if key else self.root

    def local_path(self, key: str = "") -> Path:
        return self._path(key)

    # -- reads ---------------------------------------------------------------------------------------------
    def _fd(self, key: str) -> int:
        if self._pid != os.getpid():  # inherited descriptors work, but their count is the parent's
            self._fds, self._pid = {}, os.getpid()
        fd = self._fds.get(key)
        if fd is None:
            path = self._path(key)
            try:
                fd = self._fds[key] = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                raise ObjectNotFoundError(f"{path}: no such file") from None
            except OSError as exc:
                raise StorageError(f"{path}: cannot open: {exc.strerror or exc}") from exc
        return fd

    def size(self, key: str = "") -> int:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{path}: no such file") from None
        if stat.S_ISDIR(st.st_mode):  # a folder, like a prefix in a bucket, is no object
            raise ObjectNotFoundError(f"{path}: a folder, not a file")
        return st.st_size

    def version(self, key: str = "") -> ObjectVersion:
        # The modification time stands for an object's version: a file rewritten in place changes it.
        path = self._path(key)
        size = self.size(key)
        return ObjectVersion(size, None, str(path.stat().st_mtime_ns))

    def exists(self, key: str = "") -> bool:
        return self._path(key).exists()

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._path(prefix)
        out = []
        if base.is_file():
            return [ObjectInfo(check_key(prefix), base.stat().st_size)]
        seen: set[tuple[int, int]] = set()
        # Linked folders are followed (a data set assembled from links is common), each real one once.
        for folder, dirs, files in os.walk(base, followlinks=True):
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                dirs[:] = []
                continue
            seen.add((st.st_dev, st.st_ino))
            dirs.sort()
            for name in files:
                path = Path(folder, name)
                try:
                    st = path.stat()
                except FileNotFoundError:  # a dangling link holds nothing
                    continue
                if stat.S_ISREG(st.st_mode):
                    out.append(ObjectInfo(path.relative_to(self.root).as_posix(), st.st_size))
        return sorted(out)

    def read_range(self, key: str, offset: int, size: int) -> bytes:
        if size == 0:
            return b""
        data = os.pread(self._fd(key), size, offset)
        self.stats.add("pread", read=len(data))
        if len(data) != size:
            raise StorageError(
                f"{self._path(key)}: wanted {size} bytes at offset {offset}, the file ends after {len(data)} "
                "(it is shorter than expected: truncated or replaced?)"
            )
        return data

    def iter_ranges(self, key: str, ranges: Sequence[tuple[int, int]], **options: Any) -> Iterator[bytes]:
        # A local disk (and its page cache) serves one pread per range best: no gaps read, no threads, so
        # the options of the coalescing reads (max_gap, concurrency...) do not apply.
        for offset, size in ranges:
            yield self.read_range(key, offset, size)

    def iter_objects(self, keys: Iterable[str], concurrency: int = 0) -> Iterator[bytes]:
        for key in keys:
            yield self.read_bytes(key)

    def read_bytes(self, key: str = "") -> bytes:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{path}: no such file") from None
        self.stats.add("read", read=len(data))
        return data

    def open_read(self, key: str = "", block_size: int = 0) -> BinaryIO:
        path = self._path(key)
        try:
            return _CountingReader(open(path, "rb", buffering=block_size or -1), self)  # type: ignore[return-value]
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{path}: no such file") from None

    # -- writes --------------------------------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        self.stats.add("write", written=len(data))

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Large outputs (shards): buffered, written back while they grow, synced, renamed whole.
        with durable_writer(path) as fh:
            yield fh
        self.stats.add("write", written=path.stat().st_size)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_tree(self, key: str) -> None:
        shutil.rmtree(self._path(key), ignore_errors=True)

    def discard_partial(self, key: str) -> int:
        path = self._path(key)
        if path.is_dir():
            return remove_stale_tmp(path)
        return sum(
            1
            for stale in path.parent.glob(f".{glob.escape(path.name)}.*{TMP_SUFFIX}")
            if stale.unlink(missing_ok=True) is None
        )

    def lease(self, key: str, owner: str, ttl_s: float = 600.0) -> Lease:
        return LocalLease(self._path(key), owner)

    # -- assemblies ------------------------------------------------------------------------------------------
    def begin_assembly(self, key: str, scratch: str) -> LocalAssembly:
        asm = LocalAssembly(self, key, scratch, assembly_token(key))
        asm.folder.mkdir(parents=True, exist_ok=True)  # so abort_assemblies sees it before any piece
        return asm

    def resume_assembly(self, key: str, scratch: str, token: str) -> LocalAssembly:
        return LocalAssembly(self, key, scratch, token)

    def abort_assemblies(self, key: str, scratch: str, keep: Sequence[str] = ()) -> int:
        base = self._path(scratch)
        tag = key_tag(key) + "-"
        freed = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in sorted(os.scandir(base), key=lambda e: e.name):
                if entry.name.startswith(tag) and entry.name not in keep and entry.is_dir():
                    LocalAssembly(self, key, scratch, entry.name).abort()
                    freed += 1
        return freed

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}


class LocalAssembly(Assembly):
    """Pieces are files ``{scratch}/{token}/{number:05d}``, written in place (temporary name, then
    rename); :meth:`complete` joins them in the kernel into a temporary file next to ``key``, syncs it
    and renames it to ``key``."""

    @property
    def folder(self) -> Path:
        return self.store._path(join_key(self.scratch, self.token))  # type: ignore[attr-defined]

    @contextlib.contextmanager
    def piece_writer(self, number: int) -> Iterator[PieceSink]:
        self.check_number(number)
        path: Path = self.store._path(self.piece_key(number))  # type: ignore[attr-defined]
        path.parent.mkdir(parents=True, exist_ok=True)
        # No fsync: complete checks every piece's size and syncs the joined file.
        with atomic_path(path, sync=False) as tmp, written_back(tmp) as fh:
            sink = PieceSink(number, fh, self.where)  # type: ignore[arg-type]
            yield sink
        sink._part = Part(number, "", sink.size)
        self.store.stats.add("write", written=sink.size)

    def complete(self, parts: Sequence[Part]) -> None:
        parts = self.check_parts(parts)
        paths = {p.number: self.store._path(self.piece_key(p.number)) for p in parts}  # type: ignore[attr-defined]
        found = {}
        for number, path in paths.items():
            with contextlib.suppress(FileNotFoundError):
                found[number] = path.stat().st_size
        self.check_sizes(parts, found)
        target: Path = self.store._path(self.key)  # type: ignore[attr-defined]
        target.parent.mkdir(parents=True, exist_ok=True)
        total = sum(p.size for p in parts)
        tmp = tmp_name(target)
        try:
            with disk_full_as_error(target):
                with open(tmp, "wb") as out:
                    for p in parts:
                        with open(paths[p.number], "rb") as src:
                            copy_range(src.fileno(), out.fileno(), p.size)
                            # Each piece is read once and the output written back now: neither fills
                            # the page cache.
                            os.posix_fadvise(src.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                        os.posix_fadvise(out.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                    out.flush()
                    os.fsync(out.fileno())
                joined = tmp.stat().st_size
                if joined != total:
                    raise StorageError(f"{self.where}: joined {joined} bytes, the pieces add up to {total}")
                os.replace(tmp, target)
                fsync_dir(target.parent)
        except OSError as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"{self.where}: joining the pieces failed: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self.store.stats.add("write", written=total)
        self.abort()

    def abort(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.folder)


class LocalLease(Lease):
    """An exclusive ``flock`` on a file: it dies with its process, so a killed run leaves no stale lease."""

    poll_s = 0.2

    def __init__(self, path: Path, owner: str) -> None:
        self.path, self.key, self.owner = path, path.name, owner
        self._fd: int | None = None

    def acquire(self) -> LocalLease:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise LeaseHeldError(
                f"{self.path}: another run is writing this data_dir ({holder}); "
                "wait for it to finish or use a different data_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.owner} since {time.strftime('%Y-%m-%dT%H:%M:%S')}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
