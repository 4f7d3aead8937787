"""What identifies an object's content without reading it: size and ETag (S3) or generation (GCS).

Used for the fingerprints of sources in a bucket (the cached-output check): one HEAD per object, one
listing per folder prefix. An S3 ETag of a single PUT is the content's MD5, of a multipart upload a
hash of the parts' MD5s; either changes whenever the object is written with other bytes. A GCS
generation changes on every write.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

from airflow_resnet_prep.storage.base import ObjectNotFoundError, StorageError, Store, check_key
from airflow_resnet_prep.storage.objectstore import ObjectStore, S3Store


class ObjectVersion(NamedTuple):
    size: int
    etag: str | None  # S3 ETag / GCS etag, quotes stripped
    version: str | None  # GCS generation (S3: the version id when the bucket keeps versions)


def _unquote(etag: Any) -> str | None:
    return str(etag).strip('"') if etag else None


def head(store: Store, key: str = "") -> ObjectVersion:
    """One metadata request for ``key``; :class:`ObjectNotFoundError` when absent."""
    if isinstance(store, S3Store):
        try:
            out = store.call("head_object", key)
        except OSError as exc:
            if store._not_found(key, exc):
                raise ObjectNotFoundError(f"{store.uri(key)}: no such object") from None
            raise StorageError(f"{store.uri(key)}: cannot read its metadata: {exc}") from exc
        return ObjectVersion(int(out["ContentLength"]), _unquote(out.get("ETag")), out.get("VersionId"))
    if isinstance(store, ObjectStore):
        path = store._path(key)
        try:
            store.fs.invalidate_cache(path)
            store._count("HeadObject")
            info = store.fs.info(path)
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{store.uri(key)}: no such object") from None
        if info.get("type") == "directory":
            raise ObjectNotFoundError(f"{store.uri(key)}: no such object (a folder prefix)")
        generation = info.get("generation")
        return ObjectVersion(
            int(info["size"]),
            _unquote(info.get("etag") or info.get("md5Hash")),
            str(generation or "") or None,
        )
    return ObjectVersion(store.size(key), None, None)


def listing_digest(store: Store, prefix: str = "") -> tuple[int, int, str]:
    """``(objects, total bytes, digest)`` of everything below ``prefix``: the digest covers every key,
    size and ETag/generation, so any object added, removed, renamed or rewritten changes it."""
    h = hashlib.sha256()
    files = total = 0
    for key, size, tag in _listing(store, check_key(prefix)):
        h.update(f"{key}\t{size}\t{tag}\n".encode())
        files += 1
        total += size
    return files, total, h.hexdigest()


def _listing(store: Store, prefix: str) -> list[tuple[str, int, str]]:
    if isinstance(store, S3Store):
        base = store._key(prefix)
        if base:
            base += "/"
        root = store.prefix + "/" if store.prefix else ""
        out: list[tuple[str, int, str]] = []
        kwargs: dict[str, Any] = {"Prefix": base}
        while True:
            page = store.call("list_objects_v2", **kwargs)
            out.extend(
                (o["Key"][len(root) :], int(o["Size"]), _unquote(o.get("ETag")) or "")
                for o in page.get("Contents", [])
            )
            if not page.get("IsTruncated"):
                return sorted(out)
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
    if isinstance(store, ObjectStore):
        base = store._key(prefix)
        store.fs.invalidate_cache()
        store._count("ListObjects")
        found = store.fs.find(f"{store.bucket}/{base}", detail=True)
        root = f"{store.bucket}/{store.prefix}".rstrip("/") + "/"
        return sorted(
            (
                name[len(root) :] if name.startswith(root) else name,
                int(info["size"]),
                str(info.get("generation") or info.get("etag") or ""),
            )
            for name, info in found.items()
            if info.get("type") != "directory"
        )
    return [(o.key, o.size, "") for o in store.list(prefix)]
