"""Build a split's catalog from any accepted source: a tar (nested or flat) or a folder.

Accepted layouts (docs/formats.md, Inputs):
- train tar: one tar per class (``n01440764.tar`` holding ``n01440764_10026.JPEG``), or members ``<synset>/<image>``;
- val tar: flat ``ILSVRC2012_val_%08d.JPEG`` (classes come later from the labels file), or ``<synset>/<image>``;
- a folder laid out as ``<synset>/<image>``, or (val only) a flat folder of images.

Only files with an image extension im2rec also lists (``.jpeg``, ``.jpg``, ``.png``, any case) are
images; other files are counted and logged, not read. Images are ordered by class, then name, so
the catalog does not depend on the order inside an archive or of a directory listing.
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import os
import posixpath
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from airflow_resnet_prep.catalog.copies import OFFICIAL, index_copy
from airflow_resnet_prep.catalog.inflated import WorkingCopies
from airflow_resnet_prep.catalog.model import DIR, TAR, ImageRef, Source, SplitCatalog, gc_paused
from airflow_resnet_prep.errors import SourceError, UnsafeArchiveError
from airflow_resnet_prep.progress import Progress
from airflow_resnet_prep.sources.bucket import source_store
from airflow_resnet_prep.sources.tarindex import iter_tar
from airflow_resnet_prep.storage import ObjectNotFoundError, StorageError, Store
from airflow_resnet_prep.storage.rangefile import RangeFile

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
# Nested tars of an archive in a bucket indexed at once (each a chain of 512-byte header requests); past
# ~32 the client's CPU per request (signing, parsing: ~0.5 ms) is the limit, not the latency.
INDEX_CONCURRENCY = 32


# What _check_plain_name accepts (its fast path): no separator, tab or line break, not starting with ".".
_PLAIN_NAME = re.compile(r"[^./\\\t\n][^/\\\t\n]*")
_SYNSET, _CLASS_AND_NAME = operator.itemgetter(0), operator.itemgetter(0, 1)  # of an ImageRef
# An ImageRef made in C (the class's own __new__ is a Python function: a call per image).
_new_ref = functools.partial(tuple.__new__, ImageRef)


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _check_plain_name(where: str, name: str) -> None:
    """A class or file name that becomes a path component must be a single, ordinary name."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith(".") or "\t" in name:
        raise UnsafeArchiveError(f"{where}: {name!r} is not a plain file or folder name; refusing it")
    if "\n" in name:
        raise SourceError(f"{where}: a name holds a line break: {name!r}")


def _index_tar_file(
    archive: str, name: str, fh: BinaryIO, total: int, opener: Callable[[], BinaryIO] | None
) -> list[ImageRef]:
    """Index a tar (nested ``<synset>.tar`` members or ``[<synset>/]<image>`` members) read from ``fh``.

    With ``opener`` (an archive whose every read is a request: ``fh`` and the readers it makes send one
    exact ranged request per read), the nested tars are indexed ``INDEX_CONCURRENCY`` at a time, each
    with a reader of its own: a tar's headers must be read one after the other (each gives the next
    one's offset), so only separate tars overlap their requests' latency.
    """
    refs: list[ImageRef] = []
    skipped = 0
    progress = Progress(f"indexing {name}", total=0, unit="members")
    nested: list[tuple[str, str, int, int]] = []  # (synset, member path, offset, size)
    for path, offset, size in iter_tar(fh, archive, start=0, size=total):
        parts = path.split("/")
        if len(parts) == 1 and path.lower().endswith(".tar"):
            synset = path[:-4]
            _check_plain_name(f"{archive}[{path}]", synset)
            nested.append((synset, path, offset, size))
            continue
        if not parts[-1].lower().endswith(IMAGE_EXTENSIONS):
            skipped += 1
            continue
        if len(parts) == 1:
            synset = ""
        elif len(parts) == 2:
            synset = parts[0]
            _check_plain_name(f"{archive}[{path}]", synset)
        else:
            raise SourceError(
                f"{archive}: member {path!r} is nested too deep; expected <synset>/<image> or a flat file"
            )
        if _PLAIN_NAME.fullmatch(parts[-1]) is None:
            _check_plain_name(f"{archive}[{path}]", parts[-1])
        refs.append(_new_ref((synset, parts[-1], 0, offset, size, path)))
        progress.advance()

    def inner(entry: tuple[str, str, int, int], reader: BinaryIO) -> tuple[list[ImageRef], int]:
        """A nested tar's images (once per member of the whole set: kept to operations done in C)."""
        synset, path, offset, size = entry
        where = f"{archive}[{path}]"
        found, not_images = [], 0
        prefix = path + "/"
        for image_path, image_offset, image_size in iter_tar(reader, where, start=offset, size=size):
            image_name = image_path.rpartition("/")[2]
            if not image_name.lower().endswith(IMAGE_EXTENSIONS):
                not_images += 1
                continue
            if _PLAIN_NAME.fullmatch(image_name) is None:
                _check_plain_name(where, image_name)
            found.append(_new_ref((synset, image_name, 0, image_offset, image_size, prefix + image_path)))
        return found, not_images

    if opener is None or len(nested) <= 1:
        results: Iterator[tuple[list[ImageRef], int]] = (inner(entry, fh) for entry in nested)
    else:

        def remote(entry: tuple[str, str, int, int]) -> tuple[list[ImageRef], int]:
            with opener() as reader:
                return inner(entry, reader)

        pool = ThreadPoolExecutor(INDEX_CONCURRENCY, thread_name_prefix="tar-index")
        results = pool.map(remote, nested)
    try:
        for found, not_images in results:
            refs.extend(found)
            skipped += not_images
            progress.advance(len(found))
    finally:
        if opener is not None and len(nested) > 1:
            pool.shutdown(wait=True, cancel_futures=True)
    if skipped:
        log.info("%s: skipped %d members that are not images (by extension)", archive, skipped)
    return refs


def _index_tar(store: Store, shown: str, size: int) -> list[ImageRef]:
    def opener() -> BinaryIO:
        read_at = functools.partial(store.read_range, "")
        return RangeFile(read_at, size, costly_reads=store.requests_are_costly)  # type: ignore[return-value]

    with opener() as fh:
        return _index_tar_file(
            shown, posixpath.basename(shown), fh, size, opener if store.requests_are_costly else None
        )


def _index_dir(store: Store, shown: str) -> list[ImageRef]:
    """A folder laid out as ``<synset>/<image>`` or flat (val): one listing."""
    refs: list[ImageRef] = []
    skipped = 0
    for info in store.list():
        parts = info.key.split("/")
        if any(p.startswith(".") for p in parts):
            continue
        if not is_image_name(parts[-1]) or len(parts) > 2:
            skipped += 1
            continue
        synset = parts[0] if len(parts) == 2 else ""
        if synset:
            _check_plain_name(shown, synset)
        _check_plain_name(f"{shown}/{synset}" if synset else shown, parts[-1])
        refs.append(ImageRef(synset, parts[-1], 0, 0, info.size, info.key))
    if skipped:
        log.info("%s: skipped %d objects that are not images", shown, skipped)
    return refs


def build_split_catalog(
    split: str,
    source: str | os.PathLike[str],
    conn_id: str | None = None,
    *,
    store: Store | None = None,
    inflated: WorkingCopies | None = None,
) -> SplitCatalog:
    """Index ``source`` (a tar file or a folder; a local path, or an object or prefix in a bucket, see
    :mod:`airflow_resnet_prep.sources.bucket`) into the catalog of ``split`` ("train" or "val").

    ``store``: the store of ``source`` when the caller has one (e.g. to read its request counts).
    ``inflated``: where compressed sources get their working copies (:mod:`.inflated`); None: read in place."""
    store = store if store is not None else source_store(source, conn_id)
    if store.requests_are_costly:  # minutes of requests, whose client's garbage the collector must see
        return _build_split_catalog(split, store, inflated)
    with gc_paused():  # an ImageRef per image, no cycles among them
        return _build_split_catalog(split, store, inflated)


def _build_split_catalog(split: str, store: Store, inflated: WorkingCopies | None) -> SplitCatalog:
    where = store.url
    layout, labels = OFFICIAL, ""
    try:
        try:
            size: int | None = store.size()
        except ObjectNotFoundError:
            size = None  # a folder or prefix
        copy = index_copy(split, store, where, size, inflated)
        if copy is not None:
            layout, sources, refs, labels = copy
        else:
            if size is None:
                kind, refs = DIR, _index_dir(store, where)
                if not refs and not store.exists() and not store.list():
                    raise SourceError(f"{where}: {split} source does not exist (no file, no folder)")
            else:
                kind, refs = TAR, _index_tar(store, where, size)
            # The source's address carries its connection: every later step and worker reaches it the same way.
            sources = [Source(kind, store.address)]
    except (StorageError, OSError) as exc:
        if isinstance(exc, SourceError):
            raise
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise SourceError(f"{where}: cannot index the {split} source: {reason}") from exc
    finally:
        if store.requests_are_costly:
            stats = store.stats.snapshot()
            log.info(
                "%s: indexed; this process's client sent %d requests meanwhile, %.1f MB read",
                where,
                sum(stats["requests"].values()),
                stats["bytes_read"] / 1e6,
            )
    if not refs:
        raise SourceError(f"{where}: the {split} source holds no images (.JPEG/.jpg/.png)")
    labelled = sum(1 for synset in map(_SYNSET, refs) if synset)
    if labelled not in (0, len(refs)):
        unlabelled = next(r for r in refs if not r.synset)
        raise SourceError(
            f"{where}: mixes class folders with loose images (e.g. {unlabelled.member!r}); use one layout"
        )
    if split == "train" and labelled == 0:
        raise SourceError(
            f"{where}: training images must be grouped by class (<synset>/<image> or <synset>.tar)"
        )
    refs.sort(key=_CLASS_AND_NAME)
    keys = map(_CLASS_AND_NAME, refs)  # made as compared: no list of a tuple per image
    if not all(map(operator.lt, keys, map(_CLASS_AND_NAME, itertools.islice(refs, 1, None)))):  # one repeats
        for prev, cur in itertools.pairwise(refs):
            if prev.synset == cur.synset and prev.name == cur.name:
                raise SourceError(
                    f"{where}: duplicate image {cur.synset + '/' if cur.synset else ''}{cur.name}"
                )
    if labels:  # a copy's validation images, classes already given: a name must not come twice in any class
        seen: set[str] = set()
        for ref in refs:
            if ref.name in seen:
                raise SourceError(f"{where}: duplicate validation image {ref.name} (in two classes)")
            seen.add(ref.name)
    return SplitCatalog(split=split, sources=sources, images=refs, layout=layout, labels=labels)
