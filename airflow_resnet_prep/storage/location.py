"""What a location is: one place that tells an object-store URI from a path and spells it.

``scheme://[conn_id@]bucket/key`` (``s3``, ``s3a``, ``gs``, ``gcs``) names an object or a prefix; the
``conn_id@`` part is the Airflow connection that reaches it (an id, never a secret). Its *canonical*
form carries the connection, so every later step and worker process reaches the same object the same
way; its *display* form leaves it out (for messages, XCom, fingerprints and the manifest). Anything
else is a local path.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from airflow_resnet_prep.storage.base import StorageError, Store
from airflow_resnet_prep.storage.local import LocalStore

OBJECT_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs"}


def is_object_uri(uri: str | os.PathLike[str]) -> bool:
    return urlsplit(str(uri).strip()).scheme.lower() in OBJECT_SCHEMES


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
    echoing it), no bucket, or a key with an empty, ``.`` or ``..`` segment (``pre//x``, ``pre/../x``); a
    trailing slash is no segment. Policy and stores share this parser, so they agree on every key."""
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
    # A key is compared by its text (a root "pre/" must not contain "pre/../secret"), and object stores
    # keep "." and ".." as names while paths resolve them: refuse such keys rather than guess.
    segments = parts.path.strip("/").split("/") if parts.path.strip("/") else []
    if any(s in ("", ".", "..") for s in segments):
        raise StorageError(
            f"{display_uri(text)}: an object key with an empty, '.' or '..' segment is ambiguous; spell the "
            "key without them"
        )
    return ObjectLocation(
        OBJECT_SCHEMES[scheme], (userinfo if at else "") or None, bucket, parts.path.strip("/")
    )


def canonical_uri(uri: str, conn_id: str | None = None) -> str:
    """``scheme://[conn_id@]bucket/key`` with the connection of the URI, else ``conn_id``; refuses a URI
    holding a password (without echoing it) or no bucket."""
    location = parse_object_uri(uri)
    if location is None:
        raise StorageError(f"{uri}: not an s3:// or gs:// URI")
    conn = location.conn_id or (conn_id or "").strip()
    key = f"/{location.key}" if location.key else ""
    return f"{location.protocol}://{conn + '@' if conn else ''}{location.bucket}{key}"


def display_uri(uri: str | os.PathLike[str]) -> str:
    """A path as is; an object URI without its ``conn_id@`` part (for messages, XCom and fingerprints)."""
    text = str(uri)
    if not is_object_uri(text):
        return text
    parts = urlsplit(text.strip())
    bucket = parts.netloc.rpartition("@")[2]
    return f"{OBJECT_SCHEMES[parts.scheme.lower()]}://{bucket}{parts.path.rstrip('/')}"


_SHARED: dict[tuple[str, int], Store] = {}
_SHARED_LOCK = threading.Lock()


def shared_store(uri: str | os.PathLike[str]) -> Store:
    """The store of a location, one per object URI and process; a local path made absolute.

    Image readers are made per unit, many per process: sharing the store keeps one client (and one set
    of request counters hooked to it) per process instead of a new one per unit. After ``fork`` the
    child makes its own (the key holds the PID)."""
    text = str(uri)
    if not is_object_uri(text):
        return store_for(os.path.abspath(os.path.expanduser(text)))
    key = (text, os.getpid())
    store = _SHARED.get(key)
    if store is None:
        with _SHARED_LOCK:
            store = _SHARED.get(key)
            if store is None:
                for stale in [k for k in _SHARED if k[1] != key[1]]:
                    del _SHARED[stale]  # a parent's, inherited through fork
                store = _SHARED[key] = store_for(text)
    return store


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
