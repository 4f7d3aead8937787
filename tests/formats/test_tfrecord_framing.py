"""The package's TFRecord framing against TensorFlow's writer and reader.

Byte equality with ``tf.io.TFRecordWriter`` for the same serialized examples (empty, small, large),
``tf.data.TFRecordDataset`` reading what the package wrote, and damaged input refused with the file and
offset named.
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_resnet_prep.formats.tfexample import encode_example
from airflow_resnet_prep.formats.tfrecord import (
    OVERHEAD,
    TFRecordError,
    TFRecordWriter,
    frame_parts,
    frame_record,
    iter_records,
    masked_crc32c,
    read_records,
    write_record,
)


def tf_written(tmp_path: Path, records: list[bytes]) -> bytes:
    path = tmp_path / "tf.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for data in records:
            writer.write(data)
    return path.read_bytes()


def examples() -> list[bytes]:
    """Serialized SPEC §3 Examples of several sizes, plus the edge cases of the framing itself."""
    rng = __import__("random").Random(7)
    out = [
        b"",  # an empty record: header, no data, the CRC of nothing
        b"x",
        encode_example(
            encoded=b"\xff\xd8\xff\xd9", filename="a.JPEG", label=1, synset="n0", height=1, width=1
        ),
    ]
    for size in (100, 4095, 4096, 65_537, 3 << 20):  # up to a 3 MiB image
        out.append(
            encode_example(
                encoded=rng.randbytes(size),
                filename=f"n01440764_{size}.JPEG",
                label=1000,
                synset="n01440764",
                height=375,
                width=500,
            )
        )
    return out


def test_known_masked_crc_values() -> None:
    # CRC-32C check value of "123456789" is 0xE3069283 (RFC 3720); the mask rotates and offsets it.
    crc = 0xE3069283
    assert (
        masked_crc32c(b"123456789") == ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF
    )
    assert masked_crc32c(b"") == 0xA282EAD8  # CRC of nothing is 0


def test_byte_identical_to_tensorflow_writer(tmp_path: Path) -> None:
    records = examples()
    ours = io.BytesIO()
    writer = TFRecordWriter(ours)
    writer.write_all(records)
    expected = tf_written(tmp_path, records)
    assert ours.getvalue() == expected
    assert b"".join(frame_record(r) for r in records) == expected
    # Offsets and framed sizes are what a DALI index lists.
    assert writer.sizes == [len(r) + OVERHEAD for r in records]
    assert writer.offsets == [sum(writer.sizes[:i]) for i in range(len(records))]
    assert writer.position == len(expected)


def test_records_written_in_parts_are_the_joined_records(tmp_path: Path) -> None:
    """What the converter writes: each Example as (head, JPEG, tail), never joined; same bytes, offsets
    and CRC-32C as whole records written by TensorFlow."""
    import google_crc32c

    from airflow_resnet_prep.formats.tfexample import example_parts

    rng = __import__("random").Random(3)
    cases = [
        dict(
            encoded=rng.randbytes(size),
            filename=f"n0_{size}.JPEG",
            label=7,
            synset="n0",
            height=3,
            width=size,
        )
        for size in (0, 1, 4096, 70_000)
    ]
    ours = io.BytesIO()
    writer = TFRecordWriter(ours)
    for case in cases:
        parts = example_parts(**case)
        assert parts[1] is case["encoded"]  # the image itself, not a copy
        assert writer.write_parts(parts) == len(b"".join(parts)) + OVERHEAD
    records = [encode_example(**case) for case in cases]
    assert ours.getvalue() == tf_written(tmp_path, records)
    assert writer.crc == google_crc32c.value(ours.getvalue())
    assert writer.sizes == [len(r) + OVERHEAD for r in records]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=3000), max_size=8))
def test_any_records_byte_identical(tmp_path_factory: pytest.TempPathFactory, records: list[bytes]) -> None:
    tmp = tmp_path_factory.mktemp("tfr")
    assert b"".join(frame_record(r) for r in records) == tf_written(tmp, records)


def test_tf_data_reads_what_the_package_wrote(tmp_path: Path) -> None:
    records = examples()
    path = tmp_path / "ours.tfrecord"
    with open(path, "wb") as fh:
        for data in records:
            write_record(fh, data)
    got = [t.numpy() for t in tf.data.TFRecordDataset(str(path))]
    assert got == records
    # and the package's reader agrees with TensorFlow's writer
    tf_path = tmp_path / "tf.tfrecord"
    tf_path.write_bytes(tf_written(tmp_path, records))
    assert read_records(str(tf_path)) == records


def test_frame_parts_do_not_copy_the_data() -> None:
    data = b"abc" * 1000
    header, footer = frame_parts(data)
    assert len(header) == 12 and len(footer) == 4
    assert struct.unpack("<Q", header[:8])[0] == len(data)
    assert header + data + footer == frame_record(data)
    assert frame_parts(memoryview(data)) == (header, footer)


def _good_file() -> tuple[bytes, list[int]]:
    records = [b"first record", b"", b"third" * 100]
    blob = b"".join(frame_record(r) for r in records)
    offsets = [0, 12 + 16, 12 + 16 + 16]
    return blob, offsets


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (lambda offs: offs[2] + 3, "length field's checksum"),  # inside the third record's length
        (lambda offs: offs[2] + 9, "length field's checksum"),  # inside its length CRC
        (lambda offs: offs[2] + 12 + 7, "data's checksum"),  # inside its data
        (lambda offs: offs[2] + 12 + 500 + 1, "data's checksum"),  # inside its data CRC
    ],
)
def test_corrupted_bytes_are_refused_naming_file_and_offset(where, message: str) -> None:
    blob, offsets = _good_file()
    bad = bytearray(blob)
    bad[where(offsets)] ^= 0x40
    reader = iter_records(io.BytesIO(bytes(bad)), "s3://bucket/train-00000-of-00004")
    assert next(reader) == b"first record"
    assert next(reader) == b""
    with pytest.raises(TFRecordError, match=f"s3://bucket/train-00000-of-00004: .*offset {offsets[2]}.*"):
        next(reader)
    with pytest.raises(TFRecordError, match=message):
        list(iter_records(io.BytesIO(bytes(bad)), "f"))


@pytest.mark.parametrize("cut", [1, 5, 11, 12 + 3, 12 + 500, 12 + 500 + 3])
def test_truncated_file_is_refused(cut: int) -> None:
    blob, offsets = _good_file()
    truncated = blob[: offsets[2] + cut]
    with pytest.raises(TFRecordError, match=rf"shard: truncated record.* at offset {offsets[2]}"):
        list(iter_records(io.BytesIO(truncated), "shard"))


def test_tensorflow_refuses_what_the_package_refuses(tmp_path: Path) -> None:
    """The corruption the tests use is real: TensorFlow's reader refuses it too."""
    blob, offsets = _good_file()
    bad = bytearray(blob)
    bad[offsets[2] + 20] ^= 1
    path = tmp_path / "bad.tfrecord"
    path.write_bytes(bytes(bad))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(path)))
    with pytest.raises(TFRecordError):
        read_records(str(path))


def test_verify_off_checks_framing_only() -> None:
    blob, offsets = _good_file()
    bad = bytearray(blob)
    bad[offsets[2] + 20] ^= 1
    assert len(list(iter_records(io.BytesIO(bytes(bad)), "f", verify=False))) == 3


def test_empty_file_has_no_records(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert read_records(str(path)) == []
    assert os.path.getsize(path) == 0


def test_framing_and_the_reference_converter_do_not_import_tensorflow() -> None:
    """Workers writing shards skip TensorFlow's import (seconds and hundreds of MB each)."""
    import subprocess
    import sys

    code = (
        "import sys, io; import airflow_resnet_prep.converters.tfrecord; "
        "from airflow_resnet_prep.formats.tfrecord import write_record; write_record(io.BytesIO(), b'x'); "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
