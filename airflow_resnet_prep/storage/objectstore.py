"""Object stores (S3 and S3-compatible, GCS) behind the storage seam, through Airflow's object storage.

The client is the fsspec file system Airflow builds for the connection (``airflow.sdk.ObjectStoragePath``
/ ``airflow.sdk.io.attach``: the Amazon provider's ``s3`` file system reads an ``aws`` connection,
``endpoint_url`` in its extra for S3-compatible servers). One is made per process: a cached fsspec
file system is bound to its creator's event loop and refuses to work after ``fork`` ("This class is
not fork-safe"), so the store re-creates it when the PID changes, and pickles to a ``spawn`` child as its
URI and connection id only.

S3 operations go straight to the S3 API (``call_s3``: one request each, no listing cache), reads with an
explicit byte range (``cat_file(start=, end=)``: one GET, no read-ahead; fsspec's default buffered
file would fetch up to 50 MiB for a 512-byte tar header). Every HTTP request this process sends is
counted in :attr:`Store.stats` (from botocore's ``before-send`` event, so retries count too).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import posixpath
import socket
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

from airflow_resnet_prep.fsutil import disk_full_as_error
from airflow_resnet_prep.storage.base import (
    Assembly,
    Lease,
    LeaseHeldError,
    LeaseLostError,
    Multipart,
    MultipartUpload,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectVersion,
    Part,
    PieceSink,
    RequestStats,
    StorageError,
    Store,
    UploadInfo,
    check_key,
    unquote_etag,
)
from airflow_resnet_prep.storage.rangefile import RangeFile

log = logging.getLogger(__name__)

SINGLE_PUT_MAX = 256 << 20  # write_bytes above this streams as a multipart upload
WRITER_PART = 16 << 20  # part size of Store.writer (S3: >= 5 MiB; 10,000 parts = 160 GB)
WRITER_INFLIGHT = 2  # parts uploading while the next one fills


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code behind an exception (s3fs turns ClientError into OSError, keeping the cause)."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            error = response.get("Error", {})
            return str(error.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
        seen = seen.__cause__ or seen.__context__
    return None


_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}


class ObjectStore(Store):
    """A prefix (or one object) in a bucket, read and written through an fsspec file system."""

    def __init__(self, protocol: str, bucket: str, prefix: str, conn_id: str | None) -> None:
        super().__init__()
        self.protocol, self.bucket, self.prefix, self.conn_id = protocol, bucket, prefix.strip("/"), conn_id
        self.url = f"{protocol}://{bucket}/{self.prefix}" if self.prefix else f"{protocol}://{bucket}"
        self._fs: Any = None
        self._fs_pid = -1
        self._fs_lock = threading.Lock()
        self._lock_pid = os.getpid()

    def __reduce__(self) -> tuple[Any, ...]:
        # A child process rebuilds the store from its address; it never inherits a client.
        return (type(self), (self.protocol, self.bucket, self.prefix, self.conn_id))

    @property
    def address(self) -> str:
        conn = f"{self.conn_id}@" if self.conn_id else ""
        return f"{self.protocol}://{conn}{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    def child(self, key: str) -> ObjectStore:
        return type(self)(self.protocol, self.bucket, self._key(key), self.conn_id)

    def _key(self, key: str) -> str:
        key = check_key(key)
        return posixpath.join(self.prefix, key) if key and self.prefix else (key or self.prefix)

    def _path(self, key: str) -> str:
        return f"{self.bucket}/{self._key(key)}"

    def object_path(self, key: str = "") -> Any:
        """``key`` as an Airflow ``ObjectStoragePath`` (same connection), e.g. for XCom or an Asset."""
        from airflow.sdk import ObjectStoragePath

        return ObjectStoragePath(self.uri(key), conn_id=self.conn_id)

    # -- the client, one per process ----------------------------------------------------------------------
    @property
    def fs(self) -> Any:
        pid = os.getpid()
        if self._fs_pid != pid:
            if self._lock_pid != pid:
                # A forked child: the inherited locks may have been held by a thread of the parent at the
                # fork, and would never be released here. Fresh ones (two threads racing here at most
                # build two clients, one of which is dropped).
                self._fs_lock, self._lock_pid = threading.Lock(), pid
                self.stats = RequestStats()
            with self._fs_lock:
                if self._fs_pid != pid:
                    self.stats.reset()
                    self._fs = self._make_fs()
                    self._fs_pid = pid
        return self._fs

    def _require_connection(self) -> None:
        """Fail clearly when the named connection does not exist: the Amazon provider would otherwise fall
        back quietly to the machine's default credentials and AWS's own endpoint."""
        if not self.conn_id:
            return
        from airflow.sdk import BaseHook

        try:
            BaseHook.get_connection(self.conn_id)
        except Exception as exc:
            if type(exc).__name__ != "AirflowNotFoundException":
                raise
            raise StorageError(
                f"{self.url}: the Airflow connection {self.conn_id!r} is not defined here (a worker process "
                "needs it in a secrets backend or as AIRFLOW_CONN_<ID>: see Store.connection_env)"
            ) from None

    def _make_fs(self) -> Any:
        from airflow.sdk.io import attach

        self._require_connection()
        # A store under an alias of its own per process: Airflow's cache (keyed by protocol and
        # connection) would hand a forked child its parent's client.
        alias = f"airflow-resnet-prep:{self.protocol}:{self.conn_id or ''}:{os.getpid()}"
        return attach(self.protocol, self.conn_id, alias=alias).fs

    def _count(self, op: str, read: int = 0, written: int = 0) -> None:
        """Count a request of the generic (fsspec) operations; S3 counts at the HTTP client instead."""
        self.stats.add(op, read=read, written=written)

    def connection_env(self) -> dict[str, str]:
        if not self.conn_id:
            return {}
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(self.conn_id)  # registers its secrets with Airflow's log masker
        return {f"AIRFLOW_CONN_{self.conn_id.upper()}": conn.as_json()}

    # -- generic operations through fsspec (GCS; S3 overrides most) ---------------------------------------------
    def size(self, key: str = "") -> int:
        try:
            self.fs.invalidate_cache(self._path(key))
            self._count("HeadObject")
            return int(self.fs.info(self._path(key))["size"])
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{self.uri(key)}: no such object") from None

    def version(self, key: str = "") -> ObjectVersion:
        path = self._path(key)
        try:
            self.fs.invalidate_cache(path)
            self._count("HeadObject")
            info = self.fs.info(path)
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{self.uri(key)}: no such object") from None
        if info.get("type") == "directory":
            raise ObjectNotFoundError(f"{self.uri(key)}: no such object (a folder prefix)")
        generation = info.get("generation")
        return ObjectVersion(
            int(info["size"]),
            unquote_etag(info.get("etag") or info.get("md5Hash")),
            str(generation or "") or None,
        )

    def exists(self, key: str = "") -> bool:
        try:
            self.size(key)
        except ObjectNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._key(prefix)
        self.fs.invalidate_cache()
        self._count("ListObjects")
        found = self.fs.find(f"{self.bucket}/{base}", detail=True)
        root = f"{self.bucket}/{self.prefix}".rstrip("/") + "/"
        return sorted(
            ObjectInfo(
                name[len(root) :] if name.startswith(root) else name,
                int(info["size"]),
                str(info.get("generation") or info.get("etag") or ""),
            )
            for name, info in found.items()
            if info.get("type") != "directory"
        )

    def read_range(self, key: str, offset: int, size: int) -> bytes:
        if size == 0:
            return b""
        try:
            data = self.fs.cat_file(self._path(key), start=offset, end=offset + size)
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{self.uri(key)}: no such object") from None
        self._count("GetObject", read=len(data))
        if len(data) != size:
            raise StorageError(
                f"{self.uri(key)}: wanted {size} bytes at offset {offset}, got {len(data)} "
                "(the object is shorter than expected: truncated or replaced?)"
            )
        return data

    def read_bytes(self, key: str = "") -> bytes:
        try:
            data = self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{self.uri(key)}: no such object") from None
        self._count("GetObject", read=len(data))
        return data

    def open_read(self, key: str = "", block_size: int = 0) -> BinaryIO:
        raw = RangeFile(functools.partial(self.read_range, key), self.size(key))
        return io.BufferedReader(raw, block_size) if block_size > 0 else raw  # type: ignore[return-value]

    def write_bytes(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self._path(key), data)  # one upload, finalised only when whole
        self._count("PutObject", written=len(data))

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        fh = self.fs.open(self._path(key), "wb", block_size=WRITER_PART)
        try:
            yield fh
        except BaseException:
            # Without discard, closing the file (explicitly or when it is collected) commits what was
            # written so far. gcsfs's discard returns early while less than a block was written,
            # leaving the file open: mark it closed so its __del__ cannot upload the buffer.
            try:
                fh.discard()
            finally:
                fh.closed = True
            raise
        fh.close()

    def delete(self, key: str) -> None:
        self._count("DeleteObject")
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

    def lease(self, key: str, owner: str, ttl_s: float = 600.0) -> Lease:
        return ObjectLease(self, check_key(key), owner, ttl_s)

    # Conditional writes, what leases are made of; each store speaks its own API.
    def _conditional_put(self, key: str, body: bytes, if_version: str | None) -> str | None:
        """Write ``body`` only if ``key`` is absent (``if_version=None``) or still at ``if_version``;
        return the new version, or None when the condition failed."""
        raise StorageError(f"{self.uri(key)}: this store has no conditional writes, so no leases")

    def _versioned_read(self, key: str) -> tuple[bytes, str] | None:
        raise StorageError(f"{self.uri(key)}: this store has no conditional writes, so no leases")

    def _conditional_delete(self, key: str, version: str) -> None:
        self.delete(key)


# The stores using each S3 client of this process: its requests are counted in each one's stats (a
# store's stats are therefore the process's requests through that connection, retries included).
_CLIENT_STORES: weakref.WeakKeyDictionary[Any, weakref.WeakSet[S3Store]] = weakref.WeakKeyDictionary()


def _count_request(
    stores: weakref.WeakSet[S3Store], request: Any = None, event_name: str = "", **_: Any
) -> None:
    body = 0
    if request is not None and request.method in ("PUT", "POST"):
        body = int(request.headers.get("Content-Length") or 0)
    for store in list(stores):
        store.stats.add(event_name.rsplit(".", 1)[-1], written=body)


def _count_get_bytes(stores: weakref.WeakSet[S3Store], parsed: Any = None, **_: Any) -> None:
    if isinstance(parsed, dict):
        for store in list(stores):
            with store.stats._lock:  # the request itself was counted before it was sent
                store.stats.bytes_read += int(parsed.get("ContentLength") or 0)


# File bodies of UploadPart requests, with the offset they start at. s3fs retries a failed call with
# the same arguments, by then a consumed file: every attempt rewinds it first (botocore's own retries
# rewind to 0 themselves).
_FILE_BODIES: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def _rewind_body(params: Any = None, **_: Any) -> None:
    body = params.get("Body") if isinstance(params, dict) else None
    if body is not None and not isinstance(body, (bytes, bytearray, memoryview, str)):
        start = _FILE_BODIES.get(body)
        if start is not None:
            body.seek(start)


class S3Store(Multipart, ObjectStore):
    """S3 and S3-compatible servers (an ``aws`` connection; ``endpoint_url`` in its extra)."""

    def _count(self, op: str, read: int = 0, written: int = 0) -> None:
        pass  # counted from the HTTP client's events (retries included)

    def _make_fs(self) -> Any:
        fs = super()._make_fs()
        # The handlers go on the session, which hands them to the clients it makes, unless this file
        # system made its client before they were there. Asking for ``fs.s3`` first would make the
        # client outside s3fs's own first call, and s3fs before 2026.9 then replaces the session on that
        # call by one without the connection's credentials (every request unsigned).
        session = fs.session
        if session is not None and (session in _CLIENT_STORES or getattr(fs, "_s3", None) is None):
            target, events = session, session  # its clients have (or will get) the handlers
        else:
            target = fs.s3
            events = target.meta.events
        stores = _CLIENT_STORES.get(target)
        if stores is None:
            # Once per client (or session): stores of one connection share it (fsspec's cache), and
            # handlers registered per store would pile up on it, each request calling them all.
            stores = _CLIENT_STORES[target] = weakref.WeakSet()
            events.register("before-send.s3", functools.partial(_count_request, stores))
            events.register("after-call.s3.GetObject", functools.partial(_count_get_bytes, stores))
            events.register("before-parameter-build.s3.UploadPart", _rewind_body)
        stores.add(self)
        return fs

    def call(self, method: str, key: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """One S3 API call on this store's bucket (``Key`` from ``key`` when given)."""
        if key is not None:
            kwargs["Key"] = self._key(key)
        return self.fs.call_s3(method, Bucket=self.bucket, **kwargs)

    def _not_found(self, key: str, exc: BaseException) -> bool:
        return isinstance(exc, FileNotFoundError) or _error_code(exc) in _NOT_FOUND

    # -- reads ---------------------------------------------------------------------------------------------
    def size(self, key: str = "") -> int:
        try:
            return int(self.call("head_object", key)["ContentLength"])
        except OSError as exc:
            if self._not_found(key, exc):
                raise ObjectNotFoundError(f"{self.uri(key)}: no such object") from None
            raise StorageError(f"{self.uri(key)}: cannot read its size: {exc}") from exc

    def version(self, key: str = "") -> ObjectVersion:
        try:
            out = self.call("head_object", key)
        except OSError as exc:
            if self._not_found(key, exc):
                raise ObjectNotFoundError(f"{self.uri(key)}: no such object") from None
            raise StorageError(f"{self.uri(key)}: cannot read its metadata: {exc}") from exc
        return ObjectVersion(int(out["ContentLength"]), unquote_etag(out.get("ETag")), out.get("VersionId"))

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._key(prefix)
        if base:
            base += "/"
        root = self.prefix + "/" if self.prefix else ""
        out: list[ObjectInfo] = []
        kwargs: dict[str, Any] = {"Prefix": base}
        while True:
            page = self.call("list_objects_v2", **kwargs)
            out.extend(
                ObjectInfo(o["Key"][len(root) :], int(o["Size"]), unquote_etag(o.get("ETag")) or "")
                for o in page.get("Contents", [])
            )
            if not page.get("IsTruncated"):
                return sorted(out)
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    # -- writes --------------------------------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> None:
        if len(data) <= SINGLE_PUT_MAX:
            self.call("put_object", key, Body=data)  # a single PUT is all or nothing
            return
        with self.writer(key) as fh:
            view = memoryview(data)
            for start in range(0, len(data), WRITER_PART):
                fh.write(view[start : start + WRITER_PART])

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        writer = S3Writer(self, key)
        try:
            yield writer  # type: ignore[misc]
        except BaseException:
            writer.abort()
            raise
        writer.commit()

    def delete(self, key: str) -> None:
        try:
            self.call("delete_object", key)
        except OSError as exc:
            if not self._not_found(key, exc):
                raise StorageError(f"{self.uri(key)}: cannot delete: {exc}") from exc

    # -- multipart -----------------------------------------------------------------------------------------
    def create_multipart(self, key: str) -> S3Multipart:
        upload_id = self.call("create_multipart_upload", key)["UploadId"]
        return S3Multipart(self, check_key(key), upload_id)

    def resume_multipart(self, key: str, upload_id: str) -> S3Multipart:
        return S3Multipart(self, check_key(key), upload_id)

    def list_uploads(self, prefix: str = "") -> list[UploadInfo]:
        base = self._key(prefix)
        root = self.prefix + "/" if self.prefix else ""
        out: list[UploadInfo] = []
        kwargs: dict[str, Any] = {"Prefix": base}
        while True:
            page = self.call("list_multipart_uploads", **kwargs)
            for upload in page.get("Uploads", []) or []:
                initiated = upload.get("Initiated")
                out.append(
                    UploadInfo(
                        upload["Key"][len(root) :],
                        upload["UploadId"],
                        initiated.timestamp() if initiated is not None else 0.0,
                    )
                )
            if not page.get("IsTruncated"):
                return out
            kwargs["KeyMarker"] = page.get("NextKeyMarker")
            kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker")

    def list_parts(self, key: str, upload_id: str) -> list[Part]:
        """The parts uploaded so far to an open multipart upload (one request per 1,000 parts)."""
        out: list[Part] = []
        kwargs: dict[str, Any] = {"UploadId": upload_id}
        while True:
            try:
                page = self.call("list_parts", key, **kwargs)
            except OSError as exc:
                if self._not_found(key, exc):
                    raise StorageError(
                        f"{self.uri(key)}: no open upload {upload_id} (completed or aborted already)"
                    ) from None
                raise StorageError(
                    f"{self.uri(key)}: listing the parts of upload {upload_id} failed: {exc}"
                ) from exc
            out.extend(
                Part(int(p["PartNumber"]), p["ETag"], int(p["Size"])) for p in page.get("Parts", []) or []
            )
            if not page.get("IsTruncated"):
                return sorted(out)
            kwargs["PartNumberMarker"] = page["NextPartNumberMarker"]

    def begin_assembly(self, key: str, scratch: str) -> S3Assembly:
        upload = self.create_multipart(key)
        return S3Assembly(self, key, scratch, upload.upload_id)

    def resume_assembly(self, key: str, scratch: str, token: str) -> S3Assembly:
        return S3Assembly(self, key, scratch, token)

    def abort_assemblies(self, key: str, scratch: str, keep: Sequence[str] = ()) -> int:
        key = check_key(key)
        aborted = 0
        for upload in self.list_uploads(key):
            if upload.key == key and upload.upload_id not in keep:  # not "train.rec.old"
                self.resume_multipart(upload.key, upload.upload_id).abort()
                aborted += 1
        return aborted

    def abort_uploads(
        self, prefix: str = "", older_than_s: float | None = None, keep: Sequence[str] = ()
    ) -> int:
        now, aborted = time.time(), 0
        for upload in self.list_uploads(prefix):
            if upload.upload_id in keep:
                continue
            if older_than_s is not None and now - upload.initiated < older_than_s:
                continue
            self.resume_multipart(upload.key, upload.upload_id).abort()
            aborted += 1
        return aborted

    # -- conditional writes (leases) -----------------------------------------------------------------------------
    def _conditional_put(self, key: str, body: bytes, if_version: str | None) -> str | None:
        condition = {"IfNoneMatch": "*"} if if_version is None else {"IfMatch": if_version}
        try:
            return self.call("put_object", key, Body=body, **condition)["ETag"]
        except OSError as exc:
            if isinstance(exc, FileExistsError) or _error_code(exc) in _PRECONDITION:
                return None
            raise StorageError(f"{self.uri(key)}: conditional write failed: {exc}") from exc

    def _versioned_read(self, key: str) -> tuple[bytes, str] | None:
        try:
            head = self.call("head_object", key)
            # A newer version written between the two requests is harmless: a write conditional on
            # the older ETag then fails, and the lease is reported as held.
            data = self.read_range(key, 0, int(head["ContentLength"])) if head["ContentLength"] else b""
        except (OSError, StorageError) as exc:
            if isinstance(exc, ObjectNotFoundError) or _error_code(exc) in _NOT_FOUND:
                return None
            raise
        return data, head["ETag"]


class S3Multipart(MultipartUpload):
    """An S3 multipart upload; pickles as ``(store, key, upload_id)``, so any process can add parts."""

    def __init__(self, store: S3Store, key: str, upload_id: str) -> None:
        self.store, self.key, self.upload_id = store, key, upload_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (S3Multipart, (self.store, self.key, self.upload_id))

    def upload_part(self, number: int, data: bytes | BinaryIO) -> Part:
        """Upload part ``number`` from bytes, or streamed from a seekable binary file: all of it, from
        offset 0 to its end (botocore rewinds a retried body to 0)."""
        if not 1 <= number <= self.MAX_PARTS:
            raise ValueError(f"{self.store.uri(self.key)}: part number {number} outside 1..{self.MAX_PARTS}")
        extra: dict[str, Any] = {}
        if isinstance(data, (bytes, bytearray, memoryview)):
            size = memoryview(data).nbytes
        else:
            size = data.seek(0, io.SEEK_END)
            data.seek(0)
            _FILE_BODIES[data] = 0
            extra["ContentLength"] = size  # a short body then fails instead of storing a short part
        try:
            out = self.store.call(
                "upload_part", self.key, UploadId=self.upload_id, PartNumber=number, Body=data, **extra
            )
        except OSError as exc:
            raise StorageError(
                f"{self.store.uri(self.key)}: uploading part {number} of upload {self.upload_id} failed: {exc}"
            ) from exc
        finally:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                _FILE_BODIES.pop(data, None)
        return Part(number, out["ETag"], size)

    def complete(self, parts: Sequence[Part]) -> None:
        parts = sorted((Part(*p) for p in parts), key=lambda p: p.number)
        where = f"{self.store.uri(self.key)} (upload {self.upload_id})"
        if not parts:
            raise StorageError(f"{where}: no parts to complete")
        numbers = [p.number for p in parts]
        if len(set(numbers)) != len(numbers):
            raise StorageError(f"{where}: a part number is given twice")
        small = [p.number for p in parts[:-1] if p.size < self.MIN_PART]
        if small:
            raise StorageError(f"{where}: parts {small} are below 5 MiB; only the last part may be smaller")
        try:
            self.store.call(
                "complete_multipart_upload",
                self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]},
            )
        except OSError as exc:
            raise StorageError(f"{where}: completing the upload failed: {exc}") from exc

    def abort(self) -> None:
        try:
            self.store.call("abort_multipart_upload", self.key, UploadId=self.upload_id)
        except OSError as exc:
            if _error_code(exc) not in _NOT_FOUND:
                raise StorageError(
                    f"{self.store.uri(self.key)}: aborting upload {self.upload_id} failed: {exc}"
                ) from exc


class S3Assembly(Assembly):
    """An assembly on S3: a multipart upload (``token`` is its UploadId), one part per piece. A piece is
    spooled to an anonymous temporary file in the local temporary folder (``TMPDIR``; gone with the
    process, whatever happens to it), then uploaded from it in one streaming ``UploadPart`` request."""

    min_piece = MultipartUpload.MIN_PART
    max_pieces = MultipartUpload.MAX_PARTS

    @property
    def upload(self) -> S3Multipart:
        return S3Multipart(self.store, self.key, self.token)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def piece_writer(self, number: int) -> Iterator[PieceSink]:
        self.check_number(number)
        spool_dir = tempfile.gettempdir()
        with disk_full_as_error(spool_dir), tempfile.TemporaryFile(prefix="piece-", dir=spool_dir) as fh:
            sink = PieceSink(number, fh, self.where)
            yield sink
            fh.flush()
            part = self.upload.upload_part(number, fh)
        if part.size != sink.size:  # the spool file is ours alone: only a broken disk gets here
            raise StorageError(f"{self.where}: piece {number}: wrote {sink.size} bytes, uploaded {part.size}")
        sink._part = part

    def complete(self, parts: Sequence[Part]) -> None:
        parts = self.check_parts(parts)
        store: S3Store = self.store  # type: ignore[assignment]
        # One ListParts per 1,000 parts: the part S3 would take for a missing one is refused by
        # CompleteMultipartUpload too, but a wrong size (a piece replaced since) only shows here.
        uploaded: dict[int, dict[str, int]] = {}  # number -> {etag: size}
        for p in store.list_parts(self.key, self.token):
            # S3 keeps the last upload of a number; some servers (SeaweedFS) list the earlier ones too
            uploaded.setdefault(p.number, {})[p.etag] = p.size
        found = {}
        for p in parts:
            if p.number in uploaded:
                sizes = uploaded[p.number]
                found[p.number] = sizes.get(p.etag, next(iter(sizes.values())))
        self.check_sizes(parts, found)
        stale = [p.number for p in parts if p.etag and p.etag not in uploaded[p.number]]
        if stale:
            raise StorageError(
                f"{self.where}: pieces {stale[:10]} were uploaded again since their parts were recorded "
                "(another ETag); nothing was written"
            )
        self.upload.complete(parts)

    def abort(self) -> None:
        self.upload.abort()


class S3Writer(io.RawIOBase):
    """Streams to one S3 object: a single PUT when it stays below one part, else a multipart upload whose
    parts upload in the background (``WRITER_INFLIGHT`` at a time). The object appears only on ``commit``;
    ``abort`` (or an exception in :meth:`S3Store.writer`'s block) leaves nothing under the key."""

    def __init__(self, store: S3Store, key: str, part_size: int | None = None) -> None:
        self.store, self.key = store, key
        self.part_size = max(part_size or WRITER_PART, MultipartUpload.MIN_PART)
        self._buf = bytearray()
        self._upload: S3Multipart | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[Part]] = []
        self._parts: list[Part] = []
        self._pos = 0
        self._done = False

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def write(self, data: Any) -> int:
        if self._done:
            raise ValueError(f"{self.store.uri(self.key)}: write after the writer ended")
        self._buf += data
        n = len(data)
        self._pos += n
        while len(self._buf) >= self.part_size:
            self._send(bytes(self._buf[: self.part_size]))
            del self._buf[: self.part_size]
        return n

    def _send(self, chunk: bytes) -> None:
        if self._upload is None:
            self._upload = self.store.create_multipart(self.key)
            self._pool = ThreadPoolExecutor(max_workers=WRITER_INFLIGHT, thread_name_prefix="s3-part")
        assert self._pool is not None
        while len(self._pending) >= WRITER_INFLIGHT:
            self._parts.append(self._pending.pop(0).result())
        number = len(self._parts) + len(self._pending) + 1
        self._pending.append(self._pool.submit(self._upload.upload_part, number, chunk))

    def commit(self) -> None:
        self._done = True
        try:
            if self._upload is None:
                self.store.call("put_object", self.key, Body=bytes(self._buf))
                return
            if self._buf:
                self._send(bytes(self._buf))
            for future in self._pending:
                self._parts.append(future.result())
            self._pending = []
            self._upload.complete(self._parts)
        except BaseException:
            self.abort()
            raise
        finally:
            self._buf = bytearray()
            if self._pool is not None:
                self._pool.shutdown(wait=True)

    def abort(self) -> None:
        self._done = True
        self._buf = bytearray()
        if self._pool is not None:
            for future in self._pending:
                future.cancel()
            self._pool.shutdown(wait=True)
        self._pending = []
        if self._upload is not None:
            upload, self._upload = self._upload, None
            upload.abort()


def _pid_namespace() -> str:
    """Which process-id space this process lives in (PIDs compare only within one)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _holder_died(info: dict[str, Any]) -> bool:
    """Whether a lease's holder is a process of this machine (same host name and PID namespace) that no
    longer exists: a run killed here leaves its lease behind until it expires, and the rerun on the same
    machine (the CLI, a local or Celery worker) need not wait for that."""
    pid = info.get("pid")
    if not isinstance(pid, int) or info.get("host") != socket.gethostname():
        return False
    if not info.get("pidns") or info.get("pidns") != _pid_namespace() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by another user
        return False
    return False


class ObjectLease(Lease):
    """A lease object written with conditional writes: created only if absent (S3 ``If-None-Match: *``,
    GCS ``ifGenerationMatch=0``), so of two runs creating it one is refused. It holds ``{owner, token,
    expires}``; the holder renews it before it expires (a write conditional on its version: S3 ETag
    ``If-Match``, GCS generation), and a crashed holder's lease can be taken over once expired (again
    conditionally, so of two takers one wins). Expiry compares wall clocks: keep ``ttl_s`` well above
    the clock skew between workers (default 10 minutes, renewed every ttl/3)."""

    def __init__(self, store: ObjectStore, key: str, owner: str, ttl_s: float) -> None:
        self.store, self.key, self.owner, self.ttl_s = store, key, owner, ttl_s
        self.token = uuid.uuid4().hex
        self.version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "pidns": _pid_namespace(),
                "token": self.token,
                "expires": time.time() + self.ttl_s,
            }
        ).encode()

    def _put(self, if_version: str | None) -> bool:
        version = self.store._conditional_put(self.key, self._body(), if_version)
        if version is None:
            return False
        self.version = version
        return True

    def _current(self) -> tuple[dict[str, Any], str] | None:
        current = self.store._versioned_read(self.key)
        if current is None:
            return None
        body, version = current
        try:
            info = json.loads(body)
        except ValueError:
            info = {}
        return (info if isinstance(info, dict) else {}), version

    def acquire(self) -> ObjectLease:
        for _ in range(3):
            if self._put(None):
                break
            current = self._current()
            if current is None:
                continue  # released meanwhile: try to create it again
            info, version = current
            if info.get("token") == self.token:  # our own create, whose response was lost and retried
                self.version = version
                break
            expires = float(info.get("expires", 0) or 0)
            if expires > time.time() and not _holder_died(info):
                raise LeaseHeldError(
                    f"{self.store.uri(self.key)}: held by {info.get('owner', '?')} "
                    f"(host {info.get('host', '?')}, pid {info.get('pid', '?')}) until "
                    f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(expires))}; another run is writing "
                    "this data_dir (wait for it or use a different data_dir)"
                )
            if self._put(version):  # expired: take it over, unless another taker was first
                log.warning(
                    "%s: took over the lease of %s (%s)",
                    self.store.uri(self.key),
                    info.get("owner"),
                    "expired" if expires <= time.time() else "its process is gone",
                )
                break
        else:
            raise LeaseHeldError(f"{self.store.uri(self.key)}: could not take the lease (contended)")
        return self

    def renew(self) -> None:
        if self.version is None or not self._put(self.version):
            raise LeaseLostError(
                f"{self.store.uri(self.key)}: the lease was taken over or removed while {self.owner} held it"
            )

    def _keepalive(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except Exception:
                log.exception("%s: renewing the lease failed", self.store.uri(self.key))
                return

    def __enter__(self) -> ObjectLease:
        self.acquire()
        self._stop.clear()
        self._thread = threading.Thread(target=self._keepalive, name="lease-keepalive", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.version is None:
            return
        current = self._current()
        # Only our own lease is removed (the delete is conditional on its version where the store can).
        if current is not None and current[0].get("token") == self.token:
            self.store._conditional_delete(self.key, current[1])
        self.version = None
