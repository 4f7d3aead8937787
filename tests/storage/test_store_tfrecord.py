"""TFRecord shards streamed to S3 with the package's framing (TensorFlow 2.21 has no s3:// file system):
the object is byte-identical to ``tf.io.TFRecordWriter``'s file, ``tf.data`` reads it after a download,
and the package's reader checks it straight from the bucket through a deliberately sized buffer."""

from __future__ import annotations

import random
from pathlib import Path

import tensorflow as tf

from airflow_resnet_prep.formats.tfexample import encode_example
from airflow_resnet_prep.formats.tfrecord import OVERHEAD, TFRecordWriter, iter_records
from airflow_resnet_prep.storage import store_for


def test_shard_streamed_to_s3_equals_tensorflows_file(s3_prefix: str, tmp_path: Path, monkeypatch) -> None:
    from airflow_resnet_prep.storage import objectstore

    monkeypatch.setattr(objectstore, "WRITER_PART", 5 << 20)  # a multipart upload of three parts
    rng = random.Random(5)
    records = [
        encode_example(
            encoded=rng.randbytes(rng.randrange(50_000, 250_000)),
            filename=f"n01440764_{i}.JPEG",
            label=1 + i % 1000,
            synset="n01440764",
            height=375,
            width=500,
        )
        for i in range(90)
    ]
    store = store_for(s3_prefix)
    key = "tfrecords/train-00000-of-00001"
    with store.writer(key) as fh:
        writer = TFRecordWriter(fh)
        writer.write_all(records)
    assert store.stats.requests["UploadPart"] >= 2

    reference = tmp_path / "tf"
    with tf.io.TFRecordWriter(str(reference)) as tf_writer:
        for data in records:
            tf_writer.write(data)
    downloaded = tmp_path / "downloaded"
    downloaded.write_bytes(store.read_bytes(key))
    assert downloaded.read_bytes() == reference.read_bytes()
    assert [t.numpy() for t in tf.data.TFRecordDataset(str(downloaded))] == records
    # DALI index entries from the writer point at the records in the object
    assert writer.sizes == [len(r) + OVERHEAD for r in records]

    store.stats.reset()
    with store.open_read(key, block_size=8 << 20) as fh:
        assert list(iter_records(fh, store.uri(key))) == records
    size = store.size(key)
    gets = store.stats.requests["GetObject"]
    assert gets <= size // (8 << 20) + 2, store.stats.snapshot()  # 8 MiB per request, not 2 per record
