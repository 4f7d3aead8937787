"""The gzip-compressed tar stream (``sources/gzstream.py``): one pass indexes it with the offsets of the
uncompressed tar; a set of members is read in one forward pass; damage is named."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest

from airflow_resnet_prep.errors import SourceError
from airflow_resnet_prep.sources import gzstream
from airflow_resnet_prep.sources.gzstream import GzipStream, is_gzip, iter_tgz, read_members


def make_tgz(members: dict[str, bytes]) -> tuple[bytes, bytes]:
    """(the .tar.gz, the plain tar inside it)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0), raw.getvalue()


MEMBERS = {f"n0000000{i % 3}_{i}_n0000000{i % 3}.JPEG": bytes([i]) * (1000 + 997 * i) for i in range(40)}


@pytest.fixture(autouse=True)
def small_pieces(monkeypatch):
    monkeypatch.setattr(gzstream, "IN_CHUNK", 4096)  # many pieces, members straddling them
    monkeypatch.setattr(gzstream, "OUT_CHUNK", 5000)


def test_index_and_read_agree_with_the_plain_tar():
    tgz, tar = make_tgz(MEMBERS)
    assert is_gzip(tgz[:2])
    opens = []

    def opener():
        opens.append(1)
        return io.BytesIO(tgz)

    members = list(iter_tgz(opener, "s.tar.gz"))
    assert [m.path for m in members] == list(MEMBERS)
    assert all(tar[m.offset : m.offset + m.size] == MEMBERS[m.path] for m in members)
    assert len(opens) == 1  # one pass
    opens.clear()
    wanted = [(m.offset, m.size) for m in members[::-3]]  # backwards: read in stream order anyway
    got = dict(read_members(opener, "s.tar.gz", wanted))
    assert [got[i] for i in range(len(wanted))] == [tar[o : o + s] for o, s in wanted]
    assert len(opens) == 1


def test_concatenated_members_and_seeking_back():
    _, tar = make_tgz(MEMBERS)
    half = len(tar) // 2
    two = gzip.compress(tar[:half], mtime=0) + gzip.compress(tar[half:], mtime=0)
    stream = GzipStream(lambda: io.BytesIO(two), "two.gz")
    assert stream.read() == tar
    stream.seek(half - 10)
    assert stream.read(20) == tar[half - 10 : half + 10]
    assert stream.tell() == half + 10


def test_truncated_and_damaged_streams_are_named():
    tgz, _ = make_tgz(MEMBERS)
    with pytest.raises(SourceError, match=r"s\.tar\.gz: truncated"):
        list(iter_tgz(lambda: io.BytesIO(tgz[: len(tgz) // 2]), "s.tar.gz"))
    damaged = bytearray(tgz)
    damaged[len(damaged) // 3] ^= 0xFF
    with pytest.raises(SourceError, match=r"s\.tar\.gz: "):
        list(iter_tgz(lambda: io.BytesIO(bytes(damaged)), "s.tar.gz"))


def test_inflate_tgz_writes_the_plain_tar_once_while_indexing():
    tgz, tar = make_tgz(MEMBERS)
    tgz_padded = gzip.compress(tar + bytes(10240), mtime=0)  # a tar's blocking after its end: copied too
    for compressed, plain in ((tgz, tar), (tgz_padded, tar + bytes(10240))):
        opens, sink = [], io.BytesIO()

        def opener(data=compressed, opens=opens):
            opens.append(1)
            return io.BytesIO(data)

        members, size = gzstream.inflate_tgz(opener, "s.tar.gz", sink)
        assert sink.getvalue() == plain and size == len(plain)
        assert [(m.path, m.offset, m.size) for m in members] == [
            (m.path, m.offset, m.size) for m in iter_tgz(lambda: io.BytesIO(tgz), "s.tar.gz")
        ]
        assert len(opens) == 1


def test_a_sink_gets_each_byte_once_across_a_restart():
    _, tar = make_tgz(MEMBERS)
    sink = io.BytesIO()
    stream = GzipStream(lambda: io.BytesIO(gzip.compress(tar, mtime=0)), "s.tar.gz", sink)
    stream.seek(len(tar) // 2)
    stream.seek(100)  # backwards: inflated again from the start, not written again
    assert stream.read(50) == tar[100:150]
    assert stream.drain() == len(tar)
    assert sink.getvalue() == tar


def test_inflating_a_damaged_stream_raises_naming_it():
    tgz, _ = make_tgz(MEMBERS)
    trailer_damaged = tgz[:-8] + bytes(8)  # the tar is whole; the CRC-32 and length after it are wrong
    for bad in (tgz[: len(tgz) - 20], trailer_damaged):
        with pytest.raises(SourceError, match=r"s\.tar\.gz: "):
            gzstream.inflate_tgz(lambda data=bad: io.BytesIO(data), "s.tar.gz", io.BytesIO())


def test_zero_padding_after_the_last_member_is_the_end_as_for_gzip():
    tgz, tar = make_tgz(MEMBERS)
    sink = io.BytesIO()
    members, size = gzstream.inflate_tgz(lambda: io.BytesIO(tgz + b"\0" * 10_000), "s.tar.gz", sink)
    assert size == len(tar) and sink.getvalue() == tar and [m.path for m in members] == list(MEMBERS)
    # Anything else after it is damage, named.
    with pytest.raises(SourceError, match=r"s\.tar\.gz: damaged gzip data"):
        gzstream.inflate_tgz(lambda: io.BytesIO(tgz + b"\0" * 100 + b"junk"), "s.tar.gz", io.BytesIO())
