"""Sources in a bucket: ``s3://[conn_id@]bucket/key`` and ``gs://[conn_id@]bucket/key``.

A source URI is read in place through the storage seam (:func:`airflow_resnet_prep.storage.store_for`):
the catalog records it in its canonical form ``s3://<conn_id>@bucket/key`` (the connection *id*, never a
secret), so every later step and worker process reaches the same object with the same connection,
whether the user wrote the ``conn_id@`` form or gave ``storage_conn_id``. Messages, fingerprints and
the manifest show it without the connection id (:func:`display_uri`).

- an object: a tar archive (or the labels file), indexed and read with ranged requests;
- a prefix holding objects (``<synset>/<image>``, or a flat validation folder): listed, each image one GET;
- ``download=True`` (the ``download_sources`` param): the object is first copied to
  ``data_dir/downloads/<name>`` (``.part`` then rename, checked against its size and ETag, and against
  the checksum when one is given), and the local copy is read; a rerun reuses the copy while the
  object's size and ETag are unchanged. A folder prefix is copied to ``downloads/<name>/`` object by
  object, and reused while its listing (keys, sizes, ETags) is unchanged.

Fingerprints (the cached-output check): ``kind`` ``object`` with ``size``, ``etag`` and ``version``
(GCS generation), or ``kind`` ``object_dir`` with the number of objects, their total size and a digest of
every key, size and ETag: one HEAD or one listing per run, no data read.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from airflow_resnet_prep.errors import SourceError, reason
from airflow_resnet_prep.fsutil import (
    atomic_write_json,
    disk_full_as_error,
    exclusive_lock,
    fsync_dir,
    read_json,
)
from airflow_resnet_prep.sources.checksum import (
    ByteProgress,
    file_digest,
    parse_checksum,
    stream_object,
    verify_object,
)
from airflow_resnet_prep.sources.fetched import Fetched
from airflow_resnet_prep.storage import (
    ObjectNotFoundError,
    StorageError,
    Store,
    canonical_uri,
    display_uri,
    resolve_location,
)

log = logging.getLogger(__name__)

COPY_OBJECTS_CONCURRENCY = 16  # objects of a folder prefix copied at once


def source_store(source: str | os.PathLike[str], conn_id: str | None = None) -> Store:
    """The store of a catalog source: its object URI (connection included), or a local path (a relative
    one from the current folder: the task that names a source reads it)."""
    try:
        return resolve_location(source, conn_id, cwd=os.getcwd()).store()
    except StorageError as exc:
        raise SourceError(str(exc)) from None


def read_source_bytes(source: str | os.PathLike[str]) -> bytes:
    """The whole content of a small source (the labels file): a local path or an object URI."""
    store = source_store(source)
    try:
        return store.read_bytes()
    except ObjectNotFoundError:
        raise SourceError(f"{display_uri(source)}: no such file or object") from None
    except (StorageError, OSError) as exc:
        raise SourceError(f"{display_uri(source)}: cannot read it: {reason(exc)}") from exc


def resolve_object(
    source: str,
    downloads_dir: Path,
    *,
    checksum: str | None = None,
    conn_id: str | None = None,
    download: bool = False,
) -> Fetched:
    """A bucket source as a :class:`~airflow_resnet_prep.sources.fetched.Fetched`: its canonical URI
    (read in place) or, with ``download``, its local copy under ``downloads_dir``."""

    uri = _canonical(source, conn_id)
    store = source_store(uri)
    shown = display_uri(uri)
    try:
        info = store.version()
    except ObjectNotFoundError:
        info = None
    except Exception as exc:  # a missing connection, refused credentials, an unreachable endpoint
        raise SourceError(
            f"{shown}: cannot reach the object: {type(exc).__name__}: {reason(exc)}{_conn_hint(uri)}"
        ) from None
    if info is None:
        try:
            files, size, digest = store.listing_digest()
        except Exception as exc:
            raise SourceError(f"{shown}: cannot list it: {reason(exc)}{_conn_hint(uri)}") from None
        if not files:
            raise SourceError(
                f"{shown}: no such object, and no objects below it as a folder{_conn_hint(uri)}"
            )
        if parse_checksum(checksum):
            log.warning(
                "%s: is a folder prefix; the checksum %s applies to archives and is ignored", shown, checksum
            )
        fp: dict[str, object] = {
            "kind": "object_dir",
            "source": shown,
            "files": files,
            "size": size,
            "digest": digest,
        }
        if download:
            return Fetched(_download_folder(store, shown, fp, downloads_dir), fp)
        return Fetched(uri, fp)
    fp = {"kind": "object", "source": shown, "size": info.size, "etag": info.etag, "version": info.version}
    if download:
        path, verified = _download_object(store, shown, info, downloads_dir, checksum)
        if verified:
            fp["checksum"] = verified
        return Fetched(path, fp)
    verified = verify_object(store, shown, info, checksum, cache_dir=downloads_dir)
    if verified:
        fp["checksum"] = verified
    return Fetched(uri, fp)


def _canonical(source: str, conn_id: str | None) -> str:
    try:
        return canonical_uri(source, conn_id)
    except StorageError as exc:
        raise SourceError(str(exc)) from None


def _conn_hint(uri: str) -> str:
    conn = urlsplit(uri).netloc.rpartition("@")[0]
    return (
        f" (connection {conn!r}: check its credentials and endpoint_url)"
        if conn
        else " (no connection given: set storage_conn_id or write scheme://<conn_id>@bucket/key)"
    )


def _download_object(
    store: Store, shown: str, info, downloads_dir: Path, checksum: str | None
) -> tuple[Path, str | None]:
    """Copy the object to ``downloads_dir/<name>`` unless an earlier copy of this very version is there."""
    name = posixpath.basename(urlsplit(shown).path)
    if not name or name in (".", ".."):
        raise SourceError(f"{shown}: the key does not end in a file name to save the copy under")
    downloads_dir.mkdir(parents=True, exist_ok=True)
    final, sidecar, part = (
        downloads_dir / name,
        downloads_dir / f"{name}.json",
        downloads_dir / f"{name}.part",
    )
    wanted = {
        "kind": "object",
        "source": shown,
        "size": info.size,
        "etag": info.etag,
        "version": info.version,
    }
    parsed = parse_checksum(checksum)
    with exclusive_lock(downloads_dir / f".{name}.lock"):
        side = read_json(sidecar)
        if (
            isinstance(side, dict)
            and final.is_file()
            and final.stat().st_size == info.size
            and {k: side.get(k) for k in wanted} == wanted
        ):
            verified = side.get("checksum")
            if parsed and verified != f"{parsed[0]}:{parsed[1]}":
                digest = file_digest(final, parsed[0])
                verified = _check(shown, parsed, digest)
                atomic_write_json(sidecar, {**side, "checksum": verified})
            log.info("%s: reusing the copy %s (same size and ETag), no download", shown, final)
            return final, verified if parsed else None
        log.info("%s: copying %.1f MB to %s", shown, info.size / 1e6, final)
        sidecar.unlink(missing_ok=True)
        hasher = hashlib.new(parsed[0]) if parsed else None
        progress = ByteProgress(f"copy {name}", info.size)
        try:
            with disk_full_as_error(part), open(part, "wb") as fh:
                for data in stream_object(store, info.size):
                    fh.write(data)
                    if hasher is not None:
                        hasher.update(data)
                    progress.advance(len(data))
                fh.flush()
                os.fsync(fh.fileno())
            verified = _check(shown, parsed, hasher.hexdigest()) if hasher is not None and parsed else None
            os.replace(part, final)
            fsync_dir(downloads_dir)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        progress.finish()
        atomic_write_json(sidecar, {**wanted, **({"checksum": verified} if verified else {})})
        return final, verified


def _download_folder(store: Store, shown: str, fp: dict[str, object], downloads_dir: Path) -> Path:
    """Copy every object below the prefix to ``downloads_dir/<name>/<key>`` (each file under a temporary
    name, then renamed; files already there with their size are kept), unless the sidecar says this
    very listing (same digest of keys, sizes and ETags) was copied whole already."""
    name = posixpath.basename(urlsplit(shown).path.rstrip("/")) or "bucket"
    target, sidecar = downloads_dir / name, downloads_dir / f"{name}.json"
    downloads_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(downloads_dir / f".{name}.lock"):
        side = read_json(sidecar)
        if isinstance(side, dict) and side == fp and target.is_dir():
            log.info("%s: reusing the copy %s (same listing), no download", shown, target)
            return target
        sidecar.unlink(missing_ok=True)
        objects = [o for o in store.list() if not any(p in ("", ".", "..") for p in o.key.split("/"))]
        todo = []
        for info in objects:
            path = target.joinpath(*info.key.split("/"))
            if not (path.is_file() and path.stat().st_size == info.size):
                todo.append((info.key, path))
        log.info("%s: copying %d of %d objects to %s", shown, len(todo), len(objects), target)
        progress = ByteProgress(f"copy {name}", sum(o.size for o in objects))

        def copy(entry: tuple[str, Path]) -> int:
            key, path = entry
            data = store.read_bytes(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.part")
            try:
                with disk_full_as_error(path), open(tmp, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return len(data)

        try:
            with ThreadPoolExecutor(COPY_OBJECTS_CONCURRENCY, thread_name_prefix="copy") as pool:
                for n in pool.map(copy, todo):
                    progress.advance(n)
        except (StorageError, OSError) as exc:
            raise SourceError(f"{shown}: copying the folder failed: {reason(exc)}") from exc
        progress.finish()
        atomic_write_json(sidecar, fp)
        return target


def _check(shown: str, parsed: tuple[str, str], actual: str) -> str:
    algo, expected = parsed
    if actual != expected:
        raise SourceError(f"{shown}: {algo} mismatch: expected {expected}, got {actual}")
    return f"{algo}:{actual}"
