"""Checksums and ``verify`` with the data_dir in a bucket (issue 20), on a real S3 server (SeaweedFS).

The ``.rec`` in a bucket is written by units as parts of one multipart upload: its CRC-32C in the
manifest is joined from the parts' CRCs, never read back. ``verify`` checks the prefix in place (ranged
reads through the store, several processes), and names an object changed or removed behind its back.
"""

# ruff: noqa: F811 (the fixtures imported from test_sources_in_bucket are parameters here)
from __future__ import annotations

import json

import google_crc32c
import pytest

from airflow_resnet_prep.pipeline import run
from airflow_resnet_prep.storage import store_for
from airflow_resnet_prep.verify import verify
from tests.storage.test_sources_in_bucket import (  # noqa: F401 (fixtures)
    bucket,
    pipeline_values,
)


@pytest.mark.parametrize("impl", ["reference", "nvidia"])
def test_a_bucket_data_dir_is_verified_in_place(bucket, s3_prefix, sample, impl: str) -> None:
    run(pipeline_values(bucket, s3_prefix, impl, workers=1, dali_index=True))
    store = store_for(s3_prefix)
    manifest = json.loads(store.read_bytes("manifest.json"))
    assert manifest["checks"]["crc32c"] is True
    for key, stats in manifest["outputs"].items():
        assert stats["crc32c"] == f"{google_crc32c.value(store.read_bytes(key)):08x}", key

    report = verify(s3_prefix, workers=2, decode=True)
    assert report.ok, report.problems
    assert report.records == report.decoded == sample.train_count + sample.val_count

    # Damage the copy in the bucket: one byte of a data file, and an index object gone.
    data_key = "recordio/val.rec" if impl == "nvidia" else "tfrecords/validation-00000-of-00002"
    data = bytearray(store.read_bytes(data_key))
    data[len(data) // 2] ^= 0x04
    store.write_bytes(data_key, bytes(data))
    idx_key = "recordio/train.idx" if impl == "nvidia" else "tfrecords/train-00001-of-00004.idx"
    store.delete(idx_key)
    found = [str(p) for p in verify(s3_prefix, workers=1).problems]
    assert f"{idx_key}: missing" in found
    assert any(p.startswith(f"{data_key}") and "CRC-32C" in p for p in found), found


def test_a_gcs_data_dir_with_a_composed_rec_is_verified_in_place(gcs_prefix, sample) -> None:
    """On GCS the .rec is composed from piece objects; its CRC-32C, joined from the pieces', is the one
    GCS itself keeps for the composed object."""
    import base64

    run(
        {
            "data_dir": gcs_prefix,
            "train_source": str(sample.train_tar),
            "val_source": str(sample.val_tar),
            "labels_source": str(sample.labels),
            "implementation": "nvidia",
            "workers": 1,
        }
    )
    store = store_for(gcs_prefix)
    manifest = json.loads(store.read_bytes("manifest.json"))
    for key, stats in manifest["outputs"].items():
        assert stats["crc32c"] == f"{google_crc32c.value(store.read_bytes(key)):08x}", key
    gcs_crc = store.fs.info(store._path("recordio/train.rec")).get("crc32c")
    if gcs_crc:  # what gcloud storage hash shows: base64 of the 4 bytes, big-endian
        assert base64.b64decode(gcs_crc).hex() == manifest["outputs"]["recordio/train.rec"]["crc32c"]
    report = verify(gcs_prefix, workers=2)
    assert report.ok, report.problems
    assert report.records == sample.train_count + sample.val_count
