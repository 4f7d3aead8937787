"""RecordIO framing edge cases, checked against a plain transcription of dmlc-core's writer loop."""

from __future__ import annotations

import io
import mmap
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.formats.recordio import (
    MAGIC,
    MAX_RECORD,
    RecordIOError,
    frame,
    framed_size,
    iter_records,
    pack_header,
    record_buffers,
    unpack_header,
    write_record,
)

M = struct.pack("<I", MAGIC)
assert M == b"\x0a\x23\xd7\xce"


def naive_frame(payload: bytes) -> bytes:
    """dmlc-core's RecordIOWriter::WriteRecord, one offset at a time: the oracle for the fast code."""
    n = len(payload)
    lower_align, upper_align = n & ~3, (n + 3) & ~3
    out, dptr = b"", 0
    for i in range(0, lower_align, 4):
        if payload[i : i + 4] == M:
            out += M + struct.pack("<I", (1 if dptr == 0 else 2) << 29 | (i - dptr)) + payload[dptr:i]
            dptr = i + 4
    out += M + struct.pack("<I", (3 if dptr != 0 else 0) << 29 | (n - dptr)) + payload[dptr:]
    return out + b"\0" * (upper_align - n)


def joined(bufs) -> bytes:
    return b"".join(bytes(b) for b in bufs)


def lrec(cflag: int, length: int) -> bytes:
    return struct.pack("<I", cflag << 29 | length)


@pytest.mark.parametrize("n", range(10))
def test_padding_for_lengths_0_to_9(n: int) -> None:
    payload = bytes(range(1, n + 1))
    bufs = frame(payload)
    assert len(bufs) == 3 and bufs[1] is payload
    pad = (4 - n % 4) % 4
    assert joined(bufs) == M + lrec(0, n) + payload + b"\0" * pad
    assert framed_size(payload) == 8 + n + pad == len(joined(bufs))
    assert framed_size(payload) % 4 == 0


def test_magic_at_offset_0() -> None:
    payload = M + b"abcdef"
    assert joined(frame(payload)) == M + lrec(1, 0) + M + lrec(3, 6) + b"abcdef\0\0"


def test_payload_that_is_only_the_magic() -> None:
    assert joined(frame(M)) == M + lrec(1, 0) + M + lrec(3, 0)
    assert [p for _, p in iter_records(io.BytesIO(joined(frame(M))))] == [M]


def test_consecutive_magics() -> None:
    payload = M * 3 + b"xyz"
    expected = M + lrec(1, 0) + M + lrec(2, 0) + M + lrec(2, 0) + M + lrec(3, 3) + b"xyz\0"
    assert joined(frame(payload)) == expected == naive_frame(payload)
    assert framed_size(payload) == len(expected) == 8 + 15 + 1 + 12


def test_magics_between_data() -> None:
    payload = b"abcd" + M + b"efghijkl" + M + b"mn"
    expected = M + lrec(1, 4) + b"abcd" + M + lrec(2, 8) + b"efghijkl" + M + lrec(3, 2) + b"mn\0\0"
    assert joined(frame(payload)) == expected


def test_magic_at_last_aligned_slot() -> None:
    for tail in (b"", b"z", b"zz", b"zzz"):
        payload = b"12345678" + M + tail  # lower_align = 12, last aligned slot is 8
        assert joined(frame(payload)) == M + lrec(1, 8) + b"12345678" + M + lrec(
            3, len(tail)
        ) + tail + b"\0" * (-len(tail) % 4)


@pytest.mark.parametrize("cut", [1, 2, 3])
def test_partial_magic_straddling_the_end_is_not_escaped(cut: int) -> None:
    payload = b"12345678" + M[:cut]
    assert joined(frame(payload)) == M + lrec(0, len(payload)) + payload + b"\0" * (-len(payload) % 4)


@pytest.mark.parametrize("offset", [1, 2, 3, 5, 6, 7])
def test_unaligned_magic_is_not_escaped(offset: int) -> None:
    payload = b"\xff" * offset + M + b"\xff" * 5
    assert len(frame(payload)) == 3
    assert joined(frame(payload)) == naive_frame(payload)


def test_header_and_image_are_not_joined_in_the_common_case() -> None:
    header, image = pack_header(3.0, 7), b"\xab" * 1001
    bufs = record_buffers(header, image)
    assert len(bufs) == 4 and bufs[1] is header and bufs[2] is image
    fh = io.BytesIO()
    assert write_record(fh, header, image) == len(fh.getvalue()) == framed_size(header + image)
    assert fh.getvalue() == naive_frame(header + image)


def test_escaping_inside_header_and_image() -> None:
    # id = the magic: aligned at payload offset 8; label with the magic's bits: offset 4.
    (label,) = struct.unpack("<f", M)
    for header in (pack_header(2.0, MAGIC), pack_header(label, 5), pack_header(label, MAGIC)):
        for image in (b"", M, b"ab" + M + b"cd" + M, b"abcd" + M * 2 + b"e"):
            fh = io.BytesIO()
            size = write_record(fh, header, image)
            assert fh.getvalue() == naive_frame(header + image)
            assert size == framed_size(header + image)


def test_memoryview_input() -> None:
    data = bytearray(b"abcd" + M + b"efg")
    assert joined(frame(memoryview(data))) == naive_frame(bytes(data))
    fh = io.BytesIO()
    write_record(fh, memoryview(pack_header(1.0, 2)), memoryview(data)[2:])
    assert fh.getvalue() == naive_frame(pack_header(1.0, 2) + bytes(data[2:]))


def test_unaligned_header_falls_back_to_scanning_the_join() -> None:
    header, image = b"xy", b"ab" + M + b"cd"  # magic at payload offset 4
    fh = io.BytesIO()
    write_record(fh, header, image)
    assert fh.getvalue() == naive_frame(header + image)


payloads = st.lists(
    st.one_of(st.binary(max_size=9), st.just(M), st.just(M[:2]), st.just(M[2:])), max_size=12
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(payloads)
def test_frame_matches_dmlc_loop(payload: bytes) -> None:
    framed = naive_frame(payload)
    assert joined(frame(payload)) == framed
    assert framed_size(payload) == len(framed)
    header, image = payload[:4] * 6, payload  # any 4-aligned header
    assert joined(record_buffers(header, image)) == naive_frame(header + image)


@settings(max_examples=100, deadline=None)
@given(st.integers(1024, 1027), payloads)
def test_frame_of_an_image_sized_payload_matches_dmlc_loop(lead: int, tail: bytes) -> None:
    """Buffers of an image's size are scanned as 32-bit words (numpy), small ones byte by byte: both
    must find exactly the aligned magics. ``lead`` shifts the magics of ``tail`` across alignments."""
    payload = (M + b"\xff" * lead)[:lead] + tail
    assert joined(frame(payload)) == naive_frame(payload)
    header = b"\x01" * 24
    assert joined(record_buffers(header, payload)) == naive_frame(header + payload)


@settings(max_examples=100, deadline=None)
@given(st.lists(payloads, max_size=6))
def test_round_trip_through_iter_records(records: list[bytes]) -> None:
    fh = io.BytesIO()
    offsets = []
    for p in records:
        offsets.append(fh.tell())
        fh.writelines(frame(p))
    fh.seek(0)
    assert list(iter_records(fh)) == list(zip(offsets, records, strict=True))


def test_iter_records_on_a_path(tmp_path) -> None:
    path = tmp_path / "x.rec"
    images = [b"", b"a" * 5, M * 2, b"\x00" * 7 + M]
    with open(path, "wb") as fh:
        for i, image in enumerate(images):
            write_record(fh, pack_header(float(i), i), image)
    got = [unpack_header(p) for _, p in iter_records(path)]
    assert got == [(0, float(i), i, 0, image) for i, image in enumerate(images)]


def test_pack_and_unpack_header() -> None:
    h = pack_header(3.0, 1281166)
    assert h == struct.pack("<IfQQ", 0, 3.0, 1281166, 0) and len(h) == 24
    assert unpack_header(h + b"jpeg") == (0, 3.0, 1281166, 0, b"jpeg")
    with pytest.raises(RecordIOError, match="shorter than the 24-byte"):
        unpack_header(b"\0" * 23)


def test_oversize_payload_is_a_value_error_naming_the_size() -> None:
    # An anonymous mapping is backed lazily: 512 MiB of address space, zero pages only when read.
    # (Not closed explicitly: the slices below may still be referenced by tracebacks; GC unmaps it.)
    view = memoryview(mmap.mmap(-1, MAX_RECORD + 1))
    with pytest.raises(ValueError, match=str(MAX_RECORD + 1)) as info:
        frame(view)
    assert isinstance(info.value, PrepError)
    with pytest.raises(ValueError, match=str(MAX_RECORD + 1)):
        write_record(io.BytesIO(), pack_header(0.0, 0), view[: MAX_RECORD + 1 - 24])
    # Exactly the limit is accepted (buffers only; nothing is written).
    bufs = record_buffers(pack_header(0.0, 0), view[: MAX_RECORD - 24])
    assert sum(len(b) for b in bufs) == 8 + MAX_RECORD + 1


def corrupt(data: bytes, match: str) -> None:
    with pytest.raises(RecordIOError, match=match):
        list(iter_records(io.BytesIO(data)))


def test_corruption_is_reported_with_its_offset() -> None:
    good = joined(frame(b"abcdefgh"))  # 16 bytes
    corrupt(good + b"\x00" * 8, r"bad magic 0x00000000 at offset 16")
    corrupt(good + good[:5], r"truncated record head at offset 16")
    corrupt(good + good[:12], r"truncated record at offset 16")
    split = joined(frame(b"abcd" + M + b"efgh"))  # cflag 1 at 0, cflag 3 at 12
    corrupt(good + split[:12], r"split record starting at offset 16 has no last part")
    corrupt(good + split[12:], r"continuation part \(cflag 3\) at offset 16 without a first part")
    corrupt(split[:12] + good, r"cflag 0 at offset 12 inside the split record starting at offset 0")


def test_corruption_names_the_file(tmp_path) -> None:
    path = tmp_path / "bad.rec"
    path.write_bytes(b"not a recordio file")
    with pytest.raises(RecordIOError, match=r"bad\.rec: bad magic"):
        list(iter_records(path))
