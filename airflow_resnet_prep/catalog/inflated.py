"""Working copies of compressed sources: each Hugging Face shard inflated once, at fetch, into a plain tar.

A member of a ``.tar.gz`` can be reached only by inflating the shard up to it, and the output order
interleaves the shards, so reading the shards in place costs one inflation per read call (thousands on
the real set). Instead, the fetch step, which inflates every byte of a shard to index it anyway, writes
what it inflates into ``downloads/inflated/<shard name without .gz>`` of the data_dir (through its
Store: a folder or a bucket prefix), and the catalog describes the images as members of that plain tar:
every later step reads it as it reads an official tar. docs/sources.md says what it costs.

The copy is written under a temporary name (a multipart upload in a bucket) and appears whole or not at
all; then ``<copy>.json`` records the shard's version (size and mtime, or ETag) and the copy's size. A
copy is reused only when that record exists, names the shard's current version and the copy's size; any
other copy is made again. A killed writer leaves a temporary file (an open upload), never a copy with a
record: the next fetch, holding the data_dir's lock, frees it.
"""

from __future__ import annotations

import json
import logging
import posixpath
import threading
import time
from typing import Any, BinaryIO

from airflow_resnet_prep.failpoints import failpoint
from airflow_resnet_prep.progress import Progress
from airflow_resnet_prep.sources.gzstream import inflate_tgz
from airflow_resnet_prep.sources.tarindex import TarMember, iter_tar
from airflow_resnet_prep.storage import ObjectNotFoundError, Store
from airflow_resnet_prep.storage.rangefile import RangeFile

log = logging.getLogger(__name__)

RECORD = ".json"  # beside each copy: what it was made from, and its size
_MB = 1 << 20


def copy_name(shard: Store) -> str:
    """``train_images_0.tar.gz`` -> ``train_images_0.tar``."""
    name = posixpath.basename(shard.url.rstrip("/"))
    return name[: -len(".gz")] if name.endswith(".gz") else name + ".tar"


def shard_version(shard: Store) -> dict[str, Any]:
    """What changes when the shard is rewritten: its size and version (a file's mtime, an ETag)."""
    version = shard.version()
    return {"size": version.size, "etag": version.etag, "version": version.version}


class SharedProgress:
    """A :class:`Progress` that the threads inflating a split's shards advance together."""

    def __init__(self, label: str, total: int, unit: str) -> None:
        self._progress = Progress(label, total=total, unit=unit)
        self._lock = threading.Lock()

    def advance(self, n: int) -> None:
        with self._lock:
            self._progress.advance(n)

    def skip(self, n: int) -> None:
        """Take ``n`` units out of the total: work found done already (a reused copy)."""
        with self._lock:
            self._progress.total -= n

    def finish(self) -> None:
        with self._lock:
            if self._progress.total:  # else every copy was reused: nothing was inflated
                self._progress.finish()


class _CountedReader:
    """A shard's reader that advances the progress by the MiB of compressed input read."""

    def __init__(self, raw: BinaryIO, progress: SharedProgress) -> None:
        self._raw, self._progress = raw, progress
        self._read = self._shown = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._read += len(data)
        if self._read // _MB > self._shown:
            self._progress.advance(self._read // _MB - self._shown)
            self._shown = self._read // _MB
        return data

    def close(self) -> None:
        self._raw.close()


class _CopyWriter:
    """The copy's writer, with the crash point of the kill-and-resume tests after every piece."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out

    def write(self, data: Any) -> int:
        n = self._out.write(data)
        failpoint("inflate-copy")
        return n


class WorkingCopies:
    """The working copies under ``store`` (``downloads/inflated/`` of the data_dir)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._used: list[str] = []
        self._lock = threading.Lock()

    @property
    def used(self) -> list[str]:
        """The copies the catalogs indexed with this object describe (made or reused)."""
        return sorted(self._used)

    def _record(self, name: str) -> dict[str, Any] | None:
        try:
            record = json.loads(self.store.read_bytes(name + RECORD))
        except (ObjectNotFoundError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def finished(self, name: str, shard: dict[str, Any] | None = None) -> bool:
        """Whether copy ``name`` is whole (its record exists and gives its size), and made from the shard
        at version ``shard`` when that is given."""
        record = self._record(name)
        if record is None or (shard is not None and record.get("shard") != shard):
            return False
        try:
            return self.store.size(name) == record.get("size")
        except ObjectNotFoundError:
            return False

    def discard_partial(self) -> int:
        """Free what killed writers left (temporary files, open uploads); only under the data_dir's lock."""
        return self.store.discard_partial("")

    def remove_unused(self) -> None:
        """Delete the copies (and records) no catalog of this fetch uses: their space is the images' size."""
        keep = {key for name in self._used for key in (name, name + RECORD)}
        for info in self.store.list():
            if "/" not in info.key and info.key not in keep:
                log.info("%s: no catalog reads it any more; removing it", self.store.uri(info.key))
                self.store.delete(info.key)

    def members(
        self, shard: Store, shown: str, progress: SharedProgress | None = None
    ) -> tuple[list[TarMember], str]:
        """The members of compressed tar ``shard`` (offsets in the uncompressed tar) and the address of
        its working copy: reused when finished and made from this version of the shard, else made now
        in the one pass that indexes the shard."""
        name = copy_name(shard)
        version = shard_version(shard)
        copy = self.store.child(name)
        with self._lock:
            self._used.append(name)
        if self.finished(name, version):
            log.info("%s: reusing its uncompressed copy %s", shown, copy.url)
            if progress is not None:
                progress.skip(version["size"] >> 20)
            size = self.store.size(name)
            read_at = lambda offset, n: self.store.read_range(name, offset, n)  # noqa: E731
            with RangeFile(read_at, size, costly_reads=self.store.requests_are_costly) as fh:
                return list(iter_tar(fh, copy.url, start=0, size=size)), copy.address  # type: ignore[arg-type]
        self.store.delete(name + RECORD)  # the copy below is about to change: never reused meanwhile

        def opener() -> BinaryIO:
            raw = shard.open_read("", block_size=_MB)
            return raw if progress is None else _CountedReader(raw, progress)  # type: ignore[return-value]

        started = time.monotonic()
        with self.store.writer(name) as out:
            found, size = inflate_tgz(opener, shown, _CopyWriter(out))  # type: ignore[arg-type]
        record = {
            "shard": version,
            "source": shown,
            "size": size,
            "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        self.store.write_bytes(name + RECORD, (json.dumps(record, indent=2, sort_keys=True) + "\n").encode())
        log.info(
            "%s: inflated once into %s (%.1f MB, %.1f s)",
            shown,
            copy.url,
            size / 1e6,
            time.monotonic() - started,
        )
        return found, copy.address
