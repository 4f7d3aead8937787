"""The storage seam: one interface for where source bytes come from and where outputs and state go.

A :class:`Store` is rooted at a location (a local folder or file, or an object-store prefix or object)
and addresses everything below it by a relative *key* (``"catalog/train.tsv"``; ``""`` is the root
itself). It is chosen once from a path or URI by :func:`airflow_resnet_prep.storage.store_for`, so the
catalog and the converters call the same methods for a local disk and a bucket and never branch on
``s3://``. Local fast paths stay reachable through :meth:`Store.local_path`, which is ``None`` on an
object store.

Guarantees every implementation keeps:

- reads are exact: :meth:`Store.read_range` fetches the bytes asked for and no read-ahead;
  :meth:`Store.read_ranges` coalesces ranges lying close together into larger requests and keeps
  several in flight;
- an object (or file) under a final key is always complete: :meth:`Store.write_bytes` and
  :meth:`Store.writer` make the key appear only when the whole content is there, and an exception in
  the writer's block leaves nothing under the key;
- a store is safe to use after ``fork`` and to pickle to a ``spawn`` child: each process gets its own
  client (a cached fsspec file system is not fork-safe);
- one large object can be built from numbered pieces written by any number of processes (or machines
  sharing only the store): :meth:`Store.begin_assembly` returns an :class:`Assembly` (S3: a multipart
  upload; GCS: piece objects joined by ``compose``; local: piece files joined in the kernel), and the
  key appears, whole, only when :meth:`Assembly.complete` succeeds.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import posixpath
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, NamedTuple

from airflow_resnet_prep.errors import OutputConflictError, PrepError

# Coalescing of ranged reads: two ranges whose gap is at most MAX_GAP are fetched by one request (the gap
# is read and thrown away), as long as the request stays below MAX_REQUEST and its waste stays bounded.
# At ~100 MB/s per stream and ~20-50 ms per request on a cloud object store (and ~7 ms of client plus
# server CPU per request against a local SeaweedFS on 2 cores), reading 1 MiB costs about as much time as
# one more request: no gap above that is worth reading. Below it, gaps are bounded relative to the data:
# a request's thrown-away bytes stay at most MAX_WASTE times the bytes it serves (a gap of up to FREE_GAP,
# such as a tar member's header and padding, or a nested tar's end and record padding, always joins).
# So a coalesced read fetches at most (1 + MAX_WASTE) x the bytes asked for, plus FREE_GAP per range:
# without the ratio, a unit of shuffled images fetched 2.6-3.5x its bytes (every gap < 1 MiB read).
MAX_GAP = 1 << 20
MAX_WASTE = 1.0
FREE_GAP = 16 << 10
MAX_REQUEST = 16 << 20
CONCURRENCY = 8  # requests in flight per read_ranges call
WINDOW_BYTES = 64 << 20  # how much read_ranges fetches ahead of what it has yielded


class StorageError(PrepError):
    """A store refused or failed an operation; the message names the URI (never a credential)."""


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """No object or file under a key."""


class LeaseHeldError(OutputConflictError):
    """Another holder has the lease: another run is writing this data_dir."""


class LeaseLostError(OutputConflictError):
    """Our lease was taken over (it expired while we held it) or removed."""


class ObjectInfo(NamedTuple):
    key: str  # relative to the store's root
    size: int
    tag: str = ""  # what changes when the object is rewritten: its ETag (S3) or generation (GCS); "" locally


class ObjectVersion(NamedTuple):
    """What identifies an object's content without reading it. An S3 ETag of a single PUT is the
    content's MD5, of a multipart upload a hash of the parts' MD5s; either changes whenever the object
    is written with other bytes. A GCS generation changes on every write."""

    size: int
    etag: str | None  # S3 ETag / GCS etag, quotes stripped
    version: str | None  # GCS generation (S3: the version id when the bucket keeps versions)


def unquote_etag(etag: Any) -> str | None:
    return str(etag).strip('"') if etag else None


class Part(NamedTuple):
    """One uploaded part of a multipart upload: what ``complete`` needs, JSON-friendly for done records."""

    number: int  # 1..10,000
    etag: str
    size: int


class UploadInfo(NamedTuple):
    key: str  # relative to the store's root
    upload_id: str
    initiated: float  # seconds since the epoch


@dataclass
class RequestStats:
    """Requests this process sent through one store, by operation (``GetObject``, ``pread``, ...)."""

    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    bytes_read: int = 0
    bytes_written: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, op: str, read: int = 0, written: int = 0) -> None:
        with self._lock:
            self.requests[op] += 1
            self.bytes_read += read
            self.bytes_written += written

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "bytes_read": self.bytes_read,
                "bytes_written": self.bytes_written,
            }

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_read = self.bytes_written = 0


def check_key(key: str) -> str:
    """A relative key, normalised; refuses absolute keys and ``..`` (a key never leaves its root)."""
    if key in ("", "."):
        return ""
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"invalid storage key {key!r}: keys are relative, '/'-separated")
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"invalid storage key {key!r}: '..' would leave the store's root")
    return "/".join(parts)


def join_key(*parts: str) -> str:
    return check_key(posixpath.join(*[p for p in parts if p]))


class Request(NamedTuple):
    """One coalesced read: bytes [start, end) serving the ranges at ``members`` (indices into the input)."""

    start: int
    end: int
    members: tuple[int, ...]


def coalesce(
    ranges: Sequence[tuple[int, int]],
    max_gap: int = MAX_GAP,
    max_request: int = MAX_REQUEST,
    max_waste: float | None = MAX_WASTE,
) -> list[Request]:
    """Group ``(offset, size)`` ranges into requests: sorted by offset, neighbours whose gap is at most
    ``max_gap`` share a request while it stays within ``max_request`` bytes (a single range larger than
    that is one request of its own) and while the gaps it reads stay at most ``max_waste`` times the
    bytes of its ranges (gaps up to :data:`FREE_GAP` always join; ``None``: no ratio, only ``max_gap``).
    Overlapping ranges are fine."""
    order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
    out: list[Request] = []
    start = end = -1
    useful = waste = 0  # bytes of the current request that serve a range / that are thrown away
    members: list[int] = []
    for i in order:
        offset, size = ranges[i]
        if offset < 0 or size < 0:
            raise ValueError(f"bad range (offset {offset}, size {size})")
        stop = offset + size
        gap = offset - end
        if members and gap <= max_gap and max(end, stop) - start <= max_request:
            new = max(0, stop - max(offset, end))  # bytes this range adds beyond the request's end
            if gap <= FREE_GAP or max_waste is None or waste + gap <= max_waste * (useful + new):
                waste += max(0, gap)
                useful += new
                end = max(end, stop)
                members.append(i)
                continue
        if members:
            out.append(Request(start, end, tuple(members)))
        start, end, members = offset, stop, [i]
        useful, waste = size, 0
    if members:
        out.append(Request(start, end, tuple(members)))
    return out


class Lease(AbstractContextManager["Lease"]):
    """Exclusive hold on a key: two runs on one data_dir cannot both hold it.

    ``acquire`` raises :class:`LeaseHeldError` naming the holder; ``release`` gives it up. As a context
    manager it acquires, keeps the lease alive while the block runs (object stores: renewed in the
    background before it expires) and releases it at the end.
    """

    key: str
    owner: str
    #: how often a waiting holder tries again (each try of an object lease is a request)
    poll_s: float = 1.0

    @abstractmethod
    def acquire(self) -> Lease: ...

    @abstractmethod
    def release(self) -> None: ...

    def discard(self) -> None:
        """Remove what the released lease left behind (a lock file); an object lease leaves nothing."""

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class MultipartUpload(ABC):
    """An S3 multipart upload, addressable from any process by ``(store, key, upload_id)`` (picklable).

    Parts may be uploaded in any order by different processes; every part but the last must be at
    least 5 MiB, numbers run 1..10,000. ``complete`` takes the parts' ETags; until it succeeds nothing is
    visible under the key, and ``abort`` (or a rerun's :meth:`Store.abort_uploads`) frees the parts.
    """

    MIN_PART = 5 << 20
    MAX_PARTS = 10_000

    store: Store
    key: str
    upload_id: str

    @abstractmethod
    def upload_part(self, number: int, data: bytes | BinaryIO) -> Part:
        """Upload part ``number`` from bytes or, streamed, from a seekable binary file (all of it)."""

    @abstractmethod
    def complete(self, parts: Sequence[Part]) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...


class PieceSink:
    """What :meth:`Assembly.piece_writer` yields: a binary sink for one piece (``write``, ``writelines``,
    ``tell``). Once the ``with`` block has ended without an exception, :attr:`part` describes the piece
    stored (``Part(number, etag, size)``; the etag is ``""`` where the store has none)."""

    def __init__(self, number: int, fh: BinaryIO, where: str) -> None:
        self.number, self._fh, self._where = number, fh, where
        self.size = 0
        self._part: Part | None = None

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        self._fh.write(data)
        self.size += n
        return n

    def writelines(self, lines: Iterable[Any]) -> None:
        for data in lines:
            self.write(data)

    def tell(self) -> int:
        return self.size

    def writable(self) -> bool:
        return True

    @property
    def part(self) -> Part:
        if self._part is None:
            raise StorageError(
                f"{self._where}: piece {self.number} is not stored yet (sink.part is known after the block)"
            )
        return self._part


def assembly_token(key: str) -> str:
    """A fresh token for an assembly of ``key`` on stores that have no upload id: a short hash of the key
    (so :meth:`Store.abort_assemblies` of one key leaves another key's assemblies in a shared scratch
    alone), a dash and a random id."""
    return f"{key_tag(key)}-{uuid.uuid4().hex}"


def key_tag(key: str) -> str:
    return hashlib.sha256(check_key(key).encode()).hexdigest()[:12]


class Assembly(ABC):
    """Builds one object under :attr:`key` from numbered pieces (``1..max_pieces``), written in any order
    by any process. Picklable: it is rebuilt from ``(store, key, scratch, token)``, so pieces may come
    from other processes or machines (:meth:`Store.resume_assembly` rebuilds it from the token alone).
    Nothing appears under ``key`` until :meth:`complete` succeeds.

    Where the pieces live: S3, the parts of a multipart upload (``token`` is its UploadId; a piece is
    spooled to a local temporary file, never held in memory, then uploaded in one request); GCS,
    objects ``{scratch}/{token}/{number:05d}``, joined by a tree of ``compose`` calls; a local disk,
    files ``{scratch}/{token}/{number:05d}``, joined in the kernel (``copy_file_range``).
    """

    store: Store
    key: str  # the final key, relative to the store's root
    scratch: str  # key prefix where pieces may be kept (stores that keep them as objects or files)
    token: str  # identifies this assembly: the S3 UploadId; a random id elsewhere
    min_piece: int = 0  # every piece but the last must be at least this many bytes
    max_pieces: int = 99_999

    def __init__(self, store: Store, key: str, scratch: str, token: str) -> None:
        self.store, self.key, self.scratch, self.token = store, check_key(key), check_key(scratch), token
        if not self.key:
            raise ValueError("an assembly needs a key below the store's root")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.store, self.key, self.scratch, self.token))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.store.uri(self.key)!r}, token={self.token!r})"

    @property
    def where(self) -> str:
        """``key``'s URI and the token, for messages."""
        return f"{self.store.uri(self.key)} (assembly {self.token})"

    @abstractmethod
    def piece_writer(self, number: int) -> AbstractContextManager[PieceSink]:
        """``with asm.piece_writer(n) as sink: sink.write(b)``; after the block ``sink.part`` is the
        piece's :class:`Part`. An exception inside the block stores nothing; writing a number again
        replaces that piece."""

    @abstractmethod
    def complete(self, parts: Sequence[Part]) -> None:
        """Concatenate the pieces, sorted by number, into ``key`` (which appears whole, atomically), then
        free them. Raises :class:`StorageError` naming the key when a piece is missing or has another
        size than its part says, or a piece but the last is below :attr:`min_piece`; nothing is then
        written under ``key`` and the pieces stay (complete again with the right parts, or abort)."""

    @abstractmethod
    def abort(self) -> None:
        """Free every piece (no error when they are gone already)."""

    # -- helpers for the implementations ----------------------------------------------------------------------
    def check_number(self, number: int) -> None:
        if not 1 <= number <= self.max_pieces:
            raise ValueError(f"{self.where}: piece number {number} outside 1..{self.max_pieces}")

    def piece_key(self, number: int) -> str:
        """Where piece ``number`` is kept, on stores that keep pieces as objects or files."""
        return join_key(self.scratch, self.token, f"{number:05d}")

    def check_parts(self, parts: Sequence[Part]) -> list[Part]:
        """``parts`` as :class:`Part` (they may come back from JSON as lists), sorted by number and checked
        for what needs no request: some parts, no number twice, numbers in range, sizes at least
        :attr:`min_piece` but for the last."""
        out = sorted((Part(*p) for p in parts), key=lambda p: p.number)
        if not out:
            raise StorageError(f"{self.where}: no pieces to complete")
        numbers = [p.number for p in out]
        if len(set(numbers)) != len(numbers):
            raise StorageError(f"{self.where}: a piece number is given twice")
        for p in out:
            self.check_number(p.number)
        small = [p.number for p in out[:-1] if p.size < self.min_piece]
        if small:
            raise StorageError(
                f"{self.where}: pieces {small[:10]}{' ...' if len(small) > 10 else ''} are below "
                f"{_size_text(self.min_piece)}; on this store only the last piece may be smaller"
            )
        return out

    def check_sizes(self, parts: Sequence[Part], found: dict[int, int]) -> None:
        """Refuse when a part's piece is not in ``found`` (number -> stored size) or has another size."""
        for p in parts:
            size = found.get(p.number)
            if size is None:
                raise StorageError(f"{self.where}: piece {p.number} is missing; nothing was written")
            if size != p.size:
                raise StorageError(
                    f"{self.where}: piece {p.number} holds {size} bytes, its part says {p.size}; "
                    "nothing was written"
                )


def _size_text(n: int) -> str:
    return f"{n >> 20} MiB" if n and n % (1 << 20) == 0 else f"{n} bytes"


class Store(ABC):
    """Where bytes are read from and written to. See the module's docstring for the guarantees."""

    #: the root as given, without credentials (safe for logs, XCom and the manifest)
    url: str
    #: the Airflow connection used (None: local, or the client's default credentials)
    conn_id: str | None = None
    #: whether every request costs a round trip (tens of ms), so reads are worth batching and work units
    #: worth making large; a local disk answers in microseconds
    requests_are_costly: bool = True

    def __init__(self) -> None:
        self.stats = RequestStats()

    # -- naming ----------------------------------------------------------------------------------------
    @property
    def address(self) -> str:
        """How to name this store again in another process: the path, or the URI with its ``conn_id@``
        (an id, never a secret)."""
        return self.url

    def uri(self, key: str = "") -> str:
        """The full path or URI of ``key``, for messages (never holds a credential)."""
        key = check_key(key)
        return posixpath.join(self.url, key) if key else self.url

    @abstractmethod
    def child(self, key: str) -> Store:
        """A store rooted at ``key`` below this one (same client and connection)."""

    def local_path(self, key: str = "") -> Any | None:
        """The local ``Path`` of ``key`` when the store is a local disk (for the fast paths: pread,
        copy_file_range, in-place writes), else ``None``."""
        return None

    # -- reads ---------------------------------------------------------------------------------------------
    @abstractmethod
    def size(self, key: str = "") -> int:
        """Size in bytes; :class:`ObjectNotFoundError` if absent."""

    @abstractmethod
    def exists(self, key: str = "") -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object (file) below ``prefix``, recursively, sorted by key."""

    @abstractmethod
    def read_range(self, key: str, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``offset`` in one request; a short object raises StorageError."""

    @abstractmethod
    def read_bytes(self, key: str = "") -> bytes: ...

    def version(self, key: str = "") -> ObjectVersion:
        """One metadata request for ``key``; :class:`ObjectNotFoundError` when absent."""
        return ObjectVersion(self.size(key), None, None)

    def listing_digest(self, prefix: str = "") -> tuple[int, int, str]:
        """``(objects, total bytes, digest)`` of everything below ``prefix``: the digest covers every key,
        size and ETag/generation, so any object added, removed, renamed or rewritten changes it."""
        h = hashlib.sha256()
        files = total = 0
        for info in self.list(check_key(prefix)):
            h.update(f"{info.key}\t{info.size}\t{info.tag}\n".encode())
            files += 1
            total += info.size
        return files, total, h.hexdigest()

    @abstractmethod
    def open_read(self, key: str = "", block_size: int = 0) -> BinaryIO:
        """A seekable binary reader.

        ``block_size=0``: every ``read`` fetches exactly what it asks for, no read-ahead (what
        :func:`airflow_resnet_prep.sources.tarindex.iter_tar` needs to read tar headers only: one
        512-byte request each). ``block_size > 0``: reads go through a buffer of that size, for a
        sequential reader of small pieces (e.g. :func:`airflow_resnet_prep.formats.tfrecord.iter_records`).
        """

    def iter_ranges(
        self,
        key: str,
        ranges: Sequence[tuple[int, int]],
        max_gap: int = MAX_GAP,
        max_request: int = MAX_REQUEST,
        concurrency: int = CONCURRENCY,
        window_bytes: int = WINDOW_BYTES,
        max_waste: float | None = MAX_WASTE,
    ) -> Iterator[bytes]:
        """Yield the bytes of each ``(offset, size)`` range of ``key``, in the order given.

        Ranges are taken in windows of about ``window_bytes``; inside a window they are coalesced
        (:func:`coalesce`: gaps up to ``max_gap``, and at most ``max_waste`` times the bytes served) and
        the requests run ``concurrency`` at a time, while the previous window is being consumed. Memory
        stays around two windows.
        """
        windows: list[list[int]] = []
        current: list[int] = []
        budget = 0
        for i, (_, size) in enumerate(ranges):
            if current and budget + size > window_bytes:
                windows.append(current)
                current, budget = [], 0
            current.append(i)
            budget += size
        if current:
            windows.append(current)
        if not windows:
            return
        with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="store-read") as pool:

            def submit(window: list[int]) -> list[tuple[Request, Future[bytes]]]:
                sub = [ranges[i] for i in window]
                return [
                    (req, pool.submit(self.read_range, key, req.start, req.end - req.start))
                    for req in coalesce(sub, max_gap, max_request, max_waste)
                ]

            pending = submit(windows[0])
            for n, window in enumerate(windows):
                following = submit(windows[n + 1]) if n + 1 < len(windows) else []
                pieces: dict[int, bytes] = {}
                for req, future in pending:
                    data = future.result()
                    for m in req.members:
                        offset, size = ranges[window[m]]
                        pieces[m] = data[offset - req.start : offset - req.start + size]
                for m in range(len(window)):
                    yield pieces.pop(m)
                pending = following

    def read_ranges(self, key: str, ranges: Sequence[tuple[int, int]], **kwargs: Any) -> list[bytes]:
        """The bytes of every ``(offset, size)`` range, in the order given (see :meth:`iter_ranges`)."""
        return list(self.iter_ranges(key, ranges, **kwargs))

    def iter_objects(self, keys: Iterable[str], concurrency: int = 2 * CONCURRENCY) -> Iterator[bytes]:
        """Yield the whole content of each key, in the order given, ``concurrency`` reads in flight (one
        request per object: small objects, such as a folder of images, pay their round trips side by
        side). A key that cannot be read raises when its turn comes, after the ones before it."""
        pending: collections.deque[Future[bytes]] = collections.deque()
        items = iter(keys)
        with ThreadPoolExecutor(max(1, concurrency), thread_name_prefix="store-read") as pool:
            try:
                for key in itertools.islice(items, 2 * concurrency):
                    pending.append(pool.submit(self.read_bytes, key))
                while pending:
                    future = pending.popleft()
                    following = next(items, None)
                    if following is not None:
                        pending.append(pool.submit(self.read_bytes, following))
                    yield future.result()
            finally:
                for future in pending:
                    future.cancel()

    # -- writes --------------------------------------------------------------------------------------------
    @abstractmethod
    def write_bytes(self, key: str, data: bytes) -> None:
        """Put ``data`` under ``key`` atomically: readers see the old content or all of the new."""

    @abstractmethod
    def writer(self, key: str) -> AbstractContextManager[BinaryIO]:
        """A streaming writer for a large output: ``with store.writer(key) as fh: fh.write(...)``.

        ``key`` appears, whole, only when the block ends without an exception; on an exception nothing
        is left under ``key`` (and no open upload). A killed process may leave an open multipart upload
        (never an object): :meth:`abort_uploads` on a rerun frees it.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` if present (no error when absent)."""

    def delete_tree(self, key: str) -> None:
        """Remove ``key`` and everything below it."""
        keys = [o.key for o in self.list(key)]
        with ThreadPoolExecutor(8, thread_name_prefix="delete") as pool:
            list(pool.map(self.delete, keys))

    def discard_partial(self, key: str) -> int:
        """Free what killed writers left of outputs below (or at) ``key`` (open multipart uploads;
        temporary files on a disk); return how many. Only when no writer of them can be alive. A store
        whose killed writers leave nothing (GCS: an unfinished upload is never an object) frees nothing."""
        return 0

    # -- coordination ------------------------------------------------------------------------------------
    @abstractmethod
    def lease(self, key: str, owner: str, ttl_s: float = 600.0) -> Lease:
        """A lease on ``key`` for ``owner`` (a description such as ``"run X on host Y pid Z"``)."""

    # -- assemblies: one object from numbered pieces ------------------------------------------------------------
    @abstractmethod
    def begin_assembly(self, key: str, scratch: str) -> Assembly:
        """A new :class:`Assembly` of ``key``; ``scratch`` is a key prefix where this store may keep the
        pieces (ignored by S3, which keeps them as multipart-upload parts)."""

    @abstractmethod
    def resume_assembly(self, key: str, scratch: str, token: str) -> Assembly:
        """The assembly ``token`` of ``key`` (begun elsewhere), to add pieces to, complete or abort."""

    @abstractmethod
    def abort_assemblies(self, key: str, scratch: str, keep: Sequence[str] = ()) -> int:
        """Free the abandoned assemblies of ``key`` (S3: the open multipart uploads of exactly that key;
        elsewhere: the piece folders of that key under ``scratch``) except the tokens in ``keep``;
        return how many were freed."""

    def connection_env(self) -> dict[str, str]:
        """Environment variables a worker process needs to reach this store on its own.

        Inside an Airflow task, connections come from the task's supervisor, which a worker process
        cannot (spawned) or must not (forked: it would share the parent's channel) ask. Resolve the
        connection here, in the task process, and put this mapping (``AIRFLOW_CONN_<ID>``, the
        connection as JSON: it holds secrets, never log it) into the workers' environment, where
        Airflow's environment-variable secrets backend, searched first, finds it.
        """
        return {}

    def close(self) -> None:
        """Release this process's open files (the store stays usable; an object store's client, one
        per process, stays for the process's other readers)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class Multipart(ABC):
    """What a store with multipart uploads (S3) adds to :class:`Store`: uploads that any process can add
    parts to, list and abort. Ask for it with ``isinstance(store, Multipart)``; the ``.rec`` assembly needs
    only :meth:`Store.begin_assembly`, which every store has."""

    @abstractmethod
    def create_multipart(self, key: str) -> MultipartUpload: ...

    @abstractmethod
    def resume_multipart(self, key: str, upload_id: str) -> MultipartUpload: ...

    @abstractmethod
    def list_uploads(self, prefix: str = "") -> list[UploadInfo]:
        """Open (neither completed nor aborted) multipart uploads below ``prefix``."""

    @abstractmethod
    def abort_uploads(
        self, prefix: str = "", older_than_s: float | None = None, keep: Sequence[str] = ()
    ) -> int:
        """Abort the open multipart uploads below ``prefix`` (those started more than ``older_than_s``
        seconds ago, when given), except the upload ids in ``keep``; return how many were aborted."""

    def discard_partial(self, key: str) -> int:
        """What killed writers leave in a bucket with multipart uploads: open uploads."""
        return self.abort_uploads(key)
