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


@dataclass(frozen=True)
class Location:
    """Where a text points, parsed once by :func:`resolve_location`: an object or prefix in a bucket
    (``obj``, with the connection that reaches it) or an absolute local path (``path``)."""

    obj: ObjectLocation | None = None
    path: str | None = None

    @property
    def address(self) -> str:
        """How to name it again, in another step or process: ``scheme://[conn_id@]bucket/key`` (the
        connection id, never a secret) or the absolute path."""
        if self.obj is None:
            return str(self.path)
        obj = self.obj
        return f"{obj.protocol}://{obj.conn_id + '@' if obj.conn_id else ''}{obj.bucket}{'/' + obj.key if obj.key else ''}"

    def store(self) -> Store:
        """A new store rooted here (see :func:`shared_store` for one per process)."""
        if self.obj is None:
            return LocalStore(str(self.path))
        obj = self.obj
        if obj.protocol == "s3":
            from airflow_resnet_prep.storage.objectstore import S3Store

            return S3Store("s3", obj.bucket, obj.key, obj.conn_id)
        from airflow_resnet_prep.storage.gcs import GcsStore

        return GcsStore("gs", obj.bucket, obj.key, obj.conn_id)


def resolve_location(
    text: str | os.PathLike[str], conn_id: str | None = None, *, cwd: str | os.PathLike[str] | None = None
) -> Location:
    """The one reading of a location: an ``s3://``/``gs://`` URI (its own ``conn_id@``, else ``conn_id``),
    a ``file://`` URL (its path) or a local path.

    The rule for a relative path: it means the folder it was typed in, so it is taken relative to
    ``cwd`` when the caller says there is one (a command typed in a shell, a source read by the very
    task that names it and recorded absolute); without ``cwd`` it is refused, since each worker has its
    own current folder. Refuses an empty text, an unsupported scheme and what :func:`parse_object_uri`
    refuses, with a :class:`StorageError` naming the text (never a secret)."""
    text = str(text).strip()
    if not text:
        raise StorageError("empty path: give an absolute local path or an s3:// or gs:// URI")
    obj = parse_object_uri(text)
    if obj is not None:
        conn = obj.conn_id or (conn_id or "").strip() or None
        return Location(obj=ObjectLocation(obj.protocol, conn, obj.bucket, obj.key))
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "file":
        text = unquote(parts.path)
    elif scheme and len(scheme) > 1:  # "c:" would be a Windows drive, never seen here
        raise StorageError(
            f"{text!r}: unsupported URI; give an absolute local path or an s3:// or gs:// URI (unsupported "
            f"scheme {scheme!r})"
        )
    path = os.path.expanduser(text)
    if not os.path.isabs(path):
        if cwd is None:
            raise StorageError(
                f"{text!r} is a relative path: give an absolute path (a relative one means a different "
                "folder on every worker) or an s3:// or gs:// URI"
            )
        path = os.path.join(cwd, path)
    return Location(path=os.path.normpath(path))


def canonical_uri(uri: str, conn_id: str | None = None) -> str:
    """``scheme://[conn_id@]bucket/key`` with the connection of the URI, else ``conn_id``; refuses a URI
    holding a password (without echoing it) or no bucket."""
    if not is_object_uri(uri):
        raise StorageError(f"{uri}: not an s3:// or gs:// URI")
    return resolve_location(uri, conn_id).address


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


def shared_store(uri: str | os.PathLike[str] | Location) -> Store:
    """The store of a location, one per object location and process; a relative local path is taken
    from the current folder (see :func:`resolve_location`; a :class:`Location` is not parsed again).

    Image readers are made per unit, many per process: sharing the store keeps one client (and one set
    of request counters hooked to it) per process instead of a new one per unit. After ``fork`` the
    child makes its own (the key holds the PID)."""
    if isinstance(uri, Location):
        location = uri
    elif is_object_uri(uri):
        location = resolve_location(uri)
    else:
        return resolve_location(uri, cwd=os.getcwd()).store()
    if location.obj is None:
        return location.store()
    key = (location.address, os.getpid())
    store = _SHARED.get(key)
    if store is None:
        with _SHARED_LOCK:
            store = _SHARED.get(key)
            if store is None:
                for stale in [k for k in _SHARED if k[1] != key[1]]:
                    del _SHARED[stale]  # a parent's, inherited through fork
                store = _SHARED[key] = location.store()
    return store


def store_for(uri: str | os.PathLike[str], conn_id: str | None = None) -> Store:
    """The store rooted at ``uri`` (see :func:`resolve_location`; a relative path is refused). ``conn_id``
    is the Airflow connection for a URI that names none (``s3://conn@bucket/...`` wins over it)."""
    return resolve_location(uri, conn_id).store()
