"""The catalog: every image of a split, its class, and where its bytes are.

An image is read with one positioned read: from a tar (outer or nested) at the recorded offset, or
from a file below a source folder. Nothing is extracted to be read. A source in a bucket
(``s3://<conn_id>@bucket/key``) is read the same way through the storage seam, with ranged GETs; a
unit's images lying close together share one request (:meth:`ImageReader.iter_read`).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import gc
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, BinaryIO, NamedTuple, NoReturn, Protocol, TypeVar

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


_SYNSET = itemgetter(0)  # an ImageRef's class, for the loops over a whole catalog


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
    #: SHA-256 of the file the catalog was loaded from (a plan's identity); "" when made in memory
    sha256: str = field(default="", compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def synsets(self) -> list[str]:
        """The sorted distinct classes present (empty strings, i.e. unlabelled images, excluded)."""
        return sorted(set(map(_SYNSET, self.images)) - {""})

    @property
    def labelled(self) -> bool:
        return all(map(_SYNSET, self.images))

    def where(self, ref: ImageRef) -> str:
        """A human-readable location of the image, for error messages."""
        return self.sources[ref.src].describe(ref)

    def class_counts(self) -> dict[str, int]:
        return dict(sorted(collections.Counter(map(_SYNSET, self.images)).items()))

    def total_bytes(self) -> int:
        return sum(map(itemgetter(4), self.images))

    # -- persistence: one TSV per split, a JSON header line first ------------------------------------
    def _header_line(self) -> str:
        header = {
            "version": CATALOG_VERSION,
            "split": self.split,
            "sources": [{"kind": s.kind, "path": s.path} for s in self.sources],
            "images": len(self.images),
        }
        if self.layout != "official":
            header.update(layout=self.layout, labels=self.labels)
        return "# " + json.dumps(header, sort_keys=True) + "\n"

    def save(self, store: Store, key: str) -> None:
        """Write the catalog under ``key`` of ``store`` (streamed; the key appears only when whole)."""
        images = self.images
        with store.writer(key) as fh:
            fh.write(self._header_line().encode("utf-8"))
            # An ImageRef is a tuple: the line format applies to it whole, with no Python call per image.
            for start in range(0, len(images), _SAVE_LINES):
                chunk = images[start : start + _SAVE_LINES]
                fh.write("".join(map(_LINE.__mod__, chunk)).encode("utf-8"))

    @classmethod
    def load(cls, store: Store, key: str) -> SplitCatalog:
        """The catalog saved under ``key``; its :attr:`sha256` is that of the file's bytes."""
        with _open(store, key) as raw, gc_paused():
            return cls._parse(raw, store.uri(key))

    @classmethod
    def load_classes(cls, store: Store, key: str) -> list[str]:
        """What ``load(store, key).synsets`` gives, read as :meth:`load_class_counts` reads."""
        return sorted(set(cls.load_class_counts(store, key)) - {""})

    @classmethod
    def load_class_counts(cls, store: Store, key: str) -> dict[str, int]:
        """What ``load(store, key).class_counts()`` gives, without making an ImageRef per image (relabel
        needs the training classes only, the manifest the counts): the first field of every line, the
        rest of a line unchecked (the plan loads the catalog whole). A catalog whose lines do not all
        start with a class field, or that holds fewer or more lines than its header says, is loaded
        whole, for load's message."""
        with _open(store, key) as raw:
            chunks = _line_chunks(raw, None)
            head = _header(chunks, store.uri(key))
            counts: collections.Counter[str] = collections.Counter()
            images, whole = 0, True
            try:
                for chunk in itertools.chain([head.rest], chunks):
                    lines = chunk.decode("utf-8").split("\n")
                    lines.pop()  # what follows the last line break: nothing
                    fields = list(map(str.partition, lines, itertools.repeat("\t")))  # (class, tab, rest)
                    whole = whole and all(map(itemgetter(1), fields))
                    counts.update(map(_SYNSET, fields))
                    images += len(lines)
            except UnicodeDecodeError:
                whole = False
        if not whole or images != head.count:
            return cls.load(store, key).class_counts()
        return dict(sorted(counts.items()))

    @classmethod
    def _parse(cls, fh: BinaryIO, path: str) -> SplitCatalog:
        digest = hashlib.sha256()
        chunks = _line_chunks(fh, digest)
        head = _header(chunks, path)
        images: list[ImageRef] = []
        synsets: dict[str, str] = {}  # one string per class, shared by its images
        for chunk in itertools.chain([head.rest], chunks):
            try:
                _parse_lines(chunk, len(head.sources), synsets, images)
            except _BadLine as exc:
                raise SourceError(f"{path}: damaged catalog (line {exc.number}: {exc}); {_RERUN}") from None
        if len(images) != head.count:
            raise SourceError(f"{path}: holds {len(images)} images, its header says {head.count}; {_RERUN}")
        layout, labels = head.fields.get("layout", "official"), head.fields.get("labels", "")
        catalog = cls(split=head.split, sources=head.sources, images=images, layout=layout, labels=labels)
        catalog.sha256 = digest.hexdigest()
        return catalog


# The catalog's line: synset, name, source index, offset, size, member (ImageRef's fields, in order).
_LINE = "%s\t%s\t%s\t%s\t%s\t%s\n"
_FIELDS = len(ImageRef._fields)
_SAVE_LINES = 8192  # lines joined per write: about a MB at a time (as fast as more, a tenth of the memory)
_READ_BLOCK = 4 << 20  # bytes asked of a bucket at a time (a request each)
# Bytes parsed at a time: a block's lists of fields cost about 20 times its size while alive (parsed
# 4 MiB at a time, the plan's peak RSS was 12 MB higher, and no faster).
_LOAD_BLOCK = 128 << 10
_RERUN = "rerun the fetch step to rebuild it"


class _BadLine(ValueError):
    def __init__(self, number: int, problem: str) -> None:
        super().__init__(problem)
        self.number = number


class _Header(NamedTuple):
    fields: dict[str, Any]  # as saved
    sources: list[Source]
    split: str
    count: int  # images
    rest: bytes  # what follows the header line in the first chunk


def _open(store: Store, key: str) -> BinaryIO:
    try:
        # From a bucket, few large requests; from a disk, no buffer larger than what is parsed at once.
        block = _READ_BLOCK if store.requests_are_costly else _LOAD_BLOCK
        return store.open_read(key, block_size=block)  # type: ignore[return-value]
    except FileNotFoundError:
        raise SourceError(f"{store.uri(key)}: catalog not found; run the fetch step first") from None


def _header(chunks: Iterator[bytes], path: str) -> _Header:
    """The header of a catalog read as ``chunks`` (:func:`_line_chunks`)."""
    first = next(chunks, b"")
    end = first.find(b"\n") + 1 or len(first)
    try:
        text = first[:end].decode("utf-8")
        header = json.loads(text[2:]) if text.startswith("# ") else None
    except ValueError:  # not UTF-8, or not JSON
        header = None
    if not isinstance(header, dict) or header.get("version") != CATALOG_VERSION:
        raise SourceError(f"{path}: not a catalog of version {CATALOG_VERSION}; {_RERUN}")
    try:
        sources = [Source(s["kind"], s["path"]) for s in header["sources"]]
        return _Header(header, sources, header["split"], header["images"], first[end:])
    except (KeyError, TypeError) as exc:
        raise SourceError(f"{path}: damaged catalog (line 1: {exc}); {_RERUN}") from None


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a catalog or plan is built in bulk: it holds no cycles,
    but every few hundred new tuples would make the collector walk all of them again (half the time of
    loading a catalog of a million images)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _line_chunks(fh: BinaryIO, digest: Any | None) -> Iterator[bytes]:
    """The file's bytes in pieces of whole lines (the last one as it ends), fed to ``digest`` as read."""
    pending = b""
    while block := fh.read(_LOAD_BLOCK):
        if digest is not None:
            digest.update(block)
        pending += block
        cut = pending.rfind(b"\n") + 1
        if cut:
            yield pending[:cut]
            pending = pending[cut:]
    if pending:
        yield pending + b"\n"


def _parse_lines(chunk: bytes, sources: int, synsets: dict[str, str], images: list[ImageRef]) -> None:
    """Append the images of ``chunk`` (whole lines) to ``images``, a column at a time. Anything amiss
    is raised as :class:`_BadLine` naming the first bad line, found by :func:`_first_bad_line`."""
    before = len(images)
    try:
        text = chunk.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadLine(_line_number(images, chunk.count(b"\n", 0, exc.start)), str(exc)) from None
    lines = text.split("\n")
    lines.pop()  # what follows the last line break: nothing
    if not lines:
        return
    if set(map(str.count, lines, itertools.repeat("\t"))) != {_FIELDS - 1}:
        _first_bad_line(lines, sources, before)
    fields = "\t".join(lines).split("\t")
    try:
        offsets, sizes = (list(map(int, fields[i::_FIELDS])) for i in (3, 4))
        texts = fields[2::_FIELDS]  # a few distinct source numbers: each read once
        srcs = list(map({text: int(text) for text in set(texts)}.__getitem__, texts))
    except ValueError:
        _first_bad_line(lines, sources, before)
    if min(srcs) < 0 or max(srcs) >= sources or min(offsets) < 0 or min(sizes) < 0:
        _first_bad_line(lines, sources, before)
    classes = fields[0::_FIELDS]
    images.extend(
        map(
            tuple.__new__,
            itertools.repeat(ImageRef),
            zip(
                map(synsets.setdefault, classes, classes),
                fields[1::_FIELDS],
                srcs,
                offsets,
                sizes,
                fields[5::_FIELDS],
                strict=True,
            ),
        )
    )


def _line_number(images: list[ImageRef], index: int) -> int:
    return 2 + len(images) + index  # line 1 is the header


def _first_bad_line(lines: list[str], sources: int, before: int) -> NoReturn:
    """Raise :class:`_BadLine` for the first of ``lines`` that does not hold a valid image."""
    for index, line in enumerate(lines):
        number = 2 + before + index
        try:
            _synset, _name, src, offset, size, _member = line.split("\t")
            if not (0 <= int(src) < sources and int(offset) >= 0 and int(size) >= 0):
                raise ValueError("source, offset or size out of range")
        except ValueError as exc:
            raise _BadLine(number, str(exc)) from None
    raise AssertionError("no bad line among lines found bad")


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


def connection_env(sources: Iterable[Source]) -> dict[str, str]:
    """What a worker process needs in its environment to reach the sources in a bucket
    (:meth:`Store.connection_env`): a forked worker must not ask the task's supervisor for a
    connection, a spawned one cannot. Empty for local sources."""
    env: dict[str, str] = {}
    for source in sources:
        store = shared_store(source.path)
        try:
            env.update(store.connection_env())
        except Exception as exc:  # reported where it matters: the first read names the URI and connection
            log.warning(
                "%s: cannot pass the connection %r to worker processes (%s)",
                source.shown,
                store.conn_id,
                type(exc).__name__,
            )
    return env


def export_connections(sources: Iterable[Source]) -> None:
    """Put :func:`connection_env` of the sources into this process's environment, for the worker
    processes started from here; a connection already there is kept."""
    for key, value in connection_env(sources).items():
        os.environ.setdefault(key, value)
