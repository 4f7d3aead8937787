"""An Airflow 3 Celery cluster on this machine: PostgreSQL, Redis, ``airflow db migrate``, API server,
scheduler, DAG processor and N Celery workers, each its own process (group), all on 127.0.0.1.

::

    cluster = CeleryCluster(tmp / "cluster", dags=[REPO / "dags" / "mlperf_resnet_prep.py"])
    try:
        cluster.start()
        airflow = cluster.airflow            # a LiveAirflow: trigger(), wait_run(), api(), ...
        run_id = airflow.trigger("mlperf_resnet_prep", {...})
        airflow.wait_run("mlperf_resnet_prep", run_id)
        cluster.ran_on("mlperf_resnet_prep", run_id)   # {"reference_units[0]": ["worker-1"], ...}
    finally:
        cluster.stop()

The shared settings come from :mod:`tests.support.cluster.settings` (the list ``docker-compose.yaml`` is checked
against); :data:`TUNING` shortens the scheduler's intervals so that a test sees a dead worker in seconds
rather than minutes. Workers are told apart by their own logs (``home/logs/worker-<i>.log``): each logs
``Executing workload in Celery: ...`` with the task instance it runs, while every task instance reports
the same host name on one machine. Each worker has a HOME and a TMPDIR of its own
(``<root>/<worker>/home``, ``<root>/<worker>/tmp``), as on machines of their own; they share the Airflow
home, whose ``logs/`` the API server reads task logs from.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.support.cluster.services import Postgres, Redis
from tests.support.cluster.settings import SAME_VALUE
from tests.support.live_airflow import LiveAirflow, free_port

DAG_ID = "mlperf_resnet_prep"
SECOND_DAG = "mlperf_resnet_prep_second"  # the same DAG file under another id (a second DAG on one data_dir)

# Test-only settings (not in docker-compose.yaml): short intervals for a small, fast cluster.
TUNING = {
    "AIRFLOW__CORE__PARALLELISM": "8",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    # A SIGKILLed worker's task instances are failed (and retried) after 20 s without a heartbeat.
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
    # A task whose Celery message was lost (broker restarted without persistence) is re-queued after 60 s.
    # This is also the lifetime of a queued task's token: keep it above the longest wait in the queue.
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "60",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT_CHECK_INTERVAL": "10",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
    "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
    "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
    "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
}

_WORKLOAD = re.compile(r"Executing workload in Celery: (.*)$")
_FIELD = {
    name: re.compile(pattern)
    for name, pattern in {
        "task_id": r"task_id='([^']*)'",
        "dag_id": r"dag_id='([^']*)'",
        "run_id": r"run_id='([^']*)'",
        "try_number": r"try_number=(\d+)",
        "map_index": r"map_index=(-?\d+)",
    }.items()
}


def cluster_env(
    *, sql_alchemy_conn: str, result_backend: str, broker_url: str, api_url: str, concurrency: int
) -> dict[str, str]:
    """Every Airflow process's settings: those shared with docker-compose.yaml (:mod:`tests.support.cluster.settings`),
    this cluster's addresses, no schedule (a test sets one), then :data:`TUNING`."""
    return {
        **SAME_VALUE,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
        "AIRFLOW__CELERY__RESULT_BACKEND": result_backend,
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
        "AIRFLOW__RESNET_PREP__SCHEDULE": "",
        **TUNING,
    }


class ClusterAirflow(LiveAirflow):
    """LiveAirflow plus what a cluster test does to its processes: kill one, start it again."""

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process group of ``name`` (a lost node: the worker, its pool children and
        the task processes die together), wait for it, and forget it (so ``check_alive`` does not trip)."""
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # what the leader left behind
        log = self._log_files.pop(name, None)
        if log is not None:
            log.close()

    def terminate(self, name: str, timeout: float = 30) -> None:
        """SIGTERM the group of ``name`` (a worker finishes its tasks first), SIGKILL after ``timeout`` s."""
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
        self.kill(name)


class CeleryCluster:
    """PostgreSQL + Redis + Airflow (API server, scheduler, DAG processor) + ``workers`` Celery workers.

    :param root: a folder for everything (Airflow home, DAGs folder, Redis); PostgreSQL's data lives in
        a folder of its own under the temp dir (see :class:`tests.support.cluster.services.Postgres`).
    :param dags: DAG files to put in the DAGs folder (symlinked, so the repo's file is what runs).
    :param workers: how many Celery workers (``worker-1`` ...), each with its own ``--celery-hostname``
        and log server port.
    :param concurrency: task slots per worker (``--concurrency``).
    :param env: more settings for every process (e.g. ``AIRFLOW__RESNET_PREP__DATA_DIR``).
    """

    def __init__(
        self,
        root: Path,
        *,
        dags: Iterable[Path],
        workers: int = 2,
        concurrency: int = 1,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.dags_folder = self.root / "dags"
        self.dags_folder.mkdir(exist_ok=True)
        for dag in dags:
            link = self.dags_folder / Path(dag).name
            if not link.exists():
                link.symlink_to(Path(dag).resolve())
        self.concurrency = concurrency
        self.worker_names = [f"worker-{i}" for i in range(1, workers + 1)]
        self.extra_env = dict(env or {})
        self.postgres: Postgres | None = None
        self.redis: Redis | None = None
        self.airflow: ClusterAirflow | None = None
        self.timings: dict[str, float] = {}

    # -- life cycle --------------------------------------------------------------------------------

    def start(self, timeout: float = 180) -> CeleryCluster:
        """Start everything and wait until the API server, scheduler, DAG processor and every worker are
        up. On any failure, what was started is stopped before the error propagates."""
        t0 = time.monotonic()
        atexit.register(self.stop)  # a test process that exits without teardown leaves no server behind
        try:
            api_port = free_port()
            self.postgres = Postgres(free_port(avoid={api_port}))
            self.redis = Redis(self.root / "redis", free_port(avoid={api_port, self.postgres.port}))
            self.postgres.start()
            self.redis.start()
            self.timings["services_s"] = time.monotonic() - t0
            env = cluster_env(
                sql_alchemy_conn=self.postgres.url,
                result_backend=self.postgres.result_backend,
                broker_url=self.redis.url,
                api_url=f"http://127.0.0.1:{api_port}",
                concurrency=self.concurrency,
            )
            env["AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT"] = str(free_port(avoid={api_port}))
            env.update(self.extra_env)
            self.airflow = ClusterAirflow(
                self.root / "home", dags_folder=self.dags_folder, env=env, port=api_port
            )
            self.airflow.migrate()
            self.timings["migrate_s"] = time.monotonic() - t0
            self.airflow.start(("api-server", "scheduler", "dag-processor"))
            for name in self.worker_names:
                self.start_worker(name, wait=False)
            self.airflow.wait_healthy(timeout=timeout)
            for name in self.worker_names:
                self.wait_worker(name, timeout=timeout)
            self.timings["start_s"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every Airflow process, then Redis and PostgreSQL. Idempotent; never raises on the way."""
        if self.airflow is not None:
            with contextlib.suppress(Exception):
                self.airflow.stop()
        for service in (self.redis, self.postgres):
            if service is not None:
                with contextlib.suppress(Exception):
                    service.stop()

    def __enter__(self) -> CeleryCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- workers -----------------------------------------------------------------------------------

    def worker_log(self, name: str) -> Path:
        assert self.airflow is not None
        return self.airflow.logs / f"{name}.log"

    def worker_dirs(self, name: str) -> dict[str, Path]:
        """The worker's own ``HOME`` and ``TMPDIR`` (created; kept across its restarts)."""
        dirs = {"HOME": self.root / name / "home", "TMPDIR": self.root / name / "tmp"}
        for folder in dirs.values():
            folder.mkdir(parents=True, exist_ok=True)
        return dirs

    def start_worker(self, name: str, *, wait: bool = True, timeout: float = 120) -> None:
        """``airflow celery worker`` named ``name@<host>``, with its own log server port, pid file, HOME and
        TMPDIR."""
        assert self.airflow is not None
        self._ready_offset = getattr(self, "_ready_offset", {})
        log = self.worker_log(name)
        self._ready_offset[name] = log.stat().st_size if log.exists() else 0
        own = {variable: str(folder) for variable, folder in self.worker_dirs(name).items()}
        self.airflow.spawn(
            name,
            [
                "airflow",
                "celery",
                "worker",
                "--celery-hostname",
                f"{name}@%h",
                "--concurrency",
                str(self.concurrency),
                "--pid",
                str(self.airflow.home / f"{name}.pid"),
                # Airflow's log server binds every interface (no host setting): not here, where every server
                # stays on 127.0.0.1. Task logs land in the shared AIRFLOW_HOME/logs, which the API server
                # reads directly. Each worker still gets a port of its own, as on a shared host.
                "--skip-serve-logs",
            ],
            env={
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port(avoid={self.airflow.port})),
                **own,
            },
        )
        if wait:
            self.wait_worker(name, timeout=timeout)

    def wait_worker(self, name: str, timeout: float = 120) -> None:
        """Wait until the worker has connected to the broker and logged ``<name>@<host> ready.``."""
        assert self.airflow is not None
        deadline = time.monotonic() + timeout
        ready = f"{name}@{socket.gethostname()} ready."
        while time.monotonic() < deadline:
            self.airflow.check_alive()
            with contextlib.suppress(FileNotFoundError), open(self.worker_log(name), "rb") as fh:
                fh.seek(self._ready_offset.get(name, 0))
                if ready.encode() in fh.read():
                    return
            time.sleep(0.3)
        raise TimeoutError(f"{name} not ready after {timeout} s:\n{self.airflow.log_tail(name)}")

    def kill_worker(self, name: str) -> None:
        """SIGKILL the worker's whole process group, as when its machine is lost."""
        assert self.airflow is not None
        self.airflow.kill(name)

    def restart_with(self, components: Iterable[str], env: Mapping[str, str]) -> None:
        """Set ``env`` on every process from now on and restart ``components`` (``dag-processor``,
        ``scheduler``, worker names) with it: how an operator changes a setting of the deployment."""
        assert self.airflow is not None
        self.airflow.env.update(env)
        components = list(components)
        for name in components:
            if name in self.airflow.processes:
                self.airflow.terminate(name)
        for name in components:
            if name in self.worker_names:
                self.start_worker(name, wait=False)
            else:
                self.airflow.spawn(name, ["airflow", *name.split()])
        for name in components:
            if name in self.worker_names:
                self.wait_worker(name)
        self.airflow.wait_healthy()

    # -- who ran what ------------------------------------------------------------------------------

    def workloads(self, name: str) -> list[dict[str, str]]:
        """Every task instance the worker ``name`` was handed, from its own log, in order."""
        found = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.worker_log(name).read_text(errors="replace").splitlines():
                match = _WORKLOAD.search(line)
                if match:
                    fields = {
                        k: (m.group(1) if (m := p.search(match.group(1))) else "") for k, p in _FIELD.items()
                    }
                    found.append({**fields, "worker": name})
        return found

    def ran_on(self, dag_id: str, run_id: str) -> dict[str, list[str]]:
        """``{"task_id[map_index]": [worker of try 1, worker of try 2, ...]}`` for one DAG run."""
        result: dict[str, list[tuple[int, str]]] = {}
        for name in self.worker_names:
            for w in self.workloads(name):
                if w["dag_id"] == dag_id and w["run_id"] == run_id:
                    key = w["task_id"] + (f"[{w['map_index']}]" if int(w["map_index"] or -1) >= 0 else "")
                    result.setdefault(key, []).append((int(w["try_number"] or 0), name))
        return {key: [name for _, name in sorted(tries)] for key, tries in result.items()}


def copy_dag(source: Path, folder: Path) -> Path:
    """Copy a DAG file into a DAGs folder (for DAGs that are templates rather than repo files)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(source, folder / source.name))
