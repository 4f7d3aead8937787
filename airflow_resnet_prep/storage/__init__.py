"""The storage seam: :func:`store_for` picks, once, where bytes come from and go to (see :mod:`.base`);
:mod:`.location` is the one place that tells an object URI from a path and spells it.

- an absolute local path or a ``file://`` URL: :class:`~.local.LocalStore` (pread, atomic renames, flock);
- ``s3://[conn_id@]bucket/key``: :class:`~.objectstore.S3Store` (extra ``[s3]``: ``s3fs`` and
  ``apache-airflow-providers-amazon``, whose ``s3`` file system reads the ``aws`` connection);
- ``gs://[conn_id@]bucket/key`` (or ``gcs://``): :class:`~.gcs.GcsStore` over gcsfs (extra ``[gcs]``).

Anything else (a relative path, which would be a different folder on every worker; ``http://``; a
URI with a password in it) is refused with a message naming it.
"""

from __future__ import annotations

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
    coalesce,
)
from airflow_resnet_prep.storage.local import LocalStore
from airflow_resnet_prep.storage.location import (
    Location,
    ObjectLocation,
    canonical_uri,
    display_uri,
    is_object_uri,
    parse_object_uri,
    resolve_location,
    shared_store,
    store_for,
)

__all__ = [
    "Assembly",
    "Lease",
    "LeaseHeldError",
    "LeaseLostError",
    "LocalStore",
    "Location",
    "Multipart",
    "MultipartUpload",
    "ObjectInfo",
    "ObjectLocation",
    "ObjectNotFoundError",
    "ObjectVersion",
    "Part",
    "PieceSink",
    "RequestStats",
    "StorageError",
    "Store",
    "UploadInfo",
    "canonical_uri",
    "coalesce",
    "display_uri",
    "is_object_uri",
    "parse_object_uri",
    "resolve_location",
    "shared_store",
    "store_for",
]
