"""The storage seam: :func:`store_for` picks, once, where bytes come from and go to (see :mod:`.base`).

- an absolute local path or a ``file://`` URL: :class:`~.local.LocalStore` (pread, atomic renames, flock);
- ``s3://[conn_id@]bucket/key``: :class:`~.objectstore.S3Store` (extra ``[s3]``: ``s3fs`` and
  ``apache-airflow-providers-amazon``, whose ``s3`` file system reads the ``aws`` connection);
- ``gs://[conn_id@]bucket/key`` (or ``gcs://``): :class:`~.objectstore.ObjectStore` over gcsfs (extra ``[gcs]``).

Anything else (a relative path, which would be a different folder on every worker; ``http://``; a
URI with a password in it) is refused with a message naming it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from airflow_resnet_prep.storage.base import (
    Assembly,
    Lease,
    LeaseHeldError,
    LeaseLostError,
    MultipartUpload,
    ObjectInfo,
    ObjectNotFoundError,
    Part,
    PieceSink,
    RequestStats,
    StorageError,
    Store,
    UploadInfo,
    coalesce,
)
from airflow_resnet_prep.storage.local import LocalStore

OBJECT_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs"}

__all__ = [
    "Assembly",
    "Lease",
    "LeaseHeldError",
    "LeaseLostError",
    "LocalStore",
    "MultipartUpload",
    "ObjectInfo",
    "ObjectLocation",
    "ObjectNotFoundError",
    "Part",
    "PieceSink",
    "RequestStats",
    "StorageError",
    "Store",
    "UploadInfo",
    "coalesce",
    "is_object_uri",
    "parse_object_uri",
    "store_for",
]


def is_object_uri(uri: str | os.PathLike[str]) -> bool:
    return urlsplit(str(uri)).scheme.lower() in OBJECT_SCHEMES


@dataclass(frozen=True)
class ObjectLocation:
    """The parts of ``scheme://[conn_id@]bucket/key``: ``protocol`` (``s3`` or ``gs``), the connection id
    the URI names (None without one), the bucket and the key (no leading or trailing slash)."""

    protocol: str
    conn_id: str | None
    bucket: str
    key: str

    def contains(self, other: ObjectLocation) -> bool:
        """Whether ``other`` is this location or lies below it (connections aside)."""
        if (other.protocol, other.bucket) != (self.protocol, self.bucket):
            return False
        return not self.key or other.key == self.key or other.key.startswith(self.key + "/")


def parse_object_uri(uri: str | os.PathLike[str]) -> ObjectLocation | None:
    """The parts of an object URI; None for anything else. Refuses a URI holding a password (without
    echoing it) or no bucket."""
    text = str(uri).strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in OBJECT_SCHEMES:
        return None
    userinfo, at, bucket = parts.netloc.rpartition("@")
    if ":" in userinfo:
        # Never echo it: it may hold a secret.
        raise StorageError(
            f"{scheme}://...@{bucket}{parts.path}: credentials do not belong in a URI; put them in an "
            "Airflow connection and write s3://<conn_id>@bucket/key"
        )
    if not bucket:
        raise StorageError(f"{text}: no bucket in the URI")
    return ObjectLocation(
        OBJECT_SCHEMES[scheme], (userinfo if at else "") or None, bucket, parts.path.strip("/")
    )


def store_for(uri: str | os.PathLike[str], conn_id: str | None = None) -> Store:
    """The store rooted at ``uri``. ``conn_id`` is the Airflow connection for a URI that names none
    (``s3://conn@bucket/...`` wins over it); it is ignored for local paths."""
    text = str(uri).strip()
    if not text:
        raise StorageError("empty path: give an absolute local path or an s3:// or gs:// URI")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return LocalStore(os.path.abspath(unquote(parts.path)))
    location = parse_object_uri(text)
    if location is not None:
        connection = location.conn_id or conn_id or None
        if location.protocol == "s3":
            from airflow_resnet_prep.storage.objectstore import S3Store

            return S3Store("s3", location.bucket, parts.path, connection)
        from airflow_resnet_prep.storage.gcs import GcsStore

        return GcsStore("gs", location.bucket, parts.path, connection)
    if scheme and len(scheme) > 1:  # "c:" would be a Windows drive, never seen here
        raise StorageError(
            f"{text}: unsupported scheme {scheme!r}; use an absolute local path, s3:// or gs://"
        )
    path = os.path.expanduser(text)
    if not os.path.isabs(path):
        raise StorageError(
            f"{text}: a relative path means a different folder on every worker; give an absolute local "
            "path or an s3:// or gs:// URI"
        )
    return LocalStore(os.path.normpath(path))
