"""Reading the members of the copies' archives (catalog/copies.py) for :class:`.model.ImageReader`.

- ``zip``: a member's span (local header onwards, :mod:`airflow_resnet_prep.sources.zipindex`) is read
  like a tar member, by offset (ranges coalesced in a bucket), and inflated when deflated;
- ``tar.gz``: a member of a compressed tar (Hugging Face's shards, when ``[resnet_prep]
  inflate_compressed_sources`` is off: else the catalog points at the shard's plain-tar working copy,
  :mod:`.inflated`) is reached only by inflating the stream up to it: all the images one
  :meth:`~.model.ImageReader.iter_read` call wants from a stream are read in one pass (in stream order)
  into a spool, memory up to ``SPOOL_MEMORY`` and a temporary file beyond, then served in the order
  asked. docs/sources.md says what this costs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from typing import Any, BinaryIO

from airflow_resnet_prep.errors import SourceError, reason
from airflow_resnet_prep.sources.gzstream import read_members
from airflow_resnet_prep.sources.zipindex import member_bytes
from airflow_resnet_prep.storage import StorageError, Store

ZIP = "zip"  # offset of the member's local header, size of its span
TGZ = "tar.gz"  # offset in the uncompressed tar
COPY_KINDS = (ZIP, TGZ)
SPOOL_MEMORY = 64 << 20  # a unit's images from compressed streams kept in memory up to this, then on disk
_STREAM_READ = 8 << 20  # sequential reads of a compressed stream in a bucket: few, large requests


def _opener(store: Store) -> Any:
    block = _STREAM_READ if store.requests_are_costly else 1 << 20
    return lambda: store.open_read("", block_size=block)


def read_copy_member(store: Store, source: Any, ref: Any) -> bytes:
    """One member of a copy's archive (errors name the archive and member)."""
    if source.kind == ZIP:
        return member_bytes(store.read_range("", ref.offset, ref.size), source.describe(ref))
    return next(read_members(_opener(store), source.describe(ref), [(ref.offset, ref.size)]))[1]


def iter_zip_members(store: Store, source: Any, run: Sequence[Any], concurrency: int) -> Iterator[bytes]:
    pieces = store.iter_ranges("", [(r.offset, r.size) for r in run], concurrency=concurrency)
    try:
        for ref, span in zip(run, pieces, strict=False):
            yield member_bytes(span, source.describe(ref))
    finally:
        pieces.close()


class StreamedReads:
    """The images of ``refs`` that lie in compressed streams, read one pass per stream on entering."""

    def __init__(self, reader: Any, refs: Sequence[Any]) -> None:
        self._reader, self._refs = reader, refs
        self._streams = {r.src for r in refs if reader.sources[r.src].kind == TGZ}
        self._spool: BinaryIO | None = None
        self._at: dict[int, tuple[int, int]] = {}  # index in refs -> (offset, size) in the spool

    def __contains__(self, src: int) -> bool:
        return src in self._streams

    def __enter__(self) -> StreamedReads:
        if not self._streams:
            return self
        self._spool = tempfile.SpooledTemporaryFile(SPOOL_MEMORY, prefix="resnet-prep-stream-")
        for src in sorted(self._streams):
            wanted = [i for i, r in enumerate(self._refs) if r.src == src]
            source, store = self._reader.sources[src], self._reader.store(src)
            try:
                ranges = [(self._refs[i].offset, self._refs[i].size) for i in wanted]
                for j, data in read_members(_opener(store), source.shown, ranges):
                    self._at[wanted[j]] = (self._spool.tell(), len(data))
                    self._spool.write(data)
            except (StorageError, OSError) as exc:
                raise SourceError(f"{source.shown}: cannot read images: {reason(exc)}") from exc
        return self

    def run(self, start: int, end: int) -> Iterator[tuple[Any, bytes]]:
        assert self._spool is not None
        for i in range(start, end):
            offset, size = self._at[i]
            self._spool.seek(offset)
            yield self._refs[i], self._spool.read(size)

    def __exit__(self, *exc: object) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None
