"""``docker compose up`` of the repo's ``docker-compose.yaml``, run for real (see ``docs/compose.md``).

The stack is the file as shipped, with only its image variables pointed at images built here (a Debian
made with debootstrap; a minimal Airflow 3.3.2 honouring the official image's contract; PostgreSQL and
Redis from Debian's packages) and the project's image built from the repo's Dockerfile on them. Two Celery
workers (``--scale airflow-worker=2``). Then, as a user would:

- the sample set is written on the shared ``/data`` volume from inside a worker container;
- a run of each implementation is triggered through the REST API with the admin user (``fanout=4``);
  every unit's lock is held from the host (the volume's folder) until both workers run a units task, so
  "units ran in both worker containers" does not depend on timing;
- both runs succeed, their units ran in both worker containers (task instances' host names are the
  containers'), and the outputs on the volume are byte-identical to a local one-process run of the same
  params on the same sources;
- the API server serves each run's report view to the admin user, and refuses it without credentials;
- ``airflow-init`` exited 0, and ``docker compose down -v`` leaves no container, volume or network of the
  project behind.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.compose import images
from tests.compose.stack import ComposeStack, RestClient

pytestmark = pytest.mark.compose

DAG_ID = "mlperf_resnet_prep"
AIRFLOW_UID = 50000
SAMPLE = "sample"  # under /data
REFERENCE_PARAMS = {"train_shards": 8, "val_shards": 2}
OUTPUT_DIR = {"nvidia": "recordio", "reference": "tfrecords"}
SOURCES = {
    "train_source": "ILSVRC2012_img_train.tar",
    "val_source": "ILSVRC2012_img_val.tar",
    "labels_source": "imagenet_2012_validation_synset_labels.txt",
}


def output_files(data_dir: Path, implementation: str) -> dict[str, str]:
    """Every file of the output folder, hidden ones included, with its SHA-256."""
    folder = data_dir / OUTPUT_DIR[implementation]
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def local_run(sample: Path, implementation: str, data_dir: Path) -> tuple[dict[str, str], int]:
    """The output files (SHA-256) and unit count of a one-process run of the same params, here."""
    argv = [
        sys.executable, "-m", "airflow_resnet_prep.pipeline", "--data-dir", str(data_dir),
        "--train-source", str(sample / SOURCES["train_source"]),
        "--val-source", str(sample / SOURCES["val_source"]),
        "--labels-source", str(sample / SOURCES["labels_source"]),
        "--implementation", implementation, "--param", "workers=1",
    ]  # fmt: skip
    if implementation == "reference":
        argv += [f"--param={k}={v}" for k, v in REFERENCE_PARAMS.items()]
    subprocess.run(argv, check=True, capture_output=True, timeout=600)
    plan = json.loads((data_dir / "work" / implementation / "plan.json").read_text())
    return output_files(data_dir, implementation), len(plan["units"])


def makedirs_for_airflow(path: Path) -> None:
    """``mkdir -p`` on the volume from the host, each new folder owned by the containers' Airflow user."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o775)
        os.chown(folder, AIRFLOW_UID, 0)


@contextlib.contextmanager
def holding_units(data_dir: Path, implementation: str, units: int) -> Iterator[None]:
    """Hold every unit's lock (``work/<implementation>/done/<id>.lock``, the lock ``run_plan_unit`` takes) from
    the host: a units task that reaches a unit waits until the block ends. The volume is a folder of this
    machine, and flock works across the container boundary (one kernel)."""
    done = data_dir / "work" / implementation / "done"
    makedirs_for_airflow(done)
    fds = []
    try:
        for unit in range(units):
            path = done / f"{unit:05d}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o664)
            os.fchown(fd, AIRFLOW_UID, 0)
            fds.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.pwrite(fd, b"the compose test", 0)
        yield
    finally:
        for fd in fds:
            os.close(fd)


def wait_for(what: str, check, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(1)
    raise TimeoutError(f"{what}: not after {timeout} s")


def units_running(client: RestClient, run_id: str, implementation: str) -> list[dict[str, Any]]:
    return [
        ti
        for ti in client.task_instances(DAG_ID, run_id)
        if ti["task_id"] == f"{implementation}_units" and ti["state"] == "running"
    ]


def test_compose_up_runs_the_dag_on_two_workers(stack: ComposeStack, tmp_path):
    from airflow_resnet_prep.plugins.links import report_url

    log = stack.log
    started = time.monotonic()

    init = stack.containers("airflow-init")
    assert init, "no airflow-init container"
    assert all(c["State"]["Status"] == "exited" and c["State"]["ExitCode"] == 0 for c in init), (
        [c["State"] for c in init],
        stack.service_logs("airflow-init"),
    )
    workers = {
        c["Config"]["Hostname"]: c["Name"].lstrip("/") for c in stack.containers("airflow-worker", all=False)
    }
    assert len(workers) == 2, workers

    # The sample on the shared volume, written by the Airflow user inside a worker container.
    t = time.monotonic()
    stack.exec(
        "airflow-worker",
        "python",
        "-m",
        "airflow_resnet_prep.sample",
        "--out",
        f"/data/{SAMPLE}",
        timeout=600,
    )
    log.append(f"sample on /data: {time.monotonic() - t:.0f} s")
    volume = stack.volume_path()
    sources = {param: f"/data/{SAMPLE}/{name}" for param, name in SOURCES.items()}

    client = RestClient(f"http://127.0.0.1:{stack.variables['AIRFLOW_API_PORT']}")
    client.wait_dag(DAG_ID)
    client.unpause(DAG_ID)  # DAGs start paused (DAGS_ARE_PAUSED_AT_CREATION)

    for implementation in ("nvidia", "reference"):
        t = time.monotonic()
        files, units = local_run(volume / SAMPLE, implementation, tmp_path / f"local-{implementation}")
        assert units >= 2, f"{implementation}: {units} unit(s), cannot spread over two workers"
        data_dir = volume / "runs" / implementation
        conf = {
            "implementation": implementation,
            "data_dir": f"/data/runs/{implementation}",
            **sources,
            "fanout": 4,
            **(REFERENCE_PARAMS if implementation == "reference" else {}),
        }
        with holding_units(data_dir, implementation, units):
            run_id = client.trigger(DAG_ID, conf)
            # One slot per worker: two units tasks running at once are one on each worker.
            wait_for(
                f"{implementation}: two units tasks running",
                lambda run_id=run_id, implementation=implementation: (
                    len(units_running(client, run_id, implementation)) >= 2
                ),
                300,
            )
        state = client.wait_run(DAG_ID, run_id, timeout=600)
        assert state == "success", client.run_report(DAG_ID, run_id)
        log.append(
            f"{implementation} run through the REST API: {time.monotonic() - t:.0f} s (with the local run)"
        )

        tis = client.task_instances(DAG_ID, run_id)
        unit_hosts = {ti["hostname"] for ti in tis if ti["task_id"] == f"{implementation}_units"}
        assert unit_hosts == set(workers), (unit_hosts, workers, client.run_report(DAG_ID, run_id))
        assert output_files(data_dir, implementation) == files, (
            "outputs differ from a local run of the same params"
        )

        # The report view, behind Airflow's own access checks.
        url = report_url(DAG_ID, run_id, prefix="")
        response = client.api("GET", url)
        assert response.status_code == 200, (url, response.status_code, response.text[:500])
        assert "text/html" in response.headers.get("content-type", ""), response.headers
        anonymous = client.api("GET", url, auth=False)
        assert anonymous.status_code in (401, 403), (url, anonymous.status_code)

    log.append(f"test body: {time.monotonic() - started:.0f} s")
    stack.down()
    assert stack.leftovers() == {}, "docker compose down -v left these behind"
    assert not images.docker(
        "ps", "-aq", "--filter", f"label=com.docker.compose.project={stack.project}", timeout=60
    ).stdout.strip()
