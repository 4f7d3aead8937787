"""The DAG on a real Celery cluster (PostgreSQL, Redis, scheduler, DAG processor, two workers).

Runs are triggered through the REST API and polled, as a user's script would. Outputs are compared
byte for byte with a local one-process run of the same params (``python -m airflow_resnet_prep.pipeline
... --param workers=1``). Which worker ran a task instance comes from the workers' own logs: on one
machine every task instance reports the same host name.

To make "the units ran on both workers" and "a worker dies while it runs a unit" deterministic, a test
holds the lock of every unit (``work/<implementation>/done/<id>.lock``, the lock ``run_plan_unit`` takes)
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
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster.celery_cluster import DAG_ID, SECOND_DAG, CeleryCluster

pytestmark = pytest.mark.cluster

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
    """Hold every unit's lock: a task that reaches a unit waits (``run_plan_unit`` waits for a unit another
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


def check_consumer_saw(
    cluster: CeleryCluster, dag_id: str, run_id: str, implementation: str
) -> list[dict[str, Any]]:
    """The consumer DAG got ``run_id``'s Asset event with publish's paths; its events."""
    published = cluster.airflow.xcom(dag_id, run_id, "publish")
    events = consumer_events(cluster, run_id)
    extra = events[-1]["extra"]
    assert events[-1]["source_dag_id"] == dag_id
    assert extra["implementation"] == implementation
    assert extra["cached"] == published["cached"]
    for key, value in extra.items():
        if key.endswith("_path"):
            assert published[key] == value, key
    data = published[f"{'tfrecords' if implementation == 'reference' else 'preprocessed'}_path"]
    assert events[-1]["data"] == data
    if "://" not in data:  # a local folder the consumer can see (a bucket's URI is checked by its test)
        assert events[-1]["data_exists"]
    return events


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

# Runs whose publish the consumer DAG must have seen: (dag_id, run_id, implementation).
PUBLISHED: list[tuple[str, str, str]] = []


def run_spread(
    cluster: CeleryCluster, implementation: str, conf: dict[str, Any], held: AbstractContextManager[Any]
) -> tuple[str, dict[str, list[str]]]:
    """Trigger ``conf`` while ``held`` (every unit's lock taken here) keeps the mapped units waiting, let
    them go once two run at once (one per worker: a worker has one slot), and check the run succeeded
    with mapped units on every worker. Returns the run id and each mapped units task's workers."""
    with held:
        run_id = trigger(cluster, conf)
        wait_for(
            "two units tasks running",
            lambda: len(running_units(cluster, DAG_ID, run_id, implementation)) >= 2,
            cluster,
        )
    assert finish(cluster, run_id) == "success", run_report(cluster, DAG_ID, run_id)
    ran = cluster.ran_on(DAG_ID, run_id)
    mapped = {key: workers for key, workers in ran.items() if key.startswith(f"{implementation}_units[")}
    assert {w for workers in mapped.values() for w in workers} == set(cluster.worker_names), ran
    return run_id, mapped


@pytest.mark.parametrize("implementation", ["nvidia", "reference"])
def test_units_spread_over_both_workers_same_bytes(cluster, cluster_sources, expected, implementation):
    """fanout=4: the mapped units run on both workers; the outputs are those of a local run.

    The nvidia run writes the cluster's default data_dir with the default params, as the first build
    of a deployment would; the schedule test refreshes it later."""
    files, units = expected(implementation)
    if implementation == "nvidia":
        data_dir = Path(cluster.extra_env["AIRFLOW__RESNET_PREP__DATA_DIR"])
    else:
        data_dir = cluster.root / f"spread-{implementation}"
    conf = conf_for(implementation, data_dir, cluster_sources, fanout=4)
    run_id, mapped = run_spread(cluster, implementation, conf, holding_units(data_dir, implementation, units))
    assert len(mapped) == min(4, units)
    assert output_files(data_dir, implementation) == files
    PUBLISHED.append((DAG_ID, run_id, implementation))


def test_worker_killed_while_running_a_unit_with_auto_fanout(cluster, cluster_sources, expected):
    """fanout=0 (auto) under Celery makes several batches (8); then SIGKILL one worker (its whole
    process group: a lost node) while it runs a unit. The scheduler sees the task instance's heartbeat
    stop and retries it; the other worker runs it; same bytes, nothing extra in the output folder. The
    killed worker comes back only after the run (a lost machine does not return at once)."""
    files, units = expected("reference")
    data_dir = cluster.root / "killed-worker"
    victim, survivor = cluster.worker_names[:2]
    try:
        with holding_units(data_dir, "reference", units):
            run_id = trigger(cluster, conf_for("reference", data_dir, cluster_sources, fanout=0))
            running = wait_for(
                "two units tasks running",
                lambda: (r := running_units(cluster, DAG_ID, run_id, "reference")) and len(r) >= 2 and r,
                cluster,
            )
            ran = cluster.ran_on(DAG_ID, run_id)
            lost = [i for i in running if ran.get(f"reference_units[{i}]", [None])[-1] == victim]
            assert lost, (running, ran)
            cluster.kill_worker(victim)
            killed_at = time.monotonic()
        state = finish(cluster, run_id, timeout=300)
        print(
            f"worker killed: units tasks {lost} lost; the run ended {state} {time.monotonic() - killed_at:.0f} s later"
        )
        assert state == "success", run_report(cluster, DAG_ID, run_id)
        # Auto fanout: the plan split the units into batches, one mapped task each.
        tis = task_instances(cluster, DAG_ID, run_id)
        batches = cluster.airflow.xcom(DAG_ID, run_id, "reference_plan")
        assert len(batches) == min(8, units) > 1
        assert sorted(u for batch in batches for u in batch) == list(range(units))
        mapped = {ti["map_index"]: ti for ti in tis if ti["task_id"] == "reference_units"}
        assert sorted(mapped) == list(range(len(batches)))
        plan_ti = next(ti for ti in tis if ti["task_id"] == "reference_plan")
        assert f"{units} units in {len(batches)} batches" in task_log(cluster, DAG_ID, run_id, plan_ti)
        # The lost units were retried on the other worker.
        ran = cluster.ran_on(DAG_ID, run_id)
        for index in lost:
            assert ran[f"reference_units[{index}]"][0] == victim
            assert ran[f"reference_units[{index}]"][-1] == survivor
            assert mapped[index]["try_number"] >= 2  # a retry, not a redelivered message
        assert output_files(data_dir, "reference") == files  # same names (nothing extra) and bytes
        PUBLISHED.append((DAG_ID, run_id, "reference"))
    finally:
        if victim not in cluster.airflow.processes:
            cluster.start_worker(victim)


def test_broker_restart_mid_run(cluster, cluster_sources, expected):
    """Redis stopped while both units tasks run and started again (empty: no persistence, as
    configured), while the scheduler has the next task to queue: the run ends in Airflow's own state
    (success, or failed with its failed tasks named), never hangs; a rerun of a failed one finishes; the
    bytes are those of a local run."""
    files, units = expected("nvidia")
    data_dir = cluster.root / "broker-restart"
    conf = conf_for("nvidia", data_dir, cluster_sources, fanout=4)
    with holding_units(data_dir, "nvidia", units):
        run_id = trigger(cluster, conf)
        wait_for(
            "units running",
            lambda: len(running_units(cluster, DAG_ID, run_id, "nvidia")) >= min(2, units),
            cluster,
        )
        cluster.redis.stop()
    time.sleep(8)  # the units finish; the scheduler cannot queue nvidia_finish
    cluster.redis.start()
    state = finish(cluster, run_id, timeout=300)
    retried = {
        f"{ti['task_id']}[{ti['map_index']}]": ti["try_number"]
        for ti in task_instances(cluster, DAG_ID, run_id)
        if ti["try_number"] > 1
    }
    print(f"broker restart: the run ended {state}; tasks tried more than once: {retried}")
    if state != "success":
        failed = [ti["task_id"] for ti in task_instances(cluster, DAG_ID, run_id) if ti["state"] == "failed"]
        assert failed, run_report(cluster, DAG_ID, run_id)  # a failed run names its failed tasks
        run_id = trigger(cluster, conf)
        assert finish(cluster, run_id) == "success", run_report(cluster, DAG_ID, run_id)
    assert output_files(data_dir, "nvidia") == files
    PUBLISHED.append((DAG_ID, run_id, "nvidia"))
    cluster.airflow.check_alive()  # the workers lived through the broker's restart


def test_two_runs_on_one_data_dir(cluster, cluster_sources, expected):
    """Two DAGs (the repo's and a copy under another id) run at once on the same data_dir: each run
    either succeeds or fails with the data_dir lock named; at least one succeeds; same bytes."""
    files, _ = expected("nvidia")
    data_dir = cluster.root / "two-runs"
    conf = conf_for("nvidia", data_dir, cluster_sources, fanout=4)
    cluster.airflow.unpause(SECOND_DAG)
    try:
        runs = [(DAG_ID, trigger(cluster, conf)), (SECOND_DAG, trigger(cluster, conf, SECOND_DAG))]
        states = {(dag_id, run_id): finish(cluster, run_id, dag_id) for dag_id, run_id in runs}
    finally:
        cluster.airflow.api("PATCH", f"/api/v2/dags/{SECOND_DAG}", json={"is_paused": True})
    print(f"two runs on one data_dir: {states}")
    assert "success" in states.values(), {k: run_report(cluster, *k) for k in states}
    for (dag_id, run_id), state in states.items():
        if state == "success":
            # Not in PUBLISHED: two publishes of one Asset within a scheduler loop of each other reach an
            # Asset-scheduled DAG in one run, or the later one only with the next publish (Airflow 3.3.2
            # takes a consumer run's events up to its queue entry's time, and one entry serves both).
            continue
        logs = [
            task_log(cluster, dag_id, run_id, ti, try_number)
            for ti in task_instances(cluster, dag_id, run_id)
            if ti["state"] == "failed"
            for try_number in range(1, ti["try_number"] + 1)
        ]
        assert logs and all("another run is writing this data_dir" in log for log in logs), logs
    assert output_files(data_dir, "nvidia") == files


def test_asset_consumer_saw_every_publish(cluster):
    """The consumer DAG, scheduled on the Asset, ran after each publish and read the paths from the
    event's extra (checked last, so the consumer runs overlap the other tests' runs)."""
    if not PUBLISHED:
        # Alone (`-k`), there is nothing to check; in the whole module (as CI runs it) the runs above
        # always publish, so an empty list is a failure there.
        (pytest.fail if os.environ.get("CI") else pytest.skip)("no run published in this session")
    for dag_id, run_id, implementation in PUBLISHED:
        check_consumer_saw(cluster, dag_id, run_id, implementation)


def test_scheduled_refresh(cluster, cluster_sources, expected):
    """AIRFLOW__RESNET_PREP__SCHEDULE set to every minute on the deployment (DAG processor restarted with
    it), data_dir and sources from the env defaults: the scheduler starts runs by itself. A source was
    touched since the last build, so the first scheduled run rebuilds; the next takes reuse_existing and
    converts nothing, and the consumer is told ``cached``."""
    files, _ = expected("nvidia")
    data_dir = Path(cluster.extra_env["AIRFLOW__RESNET_PREP__DATA_DIR"])
    if not (data_dir / "manifest.json").exists():  # run alone: the first build, with the defaults
        run_id = trigger(cluster, {})
        assert finish(cluster, run_id) == "success", run_report(cluster, DAG_ID, run_id)
    os.utime(cluster_sources["train_source"])  # "a new download": same bytes, new mtime
    cluster.restart_with(["dag-processor"], {"AIRFLOW__RESNET_PREP__SCHEDULE": "* * * * *"})

    def scheduled_runs() -> list[dict[str, Any]]:
        response = cluster.airflow.api(
            "GET", f"/api/v2/dags/{DAG_ID}/dagRuns", params={"run_type": "scheduled", "order_by": "run_after"}
        )
        response.raise_for_status()
        return response.json()["dag_runs"]

    try:
        first = wait_for("a scheduled run", scheduled_runs, cluster, timeout=120)[0]["dag_run_id"]
        assert finish(cluster, first) == "success", run_report(cluster, DAG_ID, first)
        states = cluster.airflow.task_states(DAG_ID, first)
        assert states["nvidia_plan"] == "success" and states["reuse_existing"] == "skipped", states
        assert cluster.airflow.xcom(DAG_ID, first, "publish")["cached"] is False
        built = {p.name: p.stat().st_mtime_ns for p in (data_dir / "recordio").iterdir()}
        assert output_files(data_dir, "nvidia") == files

        second = wait_for("a second scheduled run", lambda: scheduled_runs()[1:], cluster, timeout=150)[0]
        assert finish(cluster, second["dag_run_id"]) == "success"
        states = cluster.airflow.task_states(DAG_ID, second["dag_run_id"])
        assert states["reuse_existing"] == "success", states
        assert states["nvidia_plan"] == states["nvidia_units"] == states["nvidia_finish"] == "skipped", states
        assert cluster.airflow.xcom(DAG_ID, second["dag_run_id"], "publish")["cached"] is True
        assert {p.name: p.stat().st_mtime_ns for p in (data_dir / "recordio").iterdir()} == built
        events = consumer_events(cluster, second["dag_run_id"])
        assert events[-1]["extra"]["cached"] is True
    finally:
        cluster.airflow.api("PATCH", f"/api/v2/dags/{DAG_ID}", json={"is_paused": True})
