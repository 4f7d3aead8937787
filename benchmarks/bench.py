#!/usr/bin/env python3
"""Benchmark the converters against the physical limit of this machine.

``python -m benchmarks.bench --images N --json PATH`` (``make bench``) does, with the standard library and
the package only:

1. **Table.** Generates (or reuses, under ``--workdir``, default ``.bench/``) a sample ImageNet of about
   N images with the package's generator, catalogs it once (fetch + relabel, not timed), extracts the
   images once as files for ``cat`` (not timed), warms the page cache, then measures every row below in
   one run, alternating (the order rotates each repetition) and repeated ``--repeat`` times; each
   figure is the median. Every measured job runs in a fresh subprocess, so its peak RSS and CPU time are
   its own; interpreter start-up and imports (TensorFlow included) happen before the clock starts, as in
   a long-lived Airflow worker, and are reported apart (``import_s``); ``sync`` runs between jobs so no
   job pays for another's dirty pages.
2. **Scale check** (``--skip-scale`` to leave out, ``--scale`` to run only it): a synthetic train tar
   of 1,281,167 tiny images in 1,000 per-class tars plus a 50,000-image val tar (written header by
   header, cached), at 1/4, 1/2 and the full size: catalog building (fetch), relabel, and a conversion
   plan for each converter, each step in its own process (as Airflow tasks are): time and peak RSS.
3. **Scale-out check** (``--skip-scale-out``, or ``--scale-out`` to run only it): after one
   ``base.plan``, 1, 2 and 4 worker processes each call ``base.run_plan_unit`` on their own contiguous batch
   of units (as the DAG's mapped tasks get them), started together; then ``base.finish``. Speed-up is
   the units phase of 1 worker over that of N.
4. ``--profile``: cProfile of each converter's unit loop (one process, every unit), time per image by
   function. ``--dag``: one whole ``airflow dags test`` on the small demo sample, for reference.

The definitions of the rows are in :data:`DEFINITIONS` and are printed with the table. The script runs
itself with ``--job SPEC`` for each measured job; that form is internal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent
MODULE = "benchmarks.bench"  # run as ``python -m benchmarks.bench`` (repo root on the path)
RESULT_PREFIX = "BENCH-RESULT "

# The real ILSVRC2012: train images, classes, val images.
FULL_TRAIN = 1_281_167
FULL_CLASSES = 1000
FULL_VAL = 50_000
# Images per TFRecord shard in the reference layout (1,281,167 / 1024 train, 50,000 / 128 val).
TRAIN_PER_SHARD = FULL_TRAIN / 1024
VAL_PER_SHARD = FULL_VAL / 128
SCALE_OUT_WORKERS = (1, 2, 4)
PEAK_RSS_TARGET_MB = 1536

# Row name -> (what it measures, which row its ratio is taken against, target ratio or None).
DEFINITIONS: dict[str, tuple[str, str, float | None]] = {
    "cat": (
        "GNU cat (via xargs -0) of every image of the sample as extracted files (one file per image, "
        "catalog order, train then val) into one output file on the output file system; no fsync",
        "cat",
        None,
    ),
    "cat_sync": (
        "the same cat, then fsync of the output: the limit for a converter that makes its output durable",
        "cat",
        None,
    ),
    "cat_catalog": (
        "Python: one positioned read per image through the catalog (ImageReader.read, catalog order) "
        "appended to one output file (1 MiB buffer); the floor of reading images out of the tars",
        "cat",
        None,
    ),
    "cat_tars": (
        "GNU cat of the train and val tars into one output file; baseline of the *_from_tars rows",
        "cat",
        None,
    ),
    "cat_tars_sync": (
        "GNU cat of the train and val tars into one output file, then fsync: a durable copy of the raw "
        "tars, the limit of the *_from_tars rows (read the tars, write durable output)",
        "cat",
        None,
    ),
    "nvidia": (
        "RecordIO converter on an already-built catalog over the tars (fetch + relabel done before, not "
        "timed; images read from the tars, nothing extracted): local.convert's steps, i.e. base.plan, the "
        "one-machine path (each .rec written in place by `workers` processes), base.finish",
        "cat",
        0.8,
    ),
    "reference": (
        "TFRecord converter, same definition as nvidia (shards: the real set's images per shard)",
        "cat",
        0.6,
    ),
    "webdataset": (
        "WebDataset converter, same definition as reference (same shards, tar members instead of "
        "records); ratio against cat_sync, since every shard is synced before its rename",
        "cat_sync",
        None,
    ),
    "nvidia_from_tars": (
        "raw tars to RecordIO end to end in a fresh data_dir: fetch (catalog) + relabel + plan + units + "
        "finish, no extraction",
        "cat_tars_sync",
        0.9,
    ),
    "reference_from_tars": (
        "raw tars to TFRecords end to end, as nvidia_from_tars",
        "cat_tars_sync",
        0.9,
    ),
    # Issue 20: what trust costs, against the conversion it checks (ratio < 1: slower than converting).
    "nvidia_decode_check": (
        "the nvidia row with decode_check on: each image decoded with TensorFlow's decode_jpeg before it "
        "is written (TensorFlow imported before the clock, in import_s)",
        "nvidia",
        None,
    ),
    "reference_decode_check": (
        "the reference row with decode_check on, as nvidia_decode_check",
        "reference",
        None,
    ),
    "verify_nvidia": (
        "verify (python -m airflow_resnet_prep.verify) of the nvidia output, made once before (untimed): "
        "every byte read once, CRC-32C, framing, .idx/.lst against the records, labels, class counts",
        "nvidia",
        None,
    ),
    "verify_nvidia_decode": (
        "verify --decode of the nvidia output: also every image through tf.io.decode_jpeg, spread over "
        "`workers` processes",
        "nvidia",
        None,
    ),
    "verify_reference": ("verify of the reference output, as verify_nvidia", "reference", None),
    "verify_reference_decode": ("verify --decode of the reference output", "reference", None),
    # The copies people hold (docs/sources.md), made by the sample generator from the same images:
    # each against the official tars end to end; ratio > 1 means faster than from the tars.
    "nvidia_from_kaggle_zip": (
        "as nvidia_from_tars, from Kaggle's zip of the same images (both sources name it; its own val "
        "labels): central directory indexed, deflated members inflated as read",
        "nvidia_from_tars",
        None,
    ),
    "nvidia_from_kaggle": ("as nvidia_from_tars, from Kaggle's extracted tree", "nvidia_from_tars", None),
    "nvidia_from_huggingface": (
        "as nvidia_from_tars, from Hugging Face's data/ folder (5 train .tar.gz + val): each shard inflated "
        "once, at fetch, into a plain tar of the data_dir that the conversion reads as an official tar",
        "nvidia_from_tars",
        None,
    ),
    "nvidia_from_huggingface_in_place": (
        "as nvidia_from_huggingface with inflate_compressed_sources=false: no working copy, every read "
        "call (chunk) inflates each shard up to its last wanted image",
        "nvidia_from_tars",
        None,
    ),
    "gzip_dc_huggingface": (
        "gzip -dc of the same Hugging Face shards > /dev/null: the cost of inflating them once, to beat",
        "cat_tars",
        None,
    ),
}
COPY_ROWS = {
    "from_kaggle_zip": "kaggle-zip",
    "from_kaggle": "kaggle",
    "from_huggingface": "huggingface",
    "from_huggingface_in_place": "huggingface",
}
ROW_ORDER = list(DEFINITIONS)


class BenchError(RuntimeError):
    """The benchmark could not measure something (a job failed or produced the wrong output)."""


# =====================================================================================================
# Measured jobs: each runs in a fresh child process (``bench.py --job SPEC``) and prints one result line.
# =====================================================================================================
def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and of its waited-for descendants so far."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _own_peak_kb() -> int:
    """This process's peak RSS since it started its program.

    ``VmHWM`` belongs to the address space, which ``exec`` replaces; ``ru_maxrss`` of RUSAGE_SELF would
    also carry the launching process's peak across fork + exec (Linux keeps the larger of the two), so
    every job would report at least the benchmark's own size.
    """
    with contextlib.suppress(OSError), open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _peak_rss_mb(include_self: bool = True) -> float:
    """The largest peak RSS of this process (unless excluded) and of any of its waited-for descendants.

    A forked worker's figure counts the pages it shares with its parent, as RSS does; an exec'd tool's
    (cat) starts from this process's size at the fork (about 18 MB), a floor of the measurement."""
    kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if include_self:
        kb = max(kb, _own_peak_kb())
    return round(kb / 1024, 1)


class Clock:
    """Wall time and CPU time of the timed region, split into named phases."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self.phases_cpu: dict[str, float] = {}  # CPU seconds of each phase (its workers' once waited for)
        self.t0 = time.monotonic()
        self.cpu0 = _cpu_s()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start, cpu = time.monotonic(), _cpu_s()
        yield
        self.phases[name] = round(time.monotonic() - start, 4)
        self.phases_cpu[name] = round(_cpu_s() - cpu, 4)

    def result(self, include_self_rss: bool = True, **extra: Any) -> dict[str, Any]:
        return {
            "seconds": time.monotonic() - self.t0,
            "cpu_s": _cpu_s() - self.cpu0,
            "peak_rss_mb": _peak_rss_mb(include_self_rss),
            "phases": self.phases,
            "phases_cpu": self.phases_cpu,
            **extra,
        }


def _check_size(path: Path, expected: int) -> None:
    size = path.stat().st_size
    if size != expected:
        raise BenchError(f"{path}: wrote {size:,} bytes, expected {expected:,}")


def job_cat(spec: dict[str, Any]) -> dict[str, Any]:
    """GNU cat of the files named (NUL-separated) in ``spec["list"]``, or of ``spec["files"]``."""
    out = Path(spec["out"])
    if "list" in spec:
        cmd, stdin = ["xargs", "-0", "cat"], open(spec["list"], "rb")  # noqa: SIM115 (closed below)
    else:
        cmd, stdin = [*spec.get("cmd", ["cat"]), *spec["files"]], subprocess.DEVNULL
    clock = Clock()
    try:
        with open(out, "wb") as fh:
            subprocess.run(cmd, stdin=stdin, stdout=fh, check=True)
            if spec.get("fsync"):
                with clock.phase("fsync"):
                    os.fsync(fh.fileno())
    finally:
        if stdin is not subprocess.DEVNULL:
            stdin.close()
    result = clock.result(include_self_rss=False)
    if spec["expect_bytes"] is not None:
        _check_size(out, spec["expect_bytes"])
    return result


def job_cat_catalog(spec: dict[str, Any]) -> dict[str, Any]:
    """One positioned read per image through the catalog, appended to one file."""
    from airflow_resnet_prep.catalog.model import ImageReader, SplitCatalog
    from airflow_resnet_prep.layout import DataDir, catalog_key

    layout = DataDir.of(spec["data_dir"])
    catalogs = [SplitCatalog.load(layout.store, catalog_key(s)) for s in ("train", "val")]
    out = Path(spec["out"])
    clock = Clock()
    with open(out, "wb", buffering=1 << 20) as fh:
        for catalog in catalogs:
            with ImageReader(catalog.sources) as reader:
                for ref in catalog.images:
                    fh.write(reader.read(ref))
    result = clock.result()
    _check_size(out, spec["expect_bytes"])
    return result


_IMPORT_S = 0.0  # what the last _converter(prepare=True) spent loading the converter's libraries


def _converter(spec: dict[str, Any], prepare: bool = True) -> Any:
    """The converter of ``spec``; ``prepare`` loads what its units import (TensorFlow) before any clock,
    as a long-lived worker would have; the time it took is reported apart, as ``import_s``."""
    global _IMPORT_S
    from airflow_resnet_prep.pipeline import make_converter

    converter = make_converter(spec["impl"], spec["params"])
    if prepare:
        start = time.monotonic()
        converter.prepare_process()
        _IMPORT_S = time.monotonic() - start
    return converter


def _records(summary: dict[str, Any]) -> int:
    return sum(s["records"] for s in summary["splits"].values())


def job_convert(spec: dict[str, Any]) -> dict[str, Any]:
    """local.convert's steps on a data_dir whose catalogs exist (``from_tars``: fetch + relabel too):
    plan, then the converter's one-machine path (``run_local``) or else every unit, then finish."""
    from airflow_resnet_prep.catalog.fetch import fetch
    from airflow_resnet_prep.catalog.relabel import relabel
    from airflow_resnet_prep.converters import base, local

    converter = _converter(spec)
    data_dir = spec["data_dir"]
    clock = Clock()
    if spec.get("from_tars"):
        with clock.phase("fetch"):
            fetch(data_dir, spec["train_source"], spec["val_source"], inflate=spec.get("inflate"))
        with clock.phase("relabel"):
            relabel(data_dir, spec["labels_source"])
    with clock.phase("plan"):
        plan = base.plan(converter, data_dir)
    with clock.phase("units"):
        local.run_all(converter, plan, workers=spec["workers"])
    with clock.phase("finish"):
        summary = base.finish(converter, plan)
    result = clock.result(import_s=_IMPORT_S)
    if _records(summary) != spec["expect_images"]:
        raise BenchError(
            f"{data_dir}: wrote {_records(summary):,} records, expected {spec['expect_images']:,}"
        )
    return result


def job_verify(spec: dict[str, Any]) -> dict[str, Any]:
    """``verify`` (``--decode`` with ``decode``) of a finished output; TensorFlow imported before the clock."""
    from airflow_resnet_prep.verify import verify

    start = time.monotonic()
    if spec["decode"]:
        from airflow_resnet_prep.formats.tfdecode import load_tensorflow

        load_tensorflow()
    import_s = time.monotonic() - start
    clock = Clock()
    with clock.phase("verify"):
        report = verify(spec["data_dir"], decode=spec["decode"], workers=spec["workers"])
    if not report.ok or report.records != spec["expect_images"]:
        raise BenchError(
            f"{spec['data_dir']}: verify found {report.problems[:5]} ({report.records:,} records)"
        )
    return clock.result(import_s=import_s)


def job_step(spec: dict[str, Any]) -> dict[str, Any]:
    """One pipeline step on its own (scale and scale-out checks): fetch, relabel, plan or finish."""
    from airflow_resnet_prep.catalog.fetch import fetch
    from airflow_resnet_prep.catalog.relabel import relabel
    from airflow_resnet_prep.converters import base
    from airflow_resnet_prep.layout import DataDir

    step, data_dir = spec["step"], spec["data_dir"]
    # As the DAG's plan and finish tasks: the converter without its units' heavy imports.
    converter = _converter(spec, prepare=False) if step in ("plan", "finish") else None
    extra: dict[str, Any] = {}
    clock = Clock()
    if step == "fetch":
        extra["counts"] = fetch(data_dir, spec["train_source"], spec["val_source"]).counts
    elif step == "relabel":
        relabel(data_dir, spec["labels_source"])
    elif step == "plan":
        plan = base.plan(converter, data_dir)
        extra["units"] = [u.items for u in plan.units]
    elif step == "finish":
        plan = base.Plan.load(DataDir.of(data_dir), converter.implementation)
        extra["records"] = _records(base.finish(converter, plan))
    else:
        raise BenchError(f"unknown step {step!r}")
    return clock.result(**extra)


def job_unit_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """A mapped task's share: ``base.run_plan_unit`` for each unit id, started on the parent's signal."""
    from airflow_resnet_prep.converters import base
    from airflow_resnet_prep.layout import DataDir

    converter = _converter(spec)
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        raise BenchError("unit worker: the benchmark did not say GO")
    clock = Clock()
    start = time.monotonic()  # CLOCK_MONOTONIC is system-wide, so the parent can compare workers
    plan = base.Plan.load(DataDir.of(spec["data_dir"]), converter.implementation)
    records = sum(base.run_plan_unit(converter, plan, uid).records for uid in spec["unit_ids"])
    return clock.result(start=start, end=time.monotonic(), records=records, import_s=_IMPORT_S)


def job_profile(spec: dict[str, Any]) -> dict[str, Any]:
    """Every unit of a plan in this one process, first plain, then again under cProfile."""
    import cProfile
    import pstats

    from airflow_resnet_prep.converters import base

    converter = _converter(spec)
    data_dir = spec["data_dir"]
    plan = base.plan(converter, data_dir)

    def run_all() -> float:
        start = time.monotonic()
        for unit in plan.units:
            base.run_plan_unit(converter, plan, unit.id)
        return time.monotonic() - start

    plain_s = run_all()
    plan = base.plan(converter, data_dir, force=True)  # same plan again, outputs and done records cleared
    profiler = cProfile.Profile()
    profiler.enable()
    profiled_s = run_all()
    profiler.disable()
    images = spec["expect_images"]
    rows = []
    for (file, line, func), (_cc, calls, tottime, cumtime, _callers) in pstats.Stats(profiler).stats.items():
        short = file
        for marker in ("airflow_resnet_prep/", "site-packages/", "lib/python3"):
            if marker in file:
                short = file.split(marker, 1)[1]
                break
        rows.append(
            {
                "function": f"{short}:{line}({func})" if line else func,
                "calls_per_image": round(calls / images, 2),
                "self_us_per_image": round(tottime / images * 1e6, 2),
                "cum_us_per_image": round(cumtime / images * 1e6, 2),
            }
        )
    rows.sort(key=lambda r: r["self_us_per_image"], reverse=True)
    return {
        "images": images,
        "plain_us_per_image": round(plain_s / images * 1e6, 1),
        "profiled_us_per_image": round(profiled_s / images * 1e6, 1),
        "functions": rows[: spec.get("top", 25)],
    }


JOBS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "cat": job_cat,
    "cat_catalog": job_cat_catalog,
    "convert": job_convert,
    "verify": job_verify,
    "step": job_step,
    "unit_worker": job_unit_worker,
    "profile": job_profile,
}


def child_main(spec: dict[str, Any]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = JOBS[spec["kind"]](spec)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# =====================================================================================================
# The parent: preparing inputs, running jobs, collecting figures.
# =====================================================================================================
def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The jobs run as ``python -m benchmarks.<script> --job``: the repo root first on their path.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _parse_result(stdout: str, what: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise BenchError(f"{what}: the job printed no result line")


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one measured job in a fresh interpreter and return what it measured."""
    proc = subprocess.run(
        [sys.executable, "-m", MODULE, "--job", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=_child_env(),
    )
    what = f"job {spec['kind']} {spec.get('name') or spec.get('step') or ''}".strip()
    if proc.returncode != 0:
        raise BenchError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return _parse_result(proc.stdout, what)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def settle() -> None:
    """Write back dirty pages between jobs, so no job pays for the previous one's writes."""
    os.sync()


# -- the sample set ----------------------------------------------------------------------------------
def sample_shape(images: int) -> dict[str, int]:
    """Classes and images per class giving about ``images`` images, with ImageNet's val:train ratio."""
    classes = max(2, min(FULL_CLASSES, round(images / 300)))
    per_class = max(2, round(images / classes))
    val = max(1, round(per_class * FULL_VAL / (FULL_TRAIN + FULL_VAL)))
    return {"classes": classes, "train_per_class": per_class - val, "val_per_class": val}


def reference_params(train: int, val: int) -> dict[str, int]:
    """Shards holding as many images each as the real set's 1024 + 128 shards do."""
    return {
        "train_shards": max(1, min(train, round(train / TRAIN_PER_SHARD))),
        "val_shards": max(1, min(val, round(val / VAL_PER_SHARD))),
    }


class Sample:
    """The sample set, its prepared catalog and its extracted files, all cached under the work folder."""

    def __init__(self, workdir: Path, images: int, seed: int) -> None:
        from airflow_resnet_prep.sample import generate

        shape = sample_shape(images)
        tag = f"sample-{shape['classes']}x{shape['train_per_class']}+{shape['val_per_class']}-s{seed}"
        self.root = workdir / tag
        log(f"sample: {shape} in {self.root} (generated once, then reused)")
        self.set = generate(self.root / "raw", seed=seed, workers=2, **shape)
        self.prepared = self.root / "prepared"  # data_dir holding the catalogs, copied into each job
        self._prepare_catalog()
        self.list_file = self.root / "extracted.list"
        self._extract()

    def _prepare_catalog(self) -> None:
        from airflow_resnet_prep.catalog.fetch import fetch
        from airflow_resnet_prep.catalog.model import SplitCatalog
        from airflow_resnet_prep.catalog.relabel import relabel
        from airflow_resnet_prep.layout import DataDir, catalog_key

        fetch(self.prepared, str(self.set.train_tar), str(self.set.val_tar))
        relabel(self.prepared, str(self.set.labels))
        layout = DataDir.of(self.prepared)
        self.catalogs = {s: SplitCatalog.load(layout.store, catalog_key(s)) for s in ("train", "val")}
        self.train = len(self.catalogs["train"])
        self.val = len(self.catalogs["val"])
        self.images = self.train + self.val
        self.image_bytes = sum(c.total_bytes() for c in self.catalogs.values())
        self.tar_bytes = self.set.train_tar.stat().st_size + self.set.val_tar.stat().st_size

    def _extract(self) -> None:
        from airflow_resnet_prep.catalog.extract import extract_split, image_path

        marker = self.root / "extracted.json"
        if json.loads(marker.read_text() if marker.exists() else "{}").get("images") != self.images:
            log(f"sample: extracting {self.images:,} images for cat (once)")
            paths = []
            for split, catalog in self.catalogs.items():
                dest = self.root / "extracted" / split
                extract_split(catalog, dest)
                paths.extend(str(image_path(dest, r.synset, r.name)) for r in catalog.images)
            self.list_file.write_bytes(b"".join(p.encode() + b"\0" for p in paths))
            marker.write_text(json.dumps({"images": self.images}))

    def copy(self, layout: str) -> Path:
        """The sample laid out as ``layout`` (made once, untimed) and read once into the page cache."""
        from airflow_resnet_prep.sample_copies import write_copy

        path = write_copy(self.set, layout)
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        with open(os.devnull, "wb") as null:
            for file in files:
                subprocess.run(["cat", str(file)], stdout=null, check=True)
        return path

    def job_dir(self, run_root: Path, name: str, with_catalog: bool) -> Path:
        """A fresh data_dir for one job; with the prepared catalogs copied in when asked."""
        path = run_root / name
        rmtree(path)
        path.mkdir(parents=True)
        if with_catalog:
            shutil.copytree(self.prepared / "catalog", path / "catalog")
        return path

    def describe(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "images": self.images,
            "train": self.train,
            "val": self.val,
            "classes": len(self.set.synsets),
            "image_bytes": self.image_bytes,
            "mean_image_kb": round(self.image_bytes / self.images / 1024, 1),
            "tar_bytes": self.tar_bytes,
            "reencoded_quirks": len(self.set.quirks),
        }


def drop_page_cache() -> bool:
    """Empty the page cache (root only), so that the runs do not pay for evicting earlier work's pages
    at random moments; returns whether it was possible."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
    except OSError:
        return False
    return True


def warm_page_cache(sample: Sample) -> None:
    """Empty the page cache where allowed, then read every source byte once so all rows start from
    the page cache."""
    log("page cache emptied first" if drop_page_cache() else "page cache not emptied (needs root)")
    mem_kb = _meminfo().get("MemAvailable", 0)
    need = 2 * (sample.image_bytes + sample.tar_bytes)  # sources + up to two outputs of that size
    if mem_kb and need > mem_kb * 1024 * 0.8:
        log(
            f"warning: sources and outputs ({need / 1e9:.1f} GB) may not fit the page cache "
            f"({mem_kb / 1e6:.1f} GB available): figures may include disk reads"
        )
    with open(os.devnull, "wb") as null:
        subprocess.run(["cat", str(sample.set.train_tar), str(sample.set.val_tar)], stdout=null, check=True)
        with open(sample.list_file, "rb") as names:
            subprocess.run(["xargs", "-0", "cat"], stdin=names, stdout=null, check=True)


# -- the table ---------------------------------------------------------------------------------------
def row_spec(name: str, sample: Sample, run_root: Path, workers: int) -> dict[str, Any]:
    """The job of one row, with a fresh output place prepared (not timed)."""
    s = sample.set
    if name in ("cat", "cat_sync", "cat_tars", "cat_tars_sync", "cat_catalog"):
        out_dir = sample.job_dir(run_root, name, with_catalog=False)
        out = str(out_dir / "out.bin")
        if name in ("cat_tars", "cat_tars_sync"):
            return {
                "kind": "cat",
                "name": name,
                "files": [str(s.train_tar), str(s.val_tar)],
                "out": out,
                "fsync": name == "cat_tars_sync",
                "expect_bytes": sample.tar_bytes,
            }
        if name == "cat_catalog":
            return {
                "kind": "cat_catalog",
                "name": name,
                "data_dir": str(sample.prepared),
                "out": out,
                "expect_bytes": sample.image_bytes,
            }
        return {
            "kind": "cat",
            "name": name,
            "list": str(sample.list_file),
            "out": out,
            "fsync": name == "cat_sync",
            "expect_bytes": sample.image_bytes,
        }
    if name == "gzip_dc_huggingface":
        data = sample.copy("huggingface")
        shards = sorted(str(p) for p in data.glob("*_images*.tar.gz") if not p.name.startswith("test"))
        return {
            "kind": "cat",
            "name": name,
            "cmd": ["gzip", "-dc"],
            "files": shards,
            "out": os.devnull,
            "expect_bytes": None,
        }
    if name.startswith("verify_"):
        impl = name.split("_")[1]
        return {
            "kind": "verify",
            "name": name,
            "data_dir": str(verify_source(sample, impl)),
            "decode": name.endswith("_decode"),
            "workers": workers,
            "expect_images": sample.images,
        }
    impl, _, tail = name.partition("_")
    from_tars = tail == "from_tars" or tail in COPY_ROWS
    data_dir = sample.job_dir(run_root, name, with_catalog=not from_tars)
    sharded = impl in ("reference", "webdataset")
    params: dict[str, Any] = reference_params(sample.train, sample.val) if sharded else {}
    if tail == "decode_check":
        params["decode_check"] = True
    spec: dict[str, Any] = {
        "kind": "convert",
        "name": name,
        "impl": impl,
        "params": params,
        "data_dir": str(data_dir),
        "workers": workers,
        "expect_images": sample.images,
    }
    if tail in COPY_ROWS:  # one copy for both splits, its own validation labels
        copy = str(sample.copy(COPY_ROWS[tail]))
        spec.update(from_tars=True, train_source=copy, val_source=copy, labels_source="")
        if tail.endswith("_in_place"):
            spec["inflate"] = False
    elif from_tars:
        spec.update(
            from_tars=True,
            train_source=str(s.train_tar),
            val_source=str(s.val_tar),
            labels_source=str(s.labels),
        )
    return spec


def verify_source(sample: Sample, impl: str) -> Path:
    """A finished output of ``impl`` (with its manifest) for the verify rows: converted once with the
    pipeline, untimed, and kept with the sample (rebuilt when its manifest is gone)."""
    from airflow_resnet_prep.pipeline import run as run_pipeline

    data_dir = sample.root / f"verify-{impl}"
    if not (data_dir / "manifest.json").exists():
        log(f"verify rows: converting the sample once ({impl}) into {data_dir} (untimed)")
        rmtree(data_dir)
        run_pipeline(
            {
                "data_dir": str(data_dir),
                "train_source": str(sample.set.train_tar),
                "val_source": str(sample.set.val_tar),
                "labels_source": str(sample.set.labels),
                "implementation": impl,
                **(reference_params(sample.train, sample.val) if impl in ("reference", "webdataset") else {}),
            }
        )
    return data_dir


def measure_table(
    sample: Sample, rows: list[str], repeat: int, workers: int, run_root: Path
) -> list[dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in rows}
    for rep in range(repeat):
        order = rows[rep % len(rows) :] + rows[: rep % len(rows)]  # rotate: no row always goes first
        for name in order:
            spec = row_spec(name, sample, run_root, workers)
            settle()
            result = run_job(spec)
            runs[name].append(result)
            log(
                f"  [{rep + 1}/{repeat}] {name:<24} {result['seconds']:8.2f} s  "
                f"{sample.images / result['seconds']:10,.0f} images/s  {result['peak_rss_mb']:8.1f} MB"
            )
            rmtree(run_root / name)
    table = []
    for name in rows:
        _what, baseline, target = DEFINITIONS[name]
        rs = runs[name]
        secs = [r["seconds"] for r in rs]
        ips = [sample.images / s for s in secs]
        # Ratio within each repetition (same conditions), then the median of those.
        ratios = [
            (sample.images / r["seconds"]) / (sample.images / b["seconds"])
            for r, b in zip(rs, runs[baseline], strict=True)
        ]
        ratio = statistics.median(ratios)
        phases = {k: round(statistics.median(r["phases"][k] for r in rs), 3) for k in rs[0]["phases"]}
        phases_cpu = {
            k: round(statistics.median(r.get("phases_cpu", {}).get(k, 0.0) for r in rs), 3)
            for k in rs[0].get("phases_cpu", {})
        }
        table.append(
            {
                "name": name,
                "baseline": baseline,
                "images": sample.images,
                "seconds": round(statistics.median(secs), 3),
                "seconds_all": [round(s, 3) for s in secs],
                "images_per_s": round(statistics.median(ips), 1),
                "mb_per_s": round(sample.image_bytes / 1e6 / statistics.median(secs), 1),
                "ratio_to_cat": round(ratio, 3),
                "ratio_all": [round(r, 3) for r in ratios],
                "cpu_s_per_1k_images": round(
                    statistics.median(r["cpu_s"] for r in rs) / sample.images * 1000, 3
                ),
                # per GB of images: the unit a submitter sizes a 140 GB job in
                "cpu_s_per_gb": round(
                    statistics.median(r["cpu_s"] for r in rs) / (sample.image_bytes / 1e9), 2
                ),
                "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
                "target": target,
                "met": None if target is None else ratio >= target,
                "phases_s": phases,
                "phases_cpu_s": phases_cpu,
                # Loading the converter's libraries in the job's process, before the clock (not in seconds).
                "import_s": round(statistics.median(r.get("import_s", 0.0) for r in rs), 3),
            }
        )
    return table


def format_table(table: list[dict[str, Any]]) -> str:
    head = (
        f"{'name':<24} {'images/s':>10} {'MB/s':>8} {'ratio':>6} {'vs':<13} {'target':>7} {'met':>4} "
        f"{'CPU s/1k':>9} {'CPU s/GB':>9} {'peak RSS MB':>11}  phases (median s)"
    )
    lines = [head, "-" * len(head)]
    for r in table:
        target = f"{r['target']:.2f}" if r["target"] is not None else "-"
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        phases = " ".join(f"{k} {v:.2f}" for k, v in r["phases_s"].items())
        if r["import_s"] >= 0.01:
            phases += f" (+ import {r['import_s']:.2f}, untimed)"
        lines.append(
            f"{r['name']:<24} {r['images_per_s']:>10,.0f} {r['mb_per_s']:>8,.0f} {r['ratio_to_cat']:>6.2f} "
            f"{r['baseline']:<13} {target:>7} {met:>4} {r['cpu_s_per_1k_images']:>9.3f} {r['cpu_s_per_gb']:>9.2f} "
            f"{r['peak_rss_mb']:>11,.1f}  {phases}"
        )
    return "\n".join(lines)


# -- scale check -------------------------------------------------------------------------------------
_TAR_TEMPLATE = bytearray(512)
_TAR_TEMPLATE[100:108] = b"0000644\0"  # mode
_TAR_TEMPLATE[108:116] = b"0000000\0"  # uid
_TAR_TEMPLATE[116:124] = b"0000000\0"  # gid
_TAR_TEMPLATE[136:148] = b"%011o\0" % 1_341_100_800  # mtime, as the sample generator's
_TAR_TEMPLATE[148:156] = b" " * 8  # the checksum is computed with its own field as spaces
_TAR_TEMPLATE[156] = ord("0")  # regular file
_TAR_TEMPLATE[257:265] = b"ustar\x0000"


def tar_header(name: bytes, size: int) -> bytes:
    """A POSIX ustar header for a regular file ``name`` (< 100 bytes) of ``size`` bytes."""
    h = bytearray(_TAR_TEMPLATE)
    h[: len(name)] = name
    h[124:136] = b"%011o\0" % size
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


# The smallest complete JPEG marker run (SOI, EOI): the scale check measures indexes, not images.
TINY_IMAGE = b"\xff\xd8\xff\xd9"
_TINY_MEMBER_DATA = _padded(TINY_IMAGE)
_END_OF_ARCHIVE = bytes(1024)


def write_scale_set(root: Path, train: int, val: int, classes: int) -> dict[str, Path]:
    """A synthetic ImageNet of tiny images in the real layout (reused when complete)."""
    paths = {
        "train": root / "ILSVRC2012_img_train.tar",
        "val": root / "ILSVRC2012_img_val.tar",
        "labels": root / "labels.txt",
    }
    marker = root / "scale.json"
    meta = {"train": train, "val": val, "classes": classes, "version": 1}
    if marker.exists() and json.loads(marker.read_text()) == meta:
        return paths
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    synsets = [f"n{1_000_000 + 7919 * i:08d}" for i in range(classes)]
    started = time.monotonic()
    with open(paths["train"], "wb", buffering=8 << 20) as out:
        for c, syn in enumerate(synsets):
            count = train // classes + (1 if c < train % classes else 0)
            members = [
                tar_header(f"{syn}_{j + 1}.JPEG".encode(), len(TINY_IMAGE)) + _TINY_MEMBER_DATA
                for j in range(count)
            ]
            inner = b"".join(members) + _END_OF_ARCHIVE
            out.write(tar_header(f"{syn}.tar".encode(), len(inner)) + _padded(inner))
        out.write(_END_OF_ARCHIVE)
    with open(paths["val"], "wb", buffering=8 << 20) as out:
        for i in range(1, val + 1):
            out.write(tar_header(b"ILSVRC2012_val_%08d.JPEG" % i, len(TINY_IMAGE)) + _TINY_MEMBER_DATA)
        out.write(_END_OF_ARCHIVE)
    paths["labels"].write_text("".join(f"{synsets[i % classes]}\n" for i in range(val)))
    marker.write_text(json.dumps(meta))
    log(f"scale: wrote {train:,} + {val:,} tiny images in {time.monotonic() - started:.1f} s under {root}")
    return paths


def measure_scale(workdir: Path, entries: int) -> dict[str, Any]:
    """Catalog + relabel + plans at 1/4, 1/2 and all of ``entries`` train images; time and peak RSS."""
    levels = []
    for fraction in (4, 2, 1):
        train = entries // fraction
        classes = max(1, min(FULL_CLASSES, train))
        # Validation covers every class, as the real set's 50 per class do (plan checks it).
        val = max(classes, round(FULL_VAL * train / FULL_TRAIN))
        paths = write_scale_set(workdir / "scale" / f"{train}", train, val, classes)
        with open(os.devnull, "wb") as null:
            subprocess.run(["cat", str(paths["train"]), str(paths["val"])], stdout=null, check=True)
        data_dir = workdir / "run" / "scale"
        rmtree(data_dir)
        steps: dict[str, dict[str, Any]] = {}
        common = {"kind": "step", "data_dir": str(data_dir)}
        plan_params = {
            "nvidia": {},
            "reference": {"train_shards": min(1024, train), "val_shards": min(128, val)},
        }
        for step, extra in (
            ("fetch", {"train_source": str(paths["train"]), "val_source": str(paths["val"])}),
            ("relabel", {"labels_source": str(paths["labels"])}),
            ("plan nvidia", {"impl": "nvidia", "params": plan_params["nvidia"]}),
            ("plan reference", {"impl": "reference", "params": plan_params["reference"]}),
        ):
            settle()
            r = run_job({**common, "step": step.split()[0], **extra})
            steps[step] = {"seconds": round(r["seconds"], 2), "peak_rss_mb": r["peak_rss_mb"]}
            if step == "fetch" and r["counts"] != {"train": train, "val": val}:
                raise BenchError(f"scale: catalog holds {r['counts']}, expected {train} train + {val} val")
            log(f"  scale {train:>9,}: {step:<15} {r['seconds']:7.2f} s  peak RSS {r['peak_rss_mb']:8.1f} MB")
        catalog_mb = sum(f.stat().st_size for f in (data_dir / "catalog").glob("*.tsv")) / 1e6
        levels.append(
            {
                "train": train,
                "val": val,
                "entries": train + val,
                "classes": classes,
                "train_tar_mb": round(paths["train"].stat().st_size / 1e6, 1),
                "catalog_mb": round(catalog_mb, 1),
                "steps": steps,
                "total_s": round(sum(s["seconds"] for s in steps.values()), 2),
                "us_per_entry": round(sum(s["seconds"] for s in steps.values()) / (train + val) * 1e6, 2),
                "peak_rss_mb": max(s["peak_rss_mb"] for s in steps.values()),
            }
        )
        rmtree(data_dir)
    full = levels[-1]
    return {
        "levels": levels,
        "peak_rss_target_mb": PEAK_RSS_TARGET_MB,
        "peak_rss_met": full["peak_rss_mb"] <= PEAK_RSS_TARGET_MB,
        # 1.0 = perfectly linear: time per entry at full size over time per entry at a quarter.
        "time_per_entry_full_over_quarter": round(full["us_per_entry"] / levels[0]["us_per_entry"], 3),
    }


def format_scale(scale: dict[str, Any]) -> str:
    steps = list(scale["levels"][0]["steps"])
    head = f"{'train images':>12} " + " ".join(f"{s + ' s/MB':>24}" for s in steps) + f" {'us/entry':>9}"
    lines = [head, "-" * len(head)]
    for lv in scale["levels"]:
        cells = " ".join(
            f"{lv['steps'][s]['seconds']:>11.2f} / {lv['steps'][s]['peak_rss_mb']:>9,.0f}" for s in steps
        )
        lines.append(f"{lv['train']:>12,} {cells} {lv['us_per_entry']:>9.2f}")
    lines.append(
        f"time per entry, full / quarter: {scale['time_per_entry_full_over_quarter']:.2f} (1.00 = linear); "
        f"peak RSS at full size {scale['levels'][-1]['peak_rss_mb']:,.0f} MB, target <= "
        f"{PEAK_RSS_TARGET_MB} MB: {'met' if scale['peak_rss_met'] else 'NOT met'}"
    )
    return "\n".join(lines)


# -- scale-out check ---------------------------------------------------------------------------------
def batches(ids: list[int], fanout: int) -> list[list[int]]:
    """Contiguous near-equal batches, exactly as the DAG's plan step hands units to mapped tasks
    (``airflow_resnet_prep.operators.convert.batches``; not imported, to keep Airflow out of this run)."""
    fanout = max(1, min(fanout, len(ids)))
    bounds = [len(ids) * i // fanout for i in range(fanout + 1)]
    return [ids[bounds[i] : bounds[i + 1]] for i in range(fanout)]


def run_unit_workers(spec: dict[str, Any], shares: list[list[int]]) -> dict[str, Any]:
    """Start one process per share, let them import, start them together, and time the whole."""
    procs = []
    for share in shares:
        worker = {**spec, "kind": "unit_worker", "unit_ids": share}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", MODULE, "--job", json.dumps(worker)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_child_env(),
            )
        )
    try:
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "READY":
                raise BenchError(f"unit worker exited before it was ready:\n{p.communicate()[1][-3000:]}")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("GO\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, err = p.communicate()
            if p.returncode != 0:
                raise BenchError(f"unit worker failed (exit {p.returncode}):\n{err[-3000:]}")
            results.append(_parse_result(out, "unit worker"))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return {
        "seconds": max(r["end"] for r in results) - min(r["start"] for r in results),
        "records": sum(r["records"] for r in results),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "cpu_s": sum(r["cpu_s"] for r in results),
    }


def measure_scale_out(sample: Sample, repeat: int, run_root: Path, counts: list[int]) -> list[dict[str, Any]]:
    """Each converter with ``counts`` worker processes (1 must be first: it is the speed-up's base)."""
    out = []
    for impl in ("nvidia", "reference"):
        params = reference_params(sample.train, sample.val) if impl == "reference" else {}
        runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
        sizes: list[int] = []
        for rep in range(repeat):
            for n in counts:
                data_dir = sample.job_dir(run_root, f"scaleout-{impl}", with_catalog=True)
                base_spec = {"impl": impl, "params": params, "data_dir": str(data_dir)}
                settle()
                planned = run_job({**base_spec, "kind": "step", "step": "plan"})
                sizes = planned["units"]
                shares = batches(list(range(len(sizes))), n)
                units = run_unit_workers(base_spec, shares)
                finished = run_job({**base_spec, "kind": "step", "step": "finish"})
                if finished["records"] != sample.images or units["records"] != sample.images:
                    raise BenchError(f"scale-out {impl} x{n}: wrote {finished['records']:,} records")
                runs[n].append(
                    {
                        "units_s": units["seconds"],
                        "plan_s": planned["seconds"],
                        "finish_s": finished["seconds"],
                        "peak_rss_mb": max(
                            units["peak_rss_mb"], planned["peak_rss_mb"], finished["peak_rss_mb"]
                        ),
                        "processes": len(shares),
                    }
                )
                log(
                    f"  [{rep + 1}/{repeat}] scale-out {impl:<9} x{n}: units {units['seconds']:7.2f} s "
                    f"(plan {planned['seconds']:.2f} s, finish {finished['seconds']:.2f} s)"
                )
                rmtree(data_dir)
        one = statistics.median(r["units_s"] for r in runs[1])
        for n in counts:
            units_s = statistics.median(r["units_s"] for r in runs[n])
            shares = batches(list(range(len(sizes))), n)
            # The best speed-up the batches allow: all images over the largest batch's images.
            bound = sum(sizes) / max(sum(sizes[i] for i in share) for share in shares)
            total = statistics.median(r["units_s"] + r["plan_s"] + r["finish_s"] for r in runs[n])
            out.append(
                {
                    "implementation": impl,
                    "workers": n,
                    "processes": runs[n][0]["processes"],
                    "units": len(sizes),
                    "units_s": round(units_s, 3),
                    "images_per_s": round(sample.images / units_s, 1),
                    "speedup": round(one / units_s, 3),
                    "efficiency": round(one / units_s / n, 3),
                    "balance_bound": round(bound, 3),
                    "plan_s": round(statistics.median(r["plan_s"] for r in runs[n]), 3),
                    "finish_s": round(statistics.median(r["finish_s"] for r in runs[n]), 3),
                    "total_s": round(total, 3),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[n]),
                }
            )
    return out


def format_scale_out(rows: list[dict[str, Any]], cores: int) -> str:
    head = (
        f"{'converter':<10} {'workers':>7} {'units':>5} {'units s':>8} {'images/s':>9} {'speed-up':>8} "
        f"{'x/N':>5} {'batch bound':>11} {'plan s':>7} {'finish s':>8} {'peak RSS MB':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['implementation']:<10} {r['workers']:>7} {r['units']:>5} {r['units_s']:>8.2f} "
            f"{r['images_per_s']:>9,.0f} {r['speedup']:>8.2f} {r['efficiency']:>5.2f} {r['balance_bound']:>11.2f} "
            f"{r['plan_s']:>7.2f} {r['finish_s']:>8.2f} {r['peak_rss_mb']:>11,.1f}"
        )
    lines.append(
        f"target: speed-up >= 0.8 x N until the disk or the {cores} cores are the limit; 'batch bound' is the "
        "best the plan's unit sizes allow with contiguous batches"
    )
    return "\n".join(lines)


# -- profile -----------------------------------------------------------------------------------------
def measure_profile(sample: Sample, run_root: Path, top: int) -> dict[str, Any]:
    out = {}
    for impl in ("nvidia", "reference"):
        data_dir = sample.job_dir(run_root, f"profile-{impl}", with_catalog=True)
        params = reference_params(sample.train, sample.val) if impl == "reference" else {}
        settle()
        out[impl] = run_job(
            {
                "kind": "profile",
                "impl": impl,
                "params": params,
                "data_dir": str(data_dir),
                "expect_images": sample.images,
                "top": top,
            }
        )
        rmtree(data_dir)
    return out


def format_profile(profile: dict[str, Any]) -> str:
    lines = []
    for impl, p in profile.items():
        lines.append(
            f"{impl}: unit loop {p['plain_us_per_image']:.1f} us/image plain, "
            f"{p['profiled_us_per_image']:.1f} us/image under cProfile (one process, {p['images']:,} images)"
        )
        lines.append(f"  {'self us/img':>11} {'cum us/img':>10} {'calls/img':>9}  function")
        for f in p["functions"]:
            lines.append(
                f"  {f['self_us_per_image']:>11.2f} {f['cum_us_per_image']:>10.2f} {f['calls_per_image']:>9.2f}  "
                f"{f['function']}"
            )
    return "\n".join(lines)


# -- one airflow dags test ---------------------------------------------------------------------------
def measure_dag(workdir: Path, implementation: str) -> dict[str, Any]:
    """One whole ``airflow dags test`` of the DAG on the package's small default sample."""
    from airflow_resnet_prep.sample import generate

    small = generate(workdir / "dag-sample", workers=2)
    home = workdir / "airflow"
    env = {
        **_child_env(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    if not (home / "airflow.db").exists():
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    data_dir = workdir / "run" / f"dag-{implementation}"
    rmtree(data_dir)
    conf = {
        "implementation": implementation,
        "data_dir": str(data_dir),
        "train_source": str(small.train_tar),
        "val_source": str(small.val_tar),
        "labels_source": str(small.labels),
        "train_shards": 8,
        "val_shards": 2,
    }
    log_path = workdir / f"dag-{implementation}.log"
    settle()
    started = time.monotonic()
    with open(log_path, "w") as fh:
        proc = subprocess.run(
            [airflow, "dags", "test", "mlperf_resnet_prep", "-c", json.dumps(conf)],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    seconds = time.monotonic() - started
    rmtree(data_dir)
    images = small.train_count + small.val_count
    return {
        "implementation": implementation,
        "images": images,
        "seconds": round(seconds, 2),
        "ok": proc.returncode == 0,
        "log": str(log_path),
    }


# -- machine -----------------------------------------------------------------------------------------
def _meminfo() -> dict[str, int]:
    info = {}
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0])
    return info


def _fs_type(path: Path) -> str:
    best, fstype = "", "?"
    with contextlib.suppress(OSError), open("/proc/mounts") as fh:
        for line in fh:
            fields = line.split()
            mount = fields[1]
            inside = str(path).startswith(mount.rstrip("/") + "/") or str(path) == mount
            if inside and len(mount) > len(best):
                best, fstype = mount, f"{fields[2]} ({fields[0]})"
    return fstype


def machine_info(workdir: Path) -> dict[str, Any]:
    import airflow_resnet_prep

    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "?")
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(_meminfo().get("MemTotal", 0) / 1024**2, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "package_version": airflow_resnet_prep.__version__,
        "output_fs": _fs_type(workdir.resolve()),
        "loadavg_start": os.getloadavg(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# =====================================================================================================
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Row definitions are printed with the table; see the module docstring for the method.",
    )
    add_sample_args(parser, default_images=30_000, row_order=ROW_ORDER)
    parser.add_argument("--scale", action="store_true", help="run only the scale check")
    parser.add_argument("--skip-scale", action="store_true", help="leave out the scale check")
    parser.add_argument(
        "--scale-entries",
        type=int,
        default=FULL_TRAIN,
        help=f"train images of the scale check ({FULL_TRAIN:,})",
    )
    parser.add_argument("--scale-out", action="store_true", help="run only the scale-out check")
    parser.add_argument("--skip-scale-out", action="store_true", help="leave out the scale-out check")
    parser.add_argument(
        "--scale-out-workers",
        type=lambda v: [int(x) for x in v.split(",")],
        default=list(SCALE_OUT_WORKERS),
        help="worker counts of the scale-out check, starting with 1 (default 1,2,4)",
    )
    parser.add_argument("--profile", action="store_true", help="also profile both unit loops (cProfile)")
    parser.add_argument("--profile-top", type=int, default=25, help="functions listed per profile (25)")
    parser.add_argument("--dag", action="store_true", help="also time one whole `airflow dags test`")
    parser.add_argument(
        "--dag-implementation",
        default="nvidia",
        choices=["nvidia", "reference", "webdataset"],
        help="for --dag",
    )
    ns = parser.parse_args(argv)
    if ns.job is None:
        check_sample_args(parser, ns, DEFINITIONS, ROW_ORDER)
        if not ns.scale_out_workers or ns.scale_out_workers[0] != 1 or min(ns.scale_out_workers) < 1:
            parser.error("--scale-out-workers must start with 1, e.g. 1,2,4")
        if ns.scale_entries < 4:
            parser.error("--scale-entries must be at least 4")
    return ns


def add_sample_args(parser: argparse.ArgumentParser, *, default_images: int, row_order: list[str]) -> None:
    """The options every bench script shares: the sample, repetitions, workers, rows, the child job."""
    parser.add_argument(
        "--images", type=int, default=default_images, help=f"sample size (default about {default_images:,})"
    )
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per row; figures are medians (3)")
    parser.add_argument(
        "--workers", type=int, default=0, help="processes per conversion in the table (0 = all cores)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sample seed (default 0)")
    parser.add_argument(
        "--workdir", type=Path, default=REPO / ".bench", help="cache and scratch folder (default .bench/)"
    )
    parser.add_argument(
        "--rows",
        default=",".join(row_order),
        help=f"comma-separated rows of the table (default all: {','.join(row_order)}); "
        "their baselines are added",
    )
    parser.add_argument("--job", help=argparse.SUPPRESS)


def check_sample_args(
    parser: argparse.ArgumentParser, ns: argparse.Namespace, definitions: dict, row_order: list[str]
) -> None:
    """Refuse what the shared options cannot mean (only in the parent, not in a child job)."""
    if ns.images < 4:
        parser.error("--images must be at least 4")
    if ns.repeat < 1:
        parser.error("--repeat must be at least 1")
    unknown = [r for r in ns.rows.split(",") if r not in definitions]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(row_order)}")


def selected_rows(arg: str) -> list[str]:
    wanted = {r for r in arg.split(",") if r} | {"cat"}
    while missing := {DEFINITIONS[r][1] for r in wanted} - wanted:  # baselines of baselines too
        wanted |= missing
    return [r for r in ROW_ORDER if r in wanted]


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    if ns.job is not None:
        return child_main(json.loads(ns.job))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from airflow_resnet_prep.fsutil import exclusive_lock

    workdir = ns.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # Two benchmarks on one machine would measure each other; on one work folder they would also clash.
    with exclusive_lock(workdir / ".bench.lock", wait_s=0):
        return run(ns, workdir)


def run(ns: argparse.Namespace, workdir: Path) -> int:
    run_root = workdir / "run"
    only = ns.scale or ns.scale_out
    do_table = not only
    do_scale = ns.scale or (not only and not ns.skip_scale)
    do_scale_out = ns.scale_out or (not only and not ns.skip_scale_out)
    machine = machine_info(workdir)
    report: dict[str, Any] = {
        "machine": machine,
        "args": {k: str(v) for k, v in vars(ns).items() if k != "job"},
    }
    if ns.repeat < 3:
        log(f"note: --repeat {ns.repeat}: the issue asks for the median of at least 3")
    print(
        f"machine: {machine['cpu']}, {machine['usable_cores']} cores, {machine['memory_gb']} GB, "
        f"Linux {machine['kernel']}, output on {machine['output_fs']}; Python {machine['python']}; "
        f"load average at start {' '.join(f'{x:.2f}' for x in machine['loadavg_start'])}"
    )

    sample = None
    if do_table or do_scale_out or ns.profile:
        sample = Sample(workdir, ns.images, ns.seed)
        d = sample.describe()
        report["sample"] = d
        print(
            f"sample: {d['images']:,} images ({d['train']:,} train + {d['val']:,} val, {d['classes']} classes), "
            f"{d['image_bytes'] / 1e6:,.1f} MB of images (mean {d['mean_image_kb']} KB), tars "
            f"{d['tar_bytes'] / 1e6:,.1f} MB; reference shards {reference_params(d['train'], d['val'])}"
        )
        log("warming the page cache")
        warm_page_cache(sample)

    if do_table:
        assert sample is not None
        rows = selected_rows(ns.rows)
        report["definitions"] = {r: DEFINITIONS[r][0] for r in rows}
        print("\nrows:")
        for r in rows:
            print(f"  {r:<24} {DEFINITIONS[r][0]}")
        workers = ns.workers or len(os.sched_getaffinity(0))
        print(
            f"converters run with {workers} worker processes; each row is the median of {ns.repeat} "
            "alternating runs, each in a fresh process; ratio = median of the per-repetition ratios to 'vs'\n"
        )
        table = measure_table(sample, rows, ns.repeat, ns.workers, run_root)
        report["rows"] = table
        print(format_table(table))

    if do_scale_out:
        assert sample is not None
        log("scale-out check")
        report["scale_out"] = measure_scale_out(sample, ns.repeat, run_root, ns.scale_out_workers)
        print("\nscale-out: units spread over worker processes (each calls base.run_plan_unit on its batch)")
        print(format_scale_out(report["scale_out"], machine["usable_cores"]))

    if do_scale:
        log("scale check")
        report["scale"] = measure_scale(workdir, ns.scale_entries)
        print("\nscale: catalog and plan of a synthetic set of tiny images, each step in its own process")
        print(format_scale(report["scale"]))

    if ns.profile:
        assert sample is not None
        log("profiling the unit loops")
        report["profile"] = measure_profile(sample, run_root, ns.profile_top)
        print("\nprofile: time per image by function (self time), unit loop only, cProfile")
        print(format_profile(report["profile"]))

    if ns.dag:
        log("timing one airflow dags test")
        report["dag"] = measure_dag(workdir, ns.dag_implementation)
        d = report["dag"]
        print(
            f"\nairflow dags test ({d['implementation']}, {d['images']} images, whole run incl. start-up): "
            f"{d['seconds']:.1f} s{'' if d['ok'] else ' -- FAILED, see ' + d['log']}"
        )

    machine["loadavg_end"] = os.getloadavg()
    print(f"\nload average at end {' '.join(f'{x:.2f}' for x in machine['loadavg_end'])}")
    if ns.json:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {ns.json}")
    rmtree(run_root)
    return 0


if __name__ == "__main__":
    from airflow_resnet_prep.errors import PrepError

    try:
        sys.exit(main())
    except (BenchError, PrepError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
