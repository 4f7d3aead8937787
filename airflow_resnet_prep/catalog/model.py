"""The catalog: every image of a split, its class, and where its bytes are.

An image is read with one positioned read: from a tar (outer or nested) at the recorded offset, or
from a file below a source folder. Nothing is extracted to be read. A source in a bucket
(``s3://<conn_id>@bucket/key``) is read the same way through the storage seam, with ranged GETs; a
unit's images lying close together share one request (:meth:`ImageReader.iter_read`).
"""

from __future__ import annotations

import collections
import functools
import io
import itertools
import json
import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

from airflow_resnet_prep.errors import SourceError
from airflow_resnet_prep.fsutil import atomic_path
from airflow_resnet_prep.storage import ObjectNotFoundError, StorageError, Store

log = logging.getLogger(__name__)

CATALOG_VERSION = 1
TAR = "tar"
DIR = "dir"
# Requests in flight per reader when reading images from a bucket: at ~20-50 ms per request, enough to
# keep a stream of ~100 KB images at tens of MB/s per process.
READ_CONCURRENCY = 16


class ImageRef(NamedTuple):
    """One image. ``member`` is its path inside the source, for messages and for folder sources."""

    synset: str  # "" while a validation image has no class yet
    name: str  # base file name, e.g. n01440764_10026.JPEG
    src: int  # index into SplitCatalog.sources
    offset: int  # byte offset of the data inside a tar source; 0 for a folder source
    size: int
    member: str  # tar: "n01440764.tar/n01440764_10026.JPEG"; folder: "n01440764/n01440764_10026.JPEG"


class _Ref(Protocol):
    """What reading needs of an image: an ImageRef, or a converter's WorkItem."""

    @property
    def src(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def member(self) -> str: ...


_R = TypeVar("_R", bound=_Ref)


@dataclass(frozen=True)
class Source:
    kind: str  # TAR or DIR
    path: str  # absolute path of the tar file or the root folder, or its URI s3://<conn_id>@bucket/key

    @functools.cached_property
    def shown(self) -> str:
        """The path, or the bucket URI without its connection id: for messages."""
        from airflow_resnet_prep.storage import display_uri

        return display_uri(self.path)

    def describe(self, ref: ImageRef) -> str:
        return f"{self.shown}/{ref.member}" if self.kind == DIR else f"{self.shown}[{ref.member}]"


@dataclass
class SplitCatalog:
    split: str  # "train" or "val"
    sources: list[Source]
    images: list[ImageRef] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def synsets(self) -> list[str]:
        """The sorted distinct classes present (empty strings, i.e. unlabelled images, excluded)."""
        return sorted({ref.synset for ref in self.images if ref.synset})

    @property
    def labelled(self) -> bool:
        return all(ref.synset for ref in self.images)

    def where(self, ref: ImageRef) -> str:
        """A human-readable location of the image, for error messages."""
        return self.sources[ref.src].describe(ref)

    def class_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ref in self.images:
            counts[ref.synset] = counts.get(ref.synset, 0) + 1
        return dict(sorted(counts.items()))

    def total_bytes(self) -> int:
        return sum(ref.size for ref in self.images)

    # -- persistence: one TSV per split, a JSON header line first ------------------------------------
    def _lines(self) -> Iterator[str]:
        header = {
            "version": CATALOG_VERSION,
            "split": self.split,
            "sources": [{"kind": s.kind, "path": s.path} for s in self.sources],
            "images": len(self.images),
        }
        yield "# " + json.dumps(header, sort_keys=True) + "\n"
        for r in self.images:
            yield f"{r.synset}\t{r.name}\t{r.src}\t{r.offset}\t{r.size}\t{r.member}\n"

    def save(self, path: str | os.PathLike[str]) -> None:
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.writelines(self._lines())

    def save_to(self, store: Store, key: str) -> None:
        """Save under ``key`` of a data_dir's store (a local file streamed, an object in one PUT)."""
        local = store.local_path(key)
        if local is not None:
            Path(local).parent.mkdir(parents=True, exist_ok=True)
            self.save(local)
        else:
            store.write_bytes(key, "".join(self._lines()).encode("utf-8"))

    @classmethod
    def load_from(cls, store: Store, key: str) -> SplitCatalog:
        local = store.local_path(key)
        if local is not None:
            return cls.load(local)
        try:
            data = store.read_bytes(key)
        except FileNotFoundError:
            raise SourceError(f"{store.uri(key)}: catalog not found; run the fetch step first") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SourceError(f"{store.uri(key)}: damaged catalog ({exc}); rerun the fetch step") from None
        return cls._parse(io.StringIO(text, newline="\n"), store.uri(key))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SplitCatalog:
        try:
            fh = open(path, encoding="utf-8", newline="\n")  # noqa: SIM115 (closed by the with below)
        except FileNotFoundError:
            raise SourceError(f"{path}: catalog not found; run the fetch step first") from None
        with fh:
            return cls._parse(fh, str(path))

    @classmethod
    def _parse(cls, fh: Iterable[str], path: str) -> SplitCatalog:
        rerun = "rerun the fetch step to rebuild it"
        number = 1
        lines = iter(fh)
        try:
            first = next(lines, "")
            try:
                header = json.loads(first[2:]) if first.startswith("# ") else None
            except json.JSONDecodeError:
                header = None
            if not isinstance(header, dict) or header.get("version") != CATALOG_VERSION:
                raise SourceError(f"{path}: not a catalog of version {CATALOG_VERSION}; {rerun}")
            sources = [Source(s["kind"], s["path"]) for s in header["sources"]]
            split, count = header["split"], header["images"]
            images = []
            for number, line in enumerate(lines, start=2):  # noqa: B007 (number names the bad line below)
                synset, name, src, offset, size, member = line.rstrip("\n").split("\t")
                ref = ImageRef(synset, name, int(src), int(offset), int(size), member)
                if not (0 <= ref.src < len(sources) and ref.offset >= 0 and ref.size >= 0):
                    raise ValueError("source, offset or size out of range")
                images.append(ref)
        except SourceError:
            raise
        except (ValueError, KeyError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
            raise SourceError(f"{path}: damaged catalog (line {number}: {exc}); {rerun}") from None
        if len(images) != count:
            raise SourceError(f"{path}: holds {len(images)} images, its header says {count}; {rerun}")
        return cls(split=split, sources=sources, images=images)


class ImageReader:
    """Reads images' bytes through a catalog.

    Each source is reached through the storage seam (:func:`airflow_resnet_prep.sources.bucket.source_store`),
    chosen once per source: on a local disk, one ``pread`` per image from a tar kept open between reads
    (or one read of a file below a folder); in a bucket, ranged GETs. :meth:`iter_read` reads a whole
    unit's images in order: locally one by one, from a bucket with the images lying close together
    coalesced into large requests and several requests in flight.
    """

    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources
        self._fds: dict[int, int] = {}
        self._stores: dict[int, Store] = {}
        self._local: dict[int, bool] = {}
        self._baseline: dict[int, dict[str, Any]] = {}

    def store(self, src: int) -> Store:
        store = self._stores.get(src)
        if store is None:
            from airflow_resnet_prep.storage import shared_store

            store = self._stores[src] = shared_store(self.sources[src].path)
            self._baseline[src] = store.stats.snapshot()
        return store

    def _is_local(self, src: int) -> bool:
        local = self._local.get(src)
        if local is None:
            local = self._local[src] = self.store(src).local_path() is not None
        return local

    def stats(self) -> dict[str, Any]:
        """Requests and bytes sent to the buckets of this reader's sources since it first used them
        (the process's client is shared, so requests other threads sent meanwhile count too; local
        reads are not counted)."""
        requests = 0
        fetched = 0
        for src, store in self._stores.items():
            if store.local_path() is None:
                now, then = store.stats.snapshot(), self._baseline[src]
                requests += sum(now["requests"].values()) - sum(then["requests"].values())
                fetched += now["bytes_read"] - then["bytes_read"]
        return {"requests": requests, "bytes_read": fetched}

    def read(self, ref: ImageRef) -> bytes:
        source = self.sources[ref.src]
        if not self._is_local(ref.src):
            return self._read_remote(ref)
        if source.kind == DIR:
            path = os.path.join(source.path, ref.member)
            try:
                with open(path, "rb") as fh:
                    return fh.read()
            except OSError as exc:
                raise SourceError(f"{path}: cannot read image: {exc.strerror or exc}") from exc
        fd = self._fds.get(ref.src)
        if fd is None:
            try:
                fd = self._fds[ref.src] = os.open(source.path, os.O_RDONLY)
            except OSError as exc:
                raise SourceError(f"{source.path}: cannot open archive: {exc.strerror or exc}") from exc
        data = os.pread(fd, ref.size, ref.offset)
        if len(data) != ref.size:
            raise SourceError(
                f"{source.describe(ref)}: archive is shorter than its index says "
                f"(wanted {ref.size} bytes at offset {ref.offset}, got {len(data)}); was it truncated or replaced?"
            )
        return data

    def _read_remote(self, ref: _Ref) -> bytes:
        source = self.sources[ref.src]
        store = self.store(ref.src)
        try:
            if source.kind == DIR:
                return store.read_range(ref.member, 0, ref.size) if ref.size else store.read_bytes(ref.member)
            return store.read_range("", ref.offset, ref.size)
        except ObjectNotFoundError:
            what = "image" if source.kind == DIR else "archive"
            raise SourceError(
                f"{source.describe(ref)}: cannot read image: the {what} object is gone"
            ) from None
        except (StorageError, OSError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise SourceError(f"{source.describe(ref)}: cannot read image: {reason}") from exc

    def iter_read(self, refs: Iterable[_R]) -> Iterator[tuple[_R, bytes]]:
        """``(ref, bytes)`` for every ref, in the order given; a ref that cannot be read raises
        :class:`SourceError` naming it, after the refs before it were yielded (as :meth:`read` one by
        one would). Close the iterator (``contextlib.closing``) when stopping early: it may have
        requests in flight."""
        refs = list(refs)
        start = 0
        while start < len(refs):
            src = refs[start].src
            end = start
            while end < len(refs) and refs[end].src == src:
                end += 1
            run = refs[start:end]
            if self._is_local(src):
                for ref in run:
                    yield ref, self.read(ref)
            elif self.sources[src].kind == TAR:
                yield from self._iter_ranges(src, run)
            else:
                yield from self._iter_objects(src, run)
            start = end

    def _iter_ranges(self, src: int, run: list[_R]) -> Iterator[tuple[_R, bytes]]:
        """One tar in a bucket: the store coalesces close ranges into large requests, several in flight."""
        done = 0
        try:
            for data in self.store(src).iter_ranges(
                "", [(r.offset, r.size) for r in run], concurrency=READ_CONCURRENCY
            ):
                yield run[done], data
                done += 1
        except (StorageError, OSError) as exc:
            # A coalesced request serves many images: read the rest one by one, so that the image that
            # cannot be read is the one named (and a transient failure costs only a slower unit).
            log.warning(
                "%s: a coalesced read failed (%s); reading image by image", self.sources[src].path, exc
            )
            for ref in run[done:]:
                yield ref, self._read_remote(ref)

    def _iter_objects(self, src: int, run: list[_R]) -> Iterator[tuple[_R, bytes]]:
        """A folder prefix in a bucket: one GET per image object, ``READ_CONCURRENCY`` in flight."""
        pending: collections.deque[tuple[_R, Future[bytes]]] = collections.deque()
        items = iter(run)
        with ThreadPoolExecutor(READ_CONCURRENCY, thread_name_prefix="image-read") as pool:
            try:
                for ref in itertools.islice(items, 2 * READ_CONCURRENCY):
                    pending.append((ref, pool.submit(self._read_remote, ref)))
                while pending:
                    ref, future = pending.popleft()
                    following = next(items, None)
                    if following is not None:
                        pending.append((following, pool.submit(self._read_remote, following)))
                    yield ref, future.result()
            finally:
                for _, future in pending:
                    future.cancel()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        # Object stores are shared by the process's readers (see shared_store): not closed here.
        self._stores.clear()
        self._local.clear()
        self._baseline.clear()

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def export_connections(sources: Iterable[Source]) -> None:
    """Put the Airflow connections the sources need into this process's environment, so that worker
    processes started from here reach the bucket on their own (:meth:`Store.connection_env`): a forked
    worker must not ask the task's supervisor, a spawned one cannot. A no-op for local sources."""
    from airflow_resnet_prep.sources.bucket import source_store
    from airflow_resnet_prep.storage import is_object_uri

    for source in sources:
        if not is_object_uri(source.path):
            continue
        store = source_store(source.path)
        if not store.conn_id or f"AIRFLOW_CONN_{store.conn_id.upper()}" in os.environ:
            continue
        try:
            os.environ.update(store.connection_env())
        except Exception as exc:  # reported where it matters: the first read names the URI and connection
            log.warning(
                "%s: cannot pass the connection %r to worker processes (%s)",
                source.shown,
                store.conn_id,
                type(exc).__name__,
            )
