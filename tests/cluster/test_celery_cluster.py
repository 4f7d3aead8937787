"""The DAG on a real Celery cluster (PostgreSQL, Redis, scheduler, DAG processor, two workers).

Runs are triggered through the REST API and polled, as a user's script would. Outputs are compared
byte for byte with a local one-process run of the same params (``python -m airflow_resnet_prep.pipeline
... --param workers=1``). Which worker ran a task instance comes from the workers' own logs: on one
machine every task instance reports the same host name.

To make "the units ran on both workers" and "a worker dies while it runs a unit" deterministic, a test
holds the lock of every unit (``work/<implementation>/done/<id>.lock``, the lock ``run_unit`` takes)
before the run starts: the mapped tasks start, block at their first unit, and are released once the
test has seen what it needs (each worker holds one of them, since a worker has one slot).

The tests share one cluster and run in file order; the schedule test comes last, as it leaves the DAG
with a schedule.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.celery_cluster import CeleryCluster

pytestmark = pytest.mark.cluster

DAG_ID = "mlperf_resnet_prep"
SECOND_DAG = "mlperf_resnet_prep_second"
REFERENCE_PARAMS = {"train_shards": 8, "val_shards": 2}
OUTPUT_DIR = {"nvidia": "recordio", "reference": "tfrecords"}


# -- helpers -------------------------------------------------------------------------------------------


def conf_for(implementation: str, data_dir: Path, sources: dict[str, str], **extra: Any) -> dict[str, Any]:
    conf = {"implementation": implementation, "data_dir": str(data_dir), **sources}
    if implementation == "reference":
        conf.update(REFERENCE_PARAMS)
    return {**conf, **extra}


def output_files(data_dir: Path, implementation: str) -> dict[str, str]:
    """Every file of the output folder, hidden ones included, with its SHA-256."""
    folder = Path(data_dir) / OUTPUT_DIR[implementation]
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def unit_count(data_dir: Path, implementation: str) -> int:
    plan = json.loads((Path(data_dir) / "work" / implementation / "plan.json").read_text())
    return len(plan["units"])


@contextlib.contextmanager
def holding_units(data_dir: Path, implementation: str, units: int) -> Iterator[None]:
    """Hold every unit's lock: a task that reaches a unit waits (``run_unit`` waits for a unit another
    process holds) until the block ends."""
    done = Path(data_dir) / "work" / implementation / "done"
    done.mkdir(parents=True, exist_ok=True)
    fds = []
    try:
        for unit in range(units):
            fd = os.open(done / f"{unit:05d}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.pwrite(fd, b"the cluster test", 0)
        yield
    finally:
        for fd in fds:
            os.close(fd)


def task_instances(cluster: CeleryCluster, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    response = cluster.airflow.api(
        "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000}
    )
    response.raise_for_status()
    return response.json()["task_instances"]


def wait_for(what: str, check: Callable[[], Any], cluster: CeleryCluster, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cluster.airflow.check_alive()
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not after {timeout} s")


def running_units(cluster: CeleryCluster, dag_id: str, run_id: str, implementation: str) -> list[int]:
    return [
        ti["map_index"]
        for ti in task_instances(cluster, dag_id, run_id)
        if ti["task_id"] == f"{implementation}_units" and ti["state"] == "running"
    ]


def run_report(cluster: CeleryCluster, dag_id: str, run_id: str) -> str:
    """What a failed assertion shows: task states, who ran what, failed tasks' logs."""
    lines = [json.dumps(cluster.airflow.task_states(dag_id, run_id), indent=1)]
    lines.append("ran on: " + json.dumps(cluster.ran_on(dag_id, run_id)))
    for ti in task_instances(cluster, dag_id, run_id):
        if ti["state"] in {"failed", "up_for_retry", "upstream_failed"}:
            lines.append(f"--- {ti['task_id']}[{ti['map_index']}] try {ti['try_number']}: {ti['state']}")
            lines.append(task_log(cluster, dag_id, run_id, ti)[-3000:])
    return "\n".join(lines)


def task_log(
    cluster: CeleryCluster, dag_id: str, run_id: str, ti: dict[str, Any], try_number: int = 0
) -> str:
    """A task instance's log as the REST API serves it (one line per event)."""
    response = cluster.airflow.api(
        "GET",
        f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/"
        f"{try_number or ti['try_number']}",
        params={"map_index": ti["map_index"], "full_content": True},
        headers={"Accept": "application/json"},
    )
    if not response.ok:
        return f"(log: HTTP {response.status_code})"
    content = response.json().get("content", [])
    if isinstance(content, str):
        return content
    return "\n".join(
        (c.get("event", "") + " " + str(c.get("error_detail", ""))) if isinstance(c, dict) else str(c)
        for c in content
    )


def consumer_events(cluster: CeleryCluster, run_id: str, timeout: float = 90) -> list[dict[str, Any]]:
    """The Asset events of ``run_id`` the consumer DAG saw (waits for its run)."""
    path = Path(cluster.extra_env["PREPARED_CONSUMER_LOG"])

    def seen() -> list[dict[str, Any]]:
        if not path.exists():
            return []
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [e for e in events if e["source_run_id"] == run_id]

    return wait_for(f"the consumer DAG's run for {run_id}", seen, cluster, timeout)


def check_consumer_saw(cluster: CeleryCluster, dag_id: str, run_id: str, implementation: str) -> None:
    published = cluster.airflow.xcom(dag_id, run_id, "publish")
    events = consumer_events(cluster, run_id)
    extra = events[-1]["extra"]
    assert events[-1]["source_dag_id"] == dag_id
    assert extra["implementation"] == implementation
    assert extra["cached"] == published["cached"]
    for key, value in extra.items():
        if key.endswith("_path"):
            assert published[key] == value, key
    assert (
        events[-1]["data"]
        == published[f"{'tfrecords' if implementation == 'reference' else 'preprocessed'}_path"]
    )
    assert events[-1]["data_exists"]


@pytest.fixture(scope="module")
def expected(tmp_path_factory, cluster_sources) -> Callable[[str], tuple[dict[str, str], int]]:
    """``expected(implementation)``: the output files (SHA-256) and unit count of a local one-process run
    of the params the cluster runs use (fanout and workers never change a byte)."""
    cache: dict[str, tuple[dict[str, str], int]] = {}

    def get(implementation: str) -> tuple[dict[str, str], int]:
        if implementation not in cache:
            data_dir = tmp_path_factory.mktemp(f"local-{implementation}")
            argv = [
                sys.executable, "-m", "airflow_resnet_prep.pipeline", "--data-dir", str(data_dir),
                "--train-source", cluster_sources["train_source"], "--val-source", cluster_sources["val_source"],
                "--labels-source", cluster_sources["labels_source"], "--implementation", implementation,
                "--param", "workers=1",
            ]  # fmt: skip
            if implementation == "reference":
                argv += [f"--param={k}={v}" for k, v in REFERENCE_PARAMS.items()]
            subprocess.run(argv, check=True, capture_output=True, timeout=300)
            cache[implementation] = (
                output_files(data_dir, implementation),
                unit_count(data_dir, implementation),
            )
        return cache[implementation]

    return get


def trigger(cluster: CeleryCluster, conf: dict[str, Any], dag_id: str = DAG_ID) -> str:
    return cluster.airflow.trigger(dag_id, conf)


def finish(cluster: CeleryCluster, run_id: str, dag_id: str = DAG_ID, timeout: float = 300) -> str:
    return cluster.airflow.wait_run(dag_id, run_id, timeout=timeout)


# -- tests ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["nvidia", "reference"])
def test_units_spread_over_both_workers_same_bytes(cluster, cluster_sources, expected, implementation):
    """fanout=4: the mapped units run on both workers; the outputs are those of a local run; the
    consumer DAG scheduled on the Asset runs and reads the paths from the event."""
    files, units = expected(implementation)
    data_dir = cluster.root / f"spread-{implementation}"
    with holding_units(data_dir, implementation, units):
        run_id = trigger(cluster, conf_for(implementation, data_dir, cluster_sources, fanout=4))
        # Two units tasks running at once are on two workers (one slot each).
        wait_for(
            "two units tasks running",
            lambda: len(running_units(cluster, DAG_ID, run_id, implementation)) >= 2,
            cluster,
        )
    assert finish(cluster, run_id) == "success", run_report(cluster, DAG_ID, run_id)
    ran = cluster.ran_on(DAG_ID, run_id)
    mapped = {key: workers for key, workers in ran.items() if key.startswith(f"{implementation}_units[")}
    assert len(mapped) == min(4, units)
    assert {w for workers in mapped.values() for w in workers} == set(cluster.worker_names), ran
    assert output_files(data_dir, implementation) == files
    check_consumer_saw(cluster, DAG_ID, run_id, implementation)


def test_auto_fanout_splits_the_units_under_celery(cluster, cluster_sources, expected):
    """fanout=0 (auto) with the Celery executor: the plan makes several batches (8), not one."""
    files, units = expected("reference")
    data_dir = cluster.root / "auto-fanout"
    run_id = trigger(cluster, conf_for("reference", data_dir, cluster_sources, fanout=0))
    assert finish(cluster, run_id) == "success", run_report(cluster, DAG_ID, run_id)
    batches = cluster.airflow.xcom(DAG_ID, run_id, "reference_plan")
    assert len(batches) == min(8, units) > 1
    assert sorted(u for batch in batches for u in batch) == list(range(units))
    mapped = [ti for ti in task_instances(cluster, DAG_ID, run_id) if ti["task_id"] == "reference_units"]
    assert len(mapped) == len(batches)
    plan_ti = next(ti for ti in task_instances(cluster, DAG_ID, run_id) if ti["task_id"] == "reference_plan")
    assert f"{units} units in {len(batches)} batches" in task_log(cluster, DAG_ID, run_id, plan_ti)
    assert output_files(data_dir, "reference") == files


def test_worker_killed_while_running_a_unit(cluster, cluster_sources, expected):
    """SIGKILL one worker (its whole process group: a lost node) while it runs a unit: the scheduler sees
    the task instance's heartbeat stop, retries it, the other worker runs it; same bytes, nothing left
    behind. The killed worker comes back only after the run (a lost machine does not return at once)."""
    files, units = expected("reference")
    data_dir = cluster.root / "killed-worker"
    victim, survivor = cluster.worker_names[:2]
    try:
        with holding_units(data_dir, "reference", units):
            run_id = trigger(cluster, conf_for("reference", data_dir, cluster_sources, fanout=4))
            running = wait_for(
                "two units tasks running",
                lambda: (r := running_units(cluster, DAG_ID, run_id, "reference")) and len(r) >= 2 and r,
                cluster,
            )
            ran = cluster.ran_on(DAG_ID, run_id)
            lost = [i for i in running if ran.get(f"reference_units[{i}]", [None])[-1] == victim]
            assert lost, (running, ran)
            cluster.kill_worker(victim)
        state = finish(cluster, run_id, timeout=300)
        assert state == "success", run_report(cluster, DAG_ID, run_id)
        ran = cluster.ran_on(DAG_ID, run_id)
        tis = {
            ti["map_index"]: ti
            for ti in task_instances(cluster, DAG_ID, run_id)
            if ti["task_id"] == "reference_units"
        }
        for index in lost:
            assert ran[f"reference_units[{index}]"][0] == victim
            assert ran[f"reference_units[{index}]"][-1] == survivor
            assert tis[index]["try_number"] >= 2  # retried, not redelivered
        assert output_files(data_dir, "reference") == files  # same names (nothing extra) and bytes
    finally:
        if victim not in cluster.airflow.processes:
            cluster.start_worker(victim)


def test_broker_restart_mid_run(cluster, cluster_sources, expected):
    """Redis stopped while units run and started again (empty: no persistence, as configured): the run
    ends in Airflow's own state (success, or failed naming its tasks), never hangs; a rerun of a failed
    one finishes; the bytes are those of a local run."""
    files, units = expected("nvidia")
    data_dir = cluster.root / "broker-restart"
    conf = conf_for("nvidia", data_dir, cluster_sources, fanout=4)
    with holding_units(data_dir, "nvidia", units):
        run_id = trigger(cluster, conf)
        wait_for("units running", lambda: running_units(cluster, DAG_ID, run_id, "nvidia"), cluster)
        cluster.redis.stop()
    time.sleep(8)  # the units finish; the scheduler cannot queue what follows
    cluster.redis.start()
    state = finish(cluster, run_id, timeout=300)
    if state != "success":
        rerun = trigger(cluster, conf)
        assert finish(cluster, rerun) == "success", run_report(cluster, DAG_ID, rerun)
    assert output_files(data_dir, "nvidia") == files
