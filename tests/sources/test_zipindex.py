"""The zip reader (``sources/zipindex.py``): the central directory read in place, Zip64 included; members
read from their spans agree with the standard library's zipfile; unsafe or damaged archives refused."""

from __future__ import annotations

import io
import itertools
import random
import struct
import zipfile
from pathlib import Path

import pytest

from airflow_resnet_prep.errors import SourceError, UnsafeArchiveError
from airflow_resnet_prep.sample_copies import _zip64_end_records
from airflow_resnet_prep.sources.zipindex import DEFLATED, STORED, is_zip, iter_zip, member_bytes


def make_zip(members: list[tuple[str, bytes, int, bool]], zip64_end: bool = False) -> bytes:
    """A zip of (name, data, method, force_zip64) members, as Python's zipfile writes it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, method, force64 in members:
            info = zipfile.ZipInfo(name, (2012, 7, 1, 0, 0, 0))
            info.compress_type = method
            with zf.open(info, "w", force_zip64=force64) as fh:
                fh.write(data)
        if zip64_end:
            with _zip64_end_records():
                zf.close()
    return buf.getvalue()


def index(data: bytes, name: str = "a.zip"):
    return list(iter_zip(lambda offset, n: data[offset : offset + n], len(data), name))


def read_all(data: bytes) -> dict[str, bytes]:
    return {m.path: member_bytes(data[m.offset : m.offset + m.span], m.path) for m in index(data)}


MEMBERS = [
    ("dir/", b"", STORED, False),
    ("dir/a.JPEG", b"\xff\xd8" + bytes(range(256)) * 40, DEFLATED, False),
    ("dir/b.JPEG", b"stored bytes" * 100, STORED, True),
    ("c.txt", b"deflated with zip64 extra" * 50, DEFLATED, True),
    ("empty.txt", b"", STORED, False),
]


@pytest.mark.parametrize("zip64_end", [False, True])
def test_members_agree_with_zipfile(zip64_end):
    data = make_zip(MEMBERS, zip64_end)
    assert is_zip(data[:4])
    assert (b"PK\x06\x06" in data[-200:]) == zip64_end  # the Zip64 end record, when asked for
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        expected = {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()}
    members = index(data)
    assert [m.path for m in members] == ["dir/a.JPEG", "dir/b.JPEG", "c.txt", "empty.txt"]
    assert [m.method for m in members] == [DEFLATED, STORED, DEFLATED, STORED]
    # spans tile the archive from the first header to the central directory: nothing read twice
    assert all(a.offset + a.span == b.offset for a, b in itertools.pairwise(members))
    assert read_all(data) == expected


def test_the_sample_copy_is_a_zip64_archive_read_in_place(sample, tmp_path):
    from airflow_resnet_prep.sample_copies import write_copy

    path = write_copy(sample, "kaggle-zip")
    data = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        expected = {i.filename: zf.read(i) for i in zf.infolist()}
        methods = {i.compress_type for i in zf.infolist()}
    assert methods == {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED}
    assert b"PK\x06\x06" in data[-300:]
    assert read_all(data) == expected


def test_unsafe_members_are_refused():
    for name in ("../evil.JPEG", "/abs.JPEG"):
        with pytest.raises(UnsafeArchiveError, match=r"a\.zip"):
            index(make_zip([(name, b"x", STORED, False)]))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("link.JPEG")
        info.create_system = 3
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "target")
    with pytest.raises(UnsafeArchiveError, match=r"a\.zip\[link\.JPEG\]: a symbolic link"):
        index(buf.getvalue())


def test_encrypted_and_unknown_methods_are_refused():
    data = bytearray(make_zip([("a.JPEG", b"x" * 100, STORED, False)]))
    cen = data.rfind(b"PK\x01\x02")
    flags = struct.unpack_from("<H", data, cen + 8)[0]
    struct.pack_into("<H", data, cen + 8, flags | 1)
    with pytest.raises(SourceError, match=r"a\.zip\[a\.JPEG\]: encrypted"):
        index(bytes(data))
    struct.pack_into("<H", data, cen + 8, flags)
    struct.pack_into("<H", data, cen + 10, 12)  # bzip2
    with pytest.raises(SourceError, match="compression method 12"):
        index(bytes(data))


def test_damage_is_named():
    data = make_zip(
        [("a.JPEG", random.Random(1).randbytes(3000), DEFLATED, False), ("b.JPEG", b"x", STORED, False)]
    )
    with pytest.raises(SourceError, match="no end of central directory"):
        index(data[:-30])
    with pytest.raises(SourceError, match="not a zip archive"):
        index(b"not a zip at all" * 10)
    member = index(data)[0]
    span = bytearray(data[member.offset : member.offset + member.span])
    span[100] ^= 0xFF  # inside the deflated data
    with pytest.raises(SourceError, match=r"a\.JPEG: (damaged deflate data|CRC-32 mismatch|truncated)"):
        member_bytes(bytes(span), "a.JPEG")
    with pytest.raises(SourceError, match="no zip local header"):
        member_bytes(b"\0" * 64, "a.JPEG")


def test_a_large_central_directory_is_read_in_pieces(monkeypatch, tmp_path: Path):
    import airflow_resnet_prep.sources.zipindex as zipindex

    monkeypatch.setattr(zipindex, "_CD_CHUNK", 100)  # many refills, headers straddling them
    members = [(f"d/{i:04d}.JPEG", bytes([i % 256]) * (i % 7), STORED, i % 5 == 0) for i in range(300)]
    data = make_zip(members)
    reads: list[int] = []

    def read_at(offset: int, n: int) -> bytes:
        reads.append(n)
        return data[offset : offset + n]

    found = list(iter_zip(read_at, len(data), "big.zip"))
    assert [m.path for m in found] == [name for name, *_ in members]
    assert len(reads) > 100
