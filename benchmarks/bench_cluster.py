"""The scale-out row through a real Celery cluster: Airflow's scheduling overhead per mapped task.

``python -m benchmarks.bench_cluster [--images 6000] [--implementation reference] [--fanout 4]``

Starts the test suite's cluster (``tests/support/cluster``: PostgreSQL, Redis, API server, scheduler, DAG
processor, two Celery workers with one slot each, all on this machine), then triggers the DAG through the
REST API on the bench sample (``bench.py``'s, generated once under ``--workdir``) with ``fanout`` mapped
units tasks of ``workers=1`` process each:

1. a warm-up run (the workers' first tasks pay for imports), not reported;
2. ``--repeat`` times (default 3): the run with 2 workers, then one worker stopped and the run with 1
   worker (fresh data_dirs; the stopped worker is started again for the next repetition).

For each run it reads the task instances (queued, start and end times) from the REST API and each unit's
own conversion time from its done record (``work/<implementation>/done/<id>.json``, ``seconds``), and
prints, per worker count (medians over the repetitions):

- the units phase: from the end of ``*_plan`` to the end of the last ``*_units`` task, and its speed-up
  from 1 to 2 workers (on one machine: the ratio shows overhead, not hardware);
- per mapped task, medians: wall time (start to end), its units' own time, and the difference (the
  task's own overhead: process start, DAG parse, API calls), plus the wait from queued to started;
- the **scheduling overhead per task**: slot time of the units phase not spent converting, divided by
  the tasks, ``(units phase x slots - sum of unit times) / tasks``: everything Airflow adds per task;
- the task size (images per mapped task) that brings that overhead under 5 % of the task's work, and
  what it is at ImageNet scale (1,331,167 images) for a few fanouts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks import bench  # sample_shape, reference_params, the real set's sizes
from tests.support.cluster.celery_cluster import DAG_ID, CeleryCluster
from tests.support.cluster.services import missing_services

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parent.parent

MAIN_DAG = REPO / "dags" / "mlperf_resnet_prep.py"
FULL_IMAGES = bench.FULL_TRAIN + bench.FULL_VAL
TARGET = 0.05


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def when(value: str | None) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else float("nan")


def sample(workdir: Path, images: int) -> Any:
    """bench.py's sample set of about ``images`` images (same folder, so both scripts share it)."""
    from airflow_resnet_prep.sample import generate

    shape = bench.sample_shape(images)
    tag = f"sample-{shape['classes']}x{shape['train_per_class']}+{shape['val_per_class']}-s0"
    log(f"sample: {shape} in {workdir / tag} (generated once, then reused)")
    return generate(workdir / tag / "raw", seed=0, workers=2, **shape)


def run_once(cluster: CeleryCluster, conf: dict[str, Any], implementation: str) -> dict[str, Any]:
    """Trigger, wait, and measure one run (its data_dir is removed afterwards)."""
    airflow = cluster.airflow
    run_id = airflow.trigger(DAG_ID, conf)
    state = airflow.wait_run(DAG_ID, run_id, timeout=1800)
    if state != "success":
        raise RuntimeError(f"run {run_id} ended {state}: {airflow.task_states(DAG_ID, run_id)}")
    response = airflow.api(
        "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", params={"limit": 1000}
    )
    response.raise_for_status()
    tis = response.json()["task_instances"]
    plan = next(ti for ti in tis if ti["task_id"] == f"{implementation}_plan")
    mapped = sorted(
        (ti for ti in tis if ti["task_id"] == f"{implementation}_units"), key=lambda ti: ti["map_index"]
    )
    batches = airflow.xcom(DAG_ID, run_id, f"{implementation}_plan")
    done = Path(conf["data_dir"]) / "work" / implementation / "done"
    records = {r["unit"]: r for r in (json.loads(p.read_text()) for p in done.glob("*.json"))}
    unit_s = {u: float(r["seconds"]) for u, r in records.items()}
    images = sum(int(r["records"]) + len(r.get("skipped", [])) for r in records.values())
    tasks = []
    for ti in mapped:
        wall = when(ti["end_date"]) - when(ti["start_date"])
        work = sum(unit_s[u] for u in batches[ti["map_index"]])
        tasks.append(
            {
                "map_index": ti["map_index"],
                "units": len(batches[ti["map_index"]]),
                "wall_s": wall,
                "work_s": work,
                "in_task_overhead_s": wall - work,
                "queued_to_start_s": when(ti["start_date"]) - when(ti["queued_when"]),
                "try_number": ti["try_number"],
            }
        )
    phase = max(when(ti["end_date"]) for ti in mapped) - when(plan["end_date"])
    slots = sum(name in airflow.processes for name in cluster.worker_names) * cluster.concurrency
    work = sum(unit_s.values())
    shutil.rmtree(conf["data_dir"], ignore_errors=True)
    return {
        "run_id": run_id,
        "workers": slots,
        "tasks": len(mapped),
        "units": len(unit_s),
        "images": images,
        "units_phase_s": phase,
        "unit_work_s": work,
        "work_per_image_us": work / images * 1e6,
        "overhead_per_task_s": (phase * slots - work) / len(mapped),
        "task_wall_s": statistics.median(t["wall_s"] for t in tasks),
        "task_work_s": statistics.median(t["work_s"] for t in tasks),
        "task_own_overhead_s": statistics.median(t["in_task_overhead_s"] for t in tasks),
        "queued_to_start_s": statistics.median(t["queued_to_start_s"] for t in tasks),
        "per_task": tasks,
    }


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Field by field median of repeated runs (numbers only; the rest from the first run)."""
    row = dict(runs[0])
    for key, value in row.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            row[key] = statistics.median(r[key] for r in runs)
    return row


def images_for_target(row: dict[str, Any]) -> float:
    """Images per mapped task whose own work is 20x Airflow's overhead per task (overhead < 5 %)."""
    return row["overhead_per_task_s"] / TARGET / (row["work_per_image_us"] / 1e6)


def format_rows(rows: list[dict[str, Any]]) -> str:
    head = (
        "| workers | tasks x units | images | units phase | speed-up | unit work (sum) | per task: wall / "
        "own units / own overhead | queued->start | **Airflow overhead per task** | overhead / task's work "
        "| images per task for < 5 % |"
    )
    lines = [head, "|" + "---:|" * 11]
    base = next((r for r in rows if r["workers"] == 1), rows[0])
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['tasks']} x {r['units'] / r['tasks']:.1f} | {r['images']:,} "
            f"| {r['units_phase_s']:.1f} s | {base['units_phase_s'] / r['units_phase_s']:.2f}x "
            f"| {r['unit_work_s']:.2f} s | {r['task_wall_s']:.1f} / {r['task_work_s']:.2f} / "
            f"{r['task_own_overhead_s']:.1f} s | {r['queued_to_start_s']:.1f} s "
            f"| **{r['overhead_per_task_s']:.1f} s** | {r['overhead_per_task_s'] / r['task_work_s']:.0%} "
            f"| {images_for_target(r):,.0f} |"
        )
    return "\n".join(lines)


def format_imagenet(rows: list[dict[str, Any]], fanouts: tuple[int, ...] = (8, 32, 128, 1024)) -> str:
    """The measured overhead against a task's work at ImageNet size, one core per task."""
    worst = max(rows, key=lambda r: r["overhead_per_task_s"])
    per_image = statistics.median(r["work_per_image_us"] for r in rows) / 1e6
    lines = [
        f"At ImageNet scale ({FULL_IMAGES:,} images, {per_image * 1e6:.0f} us of unit work per image as measured, "
        f"overhead {worst['overhead_per_task_s']:.1f} s per task, the larger measured):",
        "| fanout | images per task | task's work (1 process) | overhead |",
        "|---:|---:|---:|---:|",
    ]
    for fanout in fanouts:
        work = FULL_IMAGES / fanout * per_image
        lines.append(
            f"| {fanout} | {FULL_IMAGES / fanout:,.0f} | {work:,.0f} s | {worst['overhead_per_task_s'] / work:.1%} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", type=int, default=6000, help="sample size (default 6,000)")
    parser.add_argument("--implementation", default="reference", choices=["reference", "nvidia"])
    parser.add_argument("--fanout", type=int, default=4, help="mapped units tasks (default 4)")
    parser.add_argument("--workdir", type=Path, default=REPO / ".bench", help="cache and scratch folder")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per worker count, alternating (default 3)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    missing = missing_services()
    if missing:
        print(f"bench_cluster: not installed: {', '.join(missing)}", file=sys.stderr)
        return 2
    workdir = ns.workdir.resolve()
    sample_set = sample(workdir, ns.images)
    train, val = sample_set.train_count, sample_set.val_count
    root = workdir / "cluster"
    shutil.rmtree(root, ignore_errors=True)
    conf = {
        "implementation": ns.implementation,
        "train_source": str(sample_set.train_tar),
        "val_source": str(sample_set.val_tar),
        "labels_source": str(sample_set.labels),
        "fanout": ns.fanout,
        "workers": 1,
        **(bench.reference_params(train, val) if ns.implementation == "reference" else {}),
    }
    log(f"cluster in {root}; runs: {json.dumps({k: v for k, v in conf.items() if 'source' not in k})}")
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    with CeleryCluster(root, dags=[MAIN_DAG], workers=2, concurrency=1) as cluster:
        log(f"cluster up in {cluster.timings['start_s']:.0f} s")
        cluster.airflow.wait_dag(DAG_ID)
        cluster.airflow.unpause(DAG_ID)
        run_once(cluster, {**conf, "data_dir": str(root / "data" / "warm-up")}, ns.implementation)
        log("warm-up run done")
        for rep in range(ns.repeat):
            if rep:
                cluster.start_worker(cluster.worker_names[-1])
            for workers in (2, 1):
                if workers == 1:
                    cluster.airflow.terminate(cluster.worker_names[-1])
                data_dir = root / "data" / f"{workers}-workers-{rep}"
                row = run_once(cluster, {**conf, "data_dir": str(data_dir)}, ns.implementation)
                log(
                    f"[{rep + 1}/{ns.repeat}] {workers} worker(s): units phase {row['units_phase_s']:.1f} s, "
                    f"unit work {row['unit_work_s']:.2f} s, overhead {row['overhead_per_task_s']:.1f} s/task"
                )
                runs.append(row)
    rows = [medians([r for r in runs if r["workers"] == n]) for n in (1, 2)]
    load = os.getloadavg()
    print(
        f"\nCelery cluster on this machine ({len(os.sched_getaffinity(0))} cores, load {load[0]:.1f}): "
        f"{ns.implementation}, {rows[0]['images']:,} images, fanout {ns.fanout}, workers=1 per task, "
        f"one slot per Celery worker; medians of {ns.repeat} runs each"
    )
    print(format_rows(rows))
    print()
    print(format_imagenet(rows))
    print(f"\n(total {time.monotonic() - started:.0f} s)")
    if ns.json:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps({"conf": conf, "rows": rows, "runs": runs, "load": load}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
