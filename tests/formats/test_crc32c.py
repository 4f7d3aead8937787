"""CRC-32C helpers: combining pieces' CRCs equals the CRC of the joined bytes; the writer sums what it
writes."""

from __future__ import annotations

import io
import os

import google_crc32c
import pytest

from airflow_resnet_prep.formats.crc32c import ChecksumWriter, combine, combine_all, crc32c, to_hex


@pytest.mark.parametrize("len2", [0, 1, 3, 4, 255, 4096, 1 << 20, (1 << 20) + 7])
def test_combine_equals_the_crc_of_the_joined_bytes(len2: int) -> None:
    a, b = os.urandom(1001), os.urandom(len2)
    assert combine(google_crc32c.value(a), google_crc32c.value(b), len2) == google_crc32c.value(a + b)


def test_combine_all_of_many_pieces_and_empty_ones() -> None:
    pieces = [os.urandom(n) for n in (0, 5, 0, 70_000, 1, 0, 333)]
    joined = combine_all((google_crc32c.value(p), len(p)) for p in pieces)
    assert joined == google_crc32c.value(b"".join(pieces))
    assert combine_all([]) == google_crc32c.value(b"") == 0


def test_writer_sums_every_buffer_kind_and_passes_them_through() -> None:
    out = io.BytesIO()
    writer = ChecksumWriter(out)
    data = os.urandom(10_000)
    writer.write(data[:10])
    writer.writelines([memoryview(data)[10:5000], bytearray(data[5000:9000]), data[9000:]])
    assert out.getvalue() == data
    assert writer.size == len(data) and writer.tell() == len(data)
    assert writer.hex == to_hex(google_crc32c.value(data)) == f"{crc32c(data):08x}"


def test_known_value() -> None:
    assert to_hex(crc32c(b"123456789")) == "e3069283"  # the CRC-32C check value


def test_tfrecord_writer_sums_the_file_it_writes() -> None:
    """The shard's CRC joined from each record's data CRC (computed for its footer anyway) equals the
    CRC of the bytes written."""
    from airflow_resnet_prep.formats.tfrecord import TFRecordWriter, iter_records

    out = io.BytesIO()
    writer = TFRecordWriter(out)
    records = [os.urandom(n) for n in (0, 1, 100, 70_000, 5)] + [bytearray(b"abc"), memoryview(b"xyz")]
    for r in records:
        writer.write(r)
    assert writer.crc == google_crc32c.value(out.getvalue())
    assert writer.position == len(out.getvalue())
    assert list(iter_records(io.BytesIO(out.getvalue()), "mem")) == [bytes(r) for r in records]


def test_record_heads_are_told_from_escaped_payload() -> None:
    """verify cuts a .rec at .idx offsets only where a record starts; a payload holding the magic at
    aligned positions is escaped, so no aligned position inside it looks like a head."""
    from airflow_resnet_prep.formats.recordio import MAGIC, is_record_head, pack_header, record_buffers

    magic = MAGIC.to_bytes(4, "little")
    image = magic * 3 + b"\0" * 5 + magic
    data = b"".join(bytes(b) for b in record_buffers(pack_header(1.0, 7), image))
    heads = [o for o in range(0, len(data) - 7, 4) if is_record_head(data[o : o + 8])]
    assert heads == [0]
    assert not is_record_head(data[:7])
