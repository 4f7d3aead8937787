"""A gzip-compressed tar read as a stream: members located by their offset in the uncompressed tar.

Hugging Face's ImageNet (``train_images_{0..4}.tar.gz``, ``val_images.tar.gz``) is compressed as a
whole, so a member's bytes can only be reached by inflating everything before them. Nothing is
extracted: :class:`GzipStream` inflates forward, in bounded pieces, from a sequential reader of the
file (a local file, or an object in a bucket read in large sequential pieces); indexing is one pass over
the stream (:func:`iter_tgz`, the tar headers read as for a plain tar), and reading a set of members is
one more pass up to the last of them (:func:`read_members`, offsets in increasing order). A seek
backwards starts again from the beginning: callers sort what they read. :func:`inflate_tgz` indexes the
stream and hands every uncompressed byte to a writer in the same pass (the fetch step's working copy, a
plain tar: :mod:`airflow_resnet_prep.catalog.inflated`). docs/sources.md says what each costs.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO

from airflow_resnet_prep.errors import SourceError
from airflow_resnet_prep.sources.tarindex import TarMember, iter_tar

IN_CHUNK = 1 << 20  # compressed bytes read at a time
OUT_CHUNK = 4 << 20  # uncompressed bytes produced at a time (bounds memory while skipping)
_UNKNOWN_SIZE = 1 << 62  # the uncompressed size is known only at the end of the stream
_GZIP = 16 + zlib.MAX_WBITS


def is_gzip(head: bytes) -> bool:
    return head[:2] == b"\x1f\x8b"


class GzipStream:
    """The uncompressed content of a gzip file (members concatenated), as a forward-seekable reader.

    ``opener`` gives a fresh sequential reader of the compressed file (called again on a seek backwards).
    ``sink``: a writer that gets every uncompressed byte once, in order, as it is inflated (what a seek
    skips over too; after a restart, only what it did not get yet).
    """

    costly_reads = False  # for iter_tar: every header is read with a seek forward and a 512-byte read

    def __init__(self, opener: Callable[[], BinaryIO], where: str, sink: BinaryIO | None = None) -> None:
        self._open, self.where = opener, where
        self._raw: BinaryIO | None = None
        self._sink, self._teed = sink, 0  # uncompressed bytes the sink has
        self._restart()

    def _restart(self) -> None:
        self.close()
        self._raw = self._open()
        self._inflater = zlib.decompressobj(_GZIP)
        self._buf, self._at = b"", 0  # the current uncompressed piece; self._pos is at its byte _at
        self._pos = 0
        self._produced = 0  # uncompressed bytes inflated since the start, the current piece included

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def __enter__(self) -> GzipStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _more(self) -> bytes:
        """The next uncompressed piece; b"" at the end of the file."""
        assert self._raw is not None
        try:
            while True:
                z = self._inflater
                # eof first: at the end of a member, CPython leaves the input past it in unconsumed_tail
                # *and* unused_data; only unused_data is the rest of the file.
                if z.eof:  # a member ended: another one may follow
                    rest = z.unused_data or self._raw.read(IN_CHUNK)
                    while rest and not rest.strip(b"\0"):  # zero padding at the end, which gzip allows
                        rest = self._raw.read(IN_CHUNK)
                    if not rest:
                        return b""
                    self._inflater = zlib.decompressobj(_GZIP)
                    data = self._inflater.decompress(rest, OUT_CHUNK)
                elif z.unconsumed_tail:
                    data = z.decompress(z.unconsumed_tail, OUT_CHUNK)
                else:
                    compressed = self._raw.read(IN_CHUNK)
                    if not compressed:
                        raise SourceError(
                            f"{self.where}: truncated gzip stream (it ends inside compressed data)"
                        )
                    data = z.decompress(compressed, OUT_CHUNK)
                if data:
                    self._produced += len(data)
                    if self._sink is not None and self._produced > self._teed:
                        self._sink.write(memoryview(data)[len(data) - (self._produced - self._teed) :])
                        self._teed = self._produced
                    return data
        except zlib.error as exc:
            raise SourceError(f"{self.where}: damaged gzip data ({exc})") from None

    def drain(self) -> int:
        """Inflate the rest of the stream (the sink gets it; gzip's own check of each member, CRC-32 and
        length, runs at its end); return the size of the uncompressed content."""
        while self._more():
            self._buf, self._at = b"", 0
        self._pos = self._produced
        return self._produced

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            pos += self._pos
        elif whence != os.SEEK_SET:
            raise OSError("a gzip stream has no known end to seek from")
        if pos < self._pos:
            self._restart()
        skip = pos - self._pos
        while skip > 0:
            if self._at == len(self._buf):
                self._buf, self._at = self._more(), 0
                if not self._buf:
                    break  # past the end: reads return b""
            taken = min(skip, len(self._buf) - self._at)
            self._at, self._pos, skip = self._at + taken, self._pos + taken, skip - taken
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if 0 <= n <= len(self._buf) - self._at:  # the usual case: an image inside the current piece
            out = self._buf[self._at : self._at + n]
            self._at += n
            self._pos += n
            return out
        pieces = [self._buf[self._at :]]
        have = len(pieces[0])
        self._buf, self._at = b"", 0
        while n < 0 or have < n:
            data = self._more()
            if not data:
                break
            if n >= 0 and have + len(data) > n:  # keep the rest of the piece for the next read
                self._buf, self._at = data, n - have
                data = data[: n - have]
            pieces.append(data)
            have += len(data)
        out = b"".join(pieces)
        self._pos += len(out)
        return out


def iter_tgz(opener: Callable[[], BinaryIO], archive: str) -> Iterator[TarMember]:
    """The regular files of the gzip-compressed tar, offsets in the uncompressed tar: one pass."""
    with GzipStream(opener, archive) as stream:
        yield from iter_tar(stream, archive, start=0, size=_UNKNOWN_SIZE)  # type: ignore[arg-type]


def inflate_tgz(opener: Callable[[], BinaryIO], archive: str, sink: BinaryIO) -> tuple[list[TarMember], int]:
    """The regular files of the gzip-compressed tar (as :func:`iter_tgz`) and the size of the tar, from
    one pass that writes the whole uncompressed tar to ``sink``: a plain tar where each member is at its
    offset. Damage anywhere in the file, after the tar's end included, raises naming ``archive``."""
    with GzipStream(opener, archive, sink) as stream:
        members = list(iter_tar(stream, archive, start=0, size=_UNKNOWN_SIZE))  # type: ignore[arg-type]
        return members, stream.drain()


def read_members(
    opener: Callable[[], BinaryIO], archive: str, ranges: Sequence[tuple[int, int]]
) -> Iterator[tuple[int, bytes]]:
    """``(i, bytes)`` for each ``(offset, size)`` of ``ranges`` (offsets in the uncompressed tar), in
    increasing offset order, from one pass over the stream up to the last of them."""
    order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
    with GzipStream(opener, archive) as stream:
        for i in order:
            offset, size = ranges[i]
            stream.seek(offset)
            data = stream.read(size)
            if len(data) != size:
                raise SourceError(
                    f"{archive}: truncated: a member needs {size} bytes at offset {offset} of the "
                    "uncompressed tar, the stream ends first"
                )
            yield i, data
