"""Where everything lives under ``data_dir`` (docs/formats.md, Layout under data_dir). One place, so no step guesses another's paths.

``data_dir`` is an absolute local path or an object-store prefix (``s3://[conn_id@]bucket/prefix``,
``gs://...``, docs/object-storage.md). Either way it holds the same layout, addressed by *keys* relative to its root
(``"catalog/train.tsv"``) and read and written through its :class:`~airflow_resnet_prep.storage.Store`,
so no step branches on where the data_dir is. The ``Path`` properties (``catalog_file`` ...) are the
local view, for the one-machine fast paths and for tests: on an object store they raise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from airflow_resnet_prep.errors import OutputConflictError, PrepError
from airflow_resnet_prep.storage import (
    LeaseHeldError,
    LocalStore,
    StorageError,
    Store,
    resolve_location,
    shared_store,
)
from airflow_resnet_prep.storage.base import check_key

log = logging.getLogger(__name__)

DOWNLOADS = "downloads"
INFLATED = (
    "downloads/inflated"  # fetch's plain-tar working copies of compressed sources (catalog/inflated.py)
)
CATALOG = "catalog"
FETCH_RECORD = "catalog/fetch.json"  # written last by fetch: the source fingerprints of the catalogs
RELABEL_RECORD = "catalog/relabel.json"
TFRECORDS = "tfrecords"
RECORDIO = "recordio"
WEBDATASET = "webdataset"
WORK = "work"  # plans and finished units of conversions in progress
MANIFEST = "manifest.json"
LOCK = ".lock"
# An object-store lease of a holder that died elsewhere (a lost pod) blocks its data_dir or unit this long;
# one that died on this machine is taken over at once. Renewed every third of it while held.
LEASE_TTL_S = 120.0


def catalog_key(split: str) -> str:
    return f"{CATALOG}/{split}.tsv"


def work_key(implementation: str) -> str:
    return f"{WORK}/{implementation}"


def _local(key: str) -> property:
    """A property of :class:`DataDir`: the local path of ``key`` (see :meth:`DataDir.path`)."""
    return property(lambda data_dir: data_dir.path(key), doc=f"The local path of {key or 'the data_dir'!r}.")


@dataclass(frozen=True)
class DataDir:
    store: Store
    #: how to name it again in another process: the path, or the URI with its ``conn_id@`` (never a secret)
    address: str
    #: the folder on this machine's disk, or None for a data_dir in object storage: known once, here, for
    #: what only a disk can hold (an extracted copy, downloads every later step reads)
    disk: Path | None = None

    @classmethod
    def of(
        cls, data_dir: str | os.PathLike[str], conn_id: str | None = None, *, cwd: str | None = None
    ) -> DataDir:
        """The data_dir at a local path or object-store URI (read by
        :func:`~airflow_resnet_prep.storage.resolve_location`); ``conn_id`` is the Airflow connection for
        a URI that names none. Refuses what would mean a different place on every worker: a relative
        path, unless ``cwd`` says where it was typed (a command in a shell)."""
        text = str(data_dir).strip()
        if not text:
            # An empty param would otherwise mean the worker's current folder.
            raise PrepError("data_dir is empty: set the data_dir param (or MLPERF_RESNET_PREP_DATA_DIR)")
        try:
            location = resolve_location(text, conn_id, cwd=cwd)
        except StorageError as exc:
            raise PrepError(f"data_dir {exc}") from None
        if location.path is None:
            return cls(shared_store(location), location.address)
        path = Path(location.path).resolve()
        return cls(LocalStore(path), str(path), path)

    @classmethod
    def at(cls, data_dir: DataDir | str | os.PathLike[str], conn_id: str | None = None) -> DataDir:
        """``data_dir`` itself when it is parsed already (what a caller hands down), else :meth:`of`."""
        return data_dir if isinstance(data_dir, DataDir) else cls.of(data_dir, conn_id)

    # -- where ---------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The data_dir for messages, XCom and the manifest: a path, or a URI without its connection."""
        return self.store.url

    def uri(self, key: str = "") -> str:
        return self.store.uri(key)

    def path(self, key: str = "") -> Path:
        """The local path of ``key``; only for a data_dir on a disk (the one-machine fast paths)."""
        if self.disk is None:
            raise PrepError(f"{self.uri(key)}: needs a local data_dir (this one is in object storage)")
        key = check_key(key)
        return self.disk / key if key else self.disk

    # -- records: small JSON and text objects ---------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.store.exists(key)

    def read_json(self, key: str) -> Any | None:
        """The JSON record under ``key``, or None when absent or unreadable (every record can be rebuilt:
        a damaged one is logged and treated as missing)."""
        try:
            data = self.store.read_bytes(key)
        except FileNotFoundError:
            return None
        try:
            return json.loads(data)
        except ValueError as exc:
            log.warning("%s: unreadable (%s); ignoring it", self.uri(key), exc)
            return None

    def write_json(self, key: str, obj: Any, *, indent: int | None = 2) -> None:
        """``obj`` as JSON, indented for people to read; ``indent=None`` for records only the tool reads
        (``json`` encodes those in C: indented, it falls back to Python, ~10x slower on long lists)."""
        self.store.write_bytes(key, (json.dumps(obj, indent=indent, sort_keys=True) + "\n").encode())

    def write_text(self, key: str, text: str) -> None:
        self.store.write_bytes(key, text.encode("utf-8"))

    def delete(self, key: str) -> None:
        self.store.delete(key)

    def delete_tree(self, key: str) -> None:
        """Remove ``key`` and everything below it."""
        self.store.delete_tree(key)

    def discard_partial(self, key: str) -> int:
        """Free what killed writers left of outputs below (or at) ``key``: temporary files on a local
        disk, open multipart uploads in a bucket. Only when no writer of them can be alive."""
        return self.store.discard_partial(key)

    # -- coordination --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def hold(self, key: str = LOCK, wait_s: float = 0.0, transient: bool = False) -> Iterator[None]:
        """Hold the lease on ``key`` (the data_dir's lock by default) for the block, waiting up to
        ``wait_s`` seconds for another holder; then fail naming the holder. On a disk an ``flock`` (dies
        with its process); in a bucket a lease object written with a conditional PUT and renewed while
        held (a killed holder's lease expires after its time to live). ``transient``: nothing of the
        lease stays after the block (a unit's lock, useless once its done record is written; never the
        data_dir's lock, whose file a waiting run may have open)."""
        lease = self.store.lease(key, f"pid {os.getpid()} on {socket.gethostname()}", ttl_s=LEASE_TTL_S)
        deadline = time.monotonic() + wait_s
        with contextlib.ExitStack() as held:
            while True:
                try:
                    held.enter_context(lease)  # renewed in the background while held
                    break
                except LeaseHeldError as exc:
                    if time.monotonic() >= deadline:
                        raise OutputConflictError(str(exc)) from None
                    time.sleep(lease.poll_s)
            yield
        if transient:
            lease.discard()

    @property
    def local_downloads(self) -> Path:
        """Where this machine keeps downloaded files: ``downloads/`` of a local data_dir; for one in object
        storage, a folder of the local temporary directory (scratch: only what one step uses, such as
        the labels file, is downloaded there)."""
        if self.disk is not None:
            return self.downloads
        digest = hashlib.sha256(self.address.encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / "airflow-resnet-prep" / digest / DOWNLOADS

    # -- the local view: the local path of each place of the layout (only for a data_dir on a disk) ----------
    root = _local("")
    downloads = _local(DOWNLOADS)
    catalog = _local(CATALOG)
    fetch_record = _local(FETCH_RECORD)
    relabel_record = _local(RELABEL_RECORD)
    tfrecords = _local(TFRECORDS)
    recordio = _local(RECORDIO)
    work = _local(WORK)
    manifest = _local(MANIFEST)
    lock = _local(LOCK)

    def catalog_file(self, split: str) -> Path:
        return self.path(catalog_key(split))

    def raw(self, split: str) -> Path:
        return self.path(f"raw/{split}")

    def ensure(self) -> DataDir:
        if self.disk is not None:
            for folder in (self.root, self.downloads, self.catalog):
                folder.mkdir(parents=True, exist_ok=True)
        return self
