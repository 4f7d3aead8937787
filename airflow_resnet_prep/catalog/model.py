"""The catalog: every image of a split, its class, and where its bytes are.

An image is read with one positioned read: from a tar (outer or nested) at the recorded offset, or
from a file below a source folder. Nothing is extracted to be read. A source in a bucket
(``s3://<conn_id>@bucket/key``) is read the same way through the storage seam, with ranged GETs; a
unit's images lying close together share one request (:meth:`ImageReader.iter_read`).
"""

from __future__ import annotations

import functools
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

from airflow_resnet_prep.catalog.members import (
    COPY_KINDS,
    ZIP,
    StreamedReads,
    iter_zip_members,
    read_copy_member,
)
from airflow_resnet_prep.errors import SourceError, reason
from airflow_resnet_prep.storage import ObjectNotFoundError, StorageError, Store, display_uri, shared_store

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
        return display_uri(self.path)

    def describe(self, ref: ImageRef) -> str:
        return f"{self.shown}/{ref.member}" if self.kind == DIR else f"{self.shown}[{ref.member}]"


@dataclass
class SplitCatalog:
    split: str  # "train" or "val"
    sources: list[Source]
    images: list[ImageRef] = field(default_factory=list)
    layout: str = "official"  # which copy the source is (catalog/copies.py)
    labels: str = ""  # where a copy's validation classes came from; "" when the labels file gives them

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
        if self.layout != "official":
            header.update(layout=self.layout, labels=self.labels)
        yield "# " + json.dumps(header, sort_keys=True) + "\n"
        for r in self.images:
            yield f"{r.synset}\t{r.name}\t{r.src}\t{r.offset}\t{r.size}\t{r.member}\n"

    def save(self, store: Store, key: str) -> None:
        """Write the catalog under ``key`` of ``store`` (streamed; the key appears only when whole)."""
        with store.writer(key) as fh:
            fh.writelines(line.encode("utf-8") for line in self._lines())

    @classmethod
    def load(cls, store: Store, key: str) -> SplitCatalog:
        try:
            raw = store.open_read(key, block_size=1 << 20)
        except FileNotFoundError:
            raise SourceError(f"{store.uri(key)}: catalog not found; run the fetch step first") from None
        with io.TextIOWrapper(raw, encoding="utf-8", newline="\n") as fh:  # type: ignore[arg-type]
            return cls._parse(fh, store.uri(key))

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
        layout, labels = header.get("layout", "official"), header.get("labels", "")
        return cls(split=split, sources=sources, images=images, layout=layout, labels=labels)


class ImageReader:
    """Reads images' bytes through a catalog.

    Each source is reached through the storage seam (:func:`airflow_resnet_prep.storage.shared_store`),
    chosen once per source: a positioned read per image from a tar, or one read of a file (object) below
    a folder. :meth:`iter_read` reads a whole unit's images in order; the store decides how (on a local
    disk one read after the other; in a bucket the images lying close together coalesced into large
    requests, and several requests in flight).
    """

    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources
        self._stores: dict[int, Store] = {}
        self._baseline: dict[int, dict[str, Any]] = {}

    def store(self, src: int) -> Store:
        store = self._stores.get(src)
        if store is None:
            store = self._stores[src] = shared_store(self.sources[src].path)
            self._baseline[src] = store.stats.snapshot()
        return store

    def stats(self) -> dict[str, Any]:
        """Requests and bytes sent to the buckets of this reader's sources since it first used them
        (the process's client is shared, so requests other threads sent meanwhile count too; reads
        from a local disk are not requests and not counted)."""
        requests = 0
        fetched = 0
        for src, store in self._stores.items():
            if store.requests_are_costly:
                now, then = store.stats.snapshot(), self._baseline[src]
                requests += sum(now["requests"].values()) - sum(then["requests"].values())
                fetched += now["bytes_read"] - then["bytes_read"]
        return {"requests": requests, "bytes_read": fetched}

    def read(self, ref: _Ref) -> bytes:
        source = self.sources[ref.src]
        store = self.store(ref.src)
        try:
            if source.kind == DIR:
                return store.read_bytes(ref.member)
            if source.kind in COPY_KINDS:
                return read_copy_member(store, source, ref)
            return store.read_range("", ref.offset, ref.size)
        except ObjectNotFoundError:
            what = "image" if source.kind == DIR else "archive"
            raise SourceError(f"{source.describe(ref)}: cannot read image: the {what} is gone") from None
        except (StorageError, OSError) as exc:
            raise SourceError(f"{source.describe(ref)}: cannot read image: {reason(exc)}") from exc

    def iter_read(self, refs: Iterable[_R]) -> Iterator[tuple[_R, bytes]]:
        """``(ref, bytes)`` for every ref, in the order given; a ref that cannot be read raises
        :class:`SourceError` naming it, after the refs before it were yielded (as :meth:`read` one by
        one would). Close the iterator (``contextlib.closing``) when stopping early: it may have
        requests in flight."""
        refs = list(refs)
        # Images of a compressed stream are read first, one pass per stream (they interleave with others).
        with StreamedReads(self, refs) as streamed:
            start = 0
            while start < len(refs):
                src = refs[start].src
                end = start
                while end < len(refs) and refs[end].src == src:
                    end += 1
                if src in streamed:
                    yield from streamed.run(start, end)
                else:
                    yield from self._iter_run(src, refs[start:end])
                start = end

    def _iter_run(self, src: int, run: list[_R]) -> Iterator[tuple[_R, bytes]]:
        """The images of one source: ranges of a tar, or objects of a folder, as the store reads best."""
        store, source = self.store(src), self.sources[src]
        if source.kind == TAR:
            pieces = store.iter_ranges("", [(r.offset, r.size) for r in run], concurrency=READ_CONCURRENCY)
        elif source.kind == ZIP:
            pieces = iter_zip_members(store, source, run, READ_CONCURRENCY)
        else:
            pieces = store.iter_objects((r.member for r in run), concurrency=READ_CONCURRENCY)
        done = 0
        try:
            for data in pieces:
                yield run[done], data
                done += 1
        except (StorageError, OSError) as exc:
            # A coalesced request serves many images: read the rest one by one, so that the image that
            # cannot be read is the one named (and a transient failure costs only a slower unit).
            if store.requests_are_costly:
                log.warning("%s: a batched read failed (%s); reading image by image", source.shown, exc)
            for ref in run[done:]:
                yield ref, self.read(ref)
        finally:
            pieces.close()

    def close(self) -> None:
        for store in self._stores.values():
            store.close()  # open files; a bucket's client stays for the process's other readers
        self._stores.clear()
        self._baseline.clear()

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def export_connections(sources: Iterable[Source]) -> None:
    """Put the Airflow connections the sources need into this process's environment, so that worker
    processes started from here reach the bucket on their own (:meth:`Store.connection_env`): a forked
    worker must not ask the task's supervisor, a spawned one cannot. A no-op for local sources."""
    for source in sources:
        store = shared_store(source.path)
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
