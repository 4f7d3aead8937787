"""A real Airflow (API server, scheduler, DAG processor, ...) started for a test, on 127.0.0.1.

Each component runs as its own process (its own process group) from the ``airflow`` of the venv running the tests,
with its output in ``home/logs/<name>.log``; ``stop()`` ends them all, is always safe to call, and also
runs when the test process exits::

    airflow = LiveAirflow(tmp_path / "airflow", dags_folder=REPO / "dags")
    try:
        airflow.migrate()
        airflow.start()                      # api-server, scheduler, dag-processor
        airflow.wait_healthy(timeout=90)
        airflow.wait_dag("mlperf_resnet_prep", timeout=90)
        run_id = airflow.trigger("mlperf_resnet_prep", {"data_dir": ...})
        assert airflow.wait_run("mlperf_resnet_prep", run_id, timeout=120) == "success"
    finally:
        airflow.stop()

Defaults (every one can be overridden through ``env``): LocalExecutor, SQLite in ``home/airflow.db``,
``parallelism`` 4, one API worker, no example DAGs, DAGs unpaused at creation, the simple auth manager
in all-admins mode (pass ``auth=(user, password)`` for one admin user with a password instead, so that
requests without credentials are refused). The API server and both log servers get free ports (never
8793/8794, the log servers' defaults, which another Airflow on the machine may hold), and
``[core] execution_api_server_url`` points task processes at this API server.

A cluster test passes e.g. ``env={"AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://...", "AIRFLOW__CELERY__BROKER_URL": ...}``
and starts workers with ``spawn("worker-1", ["airflow", "celery", "worker", ...], env={...})``.

Variables of the test process are inherited except ``AIRFLOW_HOME``, ``AIRFLOW__*`` and ``AIRFLOW_CONN_*``
/ ``AIRFLOW_VAR_*`` (the test session's own Airflow settings, e.g. unit-test mode, must not leak in).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import requests

REPO = Path(__file__).resolve().parents[2]
_RESERVED_PORTS = {8080, 8793, 8794}
_STRIPPED_PREFIXES = ("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_")
FINAL_RUN_STATES = {"success", "failed"}


def free_port(avoid: Iterable[int] = ()) -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it), never one of Airflow's usual ports."""
    avoid = set(avoid) | _RESERVED_PORTS
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port
    raise RuntimeError("no free port found")


def airflow_executable() -> str:
    """The ``airflow`` beside this Python (the venv running the tests: the latest or the floor Airflow),
    else the project's ``.venv/bin/airflow``, else the one on PATH."""
    for candidate in (Path(sys.executable).parent / "airflow", REPO / ".venv" / "bin" / "airflow"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("airflow")
    if not found:
        raise FileNotFoundError("no airflow executable: run `make install` first")
    return found


class AirflowProcessDied(RuntimeError):
    """A component exited while the test was waiting for it; the message holds the end of its log."""


class LiveAirflow:
    """An Airflow installation in ``home`` whose components run as separate processes on 127.0.0.1.

    :param home: ``AIRFLOW_HOME`` (created if missing); holds the SQLite DB by default, ``airflow.cfg``
        and ``logs/<component>.log`` (task logs go to ``logs/`` too, in Airflow's own layout).
    :param dags_folder: ``[core] dags_folder``.
    :param env: variables set on every process, applied last: override any default here
        (executor, ``sql_alchemy_conn``, broker, ...).
    :param port: the API server's port; default a free one.
    :param auth: ``None`` for the simple auth manager's all-admins mode (no login; every request is an
        admin's), or ``(username, password)`` for one ``admin`` user with that password: then requests
        need a token (``token()``) or a session cookie.
    :param airflow: the ``airflow`` executable; default the project's venv.
    """

    def __init__(
        self,
        home: Path,
        *,
        dags_folder: Path,
        env: Mapping[str, str] | None = None,
        port: int | None = None,
        auth: tuple[str, str] | None = None,
        airflow: str | None = None,
    ) -> None:
        self.home = Path(home).resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs = self.home / "logs"
        self.logs.mkdir(exist_ok=True)
        self.airflow = airflow or airflow_executable()
        self.port = port or free_port()
        self.auth = auth
        self.host = "127.0.0.1"
        self.base_url = f"http://{self.host}:{self.port}"
        self.processes: dict[str, subprocess.Popen] = {}
        self._log_files: dict[str, Any] = {}
        self._token: str | None = None
        self._atexit = False

        worker_log_port = free_port(avoid={self.port})
        trigger_log_port = free_port(avoid={self.port, worker_log_port})
        base = {
            k: v
            for k, v in os.environ.items()
            if k != "AIRFLOW_HOME" and not k.startswith(_STRIPPED_PREFIXES)
        }
        defaults = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(Path(dags_folder).resolve()),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.home / 'airflow.db'}",
            "AIRFLOW__CORE__PARALLELISM": "4",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__API__HOST": self.host,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(worker_log_port),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(trigger_log_port),
            # One secret for every process (tokens made by the API server are checked by the others).
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__FERNET_KEY": "",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
        }
        if auth is None:
            defaults["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "True"
        else:
            username, password = auth
            passwords = self.home / "simple_auth_manager_passwords.json"
            passwords.write_text(json.dumps({username: password}) + "\n")
            passwords.chmod(0o600)
            defaults["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] = "False"
            defaults["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] = f"{username}:admin"
            defaults["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(passwords)
        self.env: dict[str, str] = {**base, **defaults, **(env or {})}

    # -- processes ---------------------------------------------------------------------------------

    def _argv(self, argv: list[str]) -> list[str]:
        return [self.airflow, *argv[1:]] if argv and argv[0] == "airflow" else list(argv)

    def run(self, argv: list[str], *, timeout: float = 300, env: Mapping[str, str] | None = None) -> str:
        """Run a command to completion with this installation's env (``airflow`` = the venv's); its output."""
        result = subprocess.run(
            self._argv(argv),
            env={**self.env, **(env or {})},
            cwd=self.home,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode:
            raise RuntimeError(f"{argv} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def migrate(self, timeout: float = 300) -> None:
        """``airflow db migrate``: create or upgrade the metadata database."""
        self.run(["airflow", "db", "migrate"], timeout=timeout)

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
        """Start ``argv`` (``airflow`` as its first word means the venv's) in its own process group.

        It gets this installation's env plus ``env``, runs in ``home``, writes stdout and stderr to
        ``home/logs/<name>.log``, and is stopped by ``stop()``. ``name`` must be unique.
        """
        if name in self.processes and self.processes[name].poll() is None:
            raise ValueError(f"a process named {name!r} is already running")
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (closed by stop())
        self._log_files[name] = log
        process = subprocess.Popen(
            self._argv(argv),
            env={**self.env, **(env or {})},
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches its children too
        )
        self.processes[name] = process
        if not self._atexit:
            atexit.register(self.stop)  # a test process that exits without teardown leaves nothing behind
            self._atexit = True
        return process

    def start(self, components: Iterable[str] = ("api-server", "scheduler", "dag-processor")) -> None:
        """Start each component (``airflow <component>``: api-server, scheduler, dag-processor, triggerer)."""
        for component in components:
            argv = ["airflow", *component.split()]
            if component == "api-server":
                argv += ["--host", self.host, "--port", str(self.port)]
            self.spawn(component, argv)

    def check_alive(self) -> None:
        """Raise :class:`AirflowProcessDied` (with the end of its log) if a started process has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AirflowProcessDied(
                    f"{name} exited with {process.returncode}; end of {self.logs / (name + '.log')}:\n"
                    + self.log_tail(name)
                )

    def log_tail(self, name: str, lines: int = 60) -> str:
        """The last ``lines`` lines of ``home/logs/<name>.log``."""
        path = self.logs / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM every process group, wait up to ``timeout`` s, then SIGKILL what is left. Idempotent."""
        for process in self.processes.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
        for process in self.processes.values():
            # The group may outlive its leader (task processes, gunicorn/uvicorn workers): kill it too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
        for log in self._log_files.values():
            log.close()
        self._log_files.clear()
        self.processes.clear()

    def __enter__(self) -> LiveAirflow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP --------------------------------------------------------------------------------------

    def token(self, *, refresh: bool = False) -> str:
        """A bearer token for the REST API (cached): ``GET /auth/token`` in all-admins mode, else a login."""
        if self._token is None or refresh:
            if self.auth is None:
                response = requests.get(f"{self.base_url}/auth/token", timeout=30)
            else:
                username, password = self.auth
                response = requests.post(
                    f"{self.base_url}/auth/token",
                    json={"username": username, "password": password},
                    timeout=30,
                )
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, *, auth: bool = True, **kw: Any) -> requests.Response:
        """A request to ``base_url + path`` (``path`` starts with ``/``), with the bearer token unless ``auth=False``."""
        headers = dict(kw.pop("headers", None) or {})
        if auth:
            headers.setdefault("Authorization", f"Bearer {self.token()}")
        kw.setdefault("timeout", 30)
        return requests.request(method, self.base_url + path, headers=headers, **kw)

    def wait_healthy(self, timeout: float = 120) -> None:
        """Wait until the API server answers and the metadata DB and every started scheduler and DAG
        processor report healthy; raise early if a process died, ``TimeoutError`` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                response = requests.get(f"{self.base_url}/api/v2/monitor/health", timeout=5)
                last = response.text
                if response.ok:
                    health = response.json()
                    wanted = ["metadatabase"]
                    if "scheduler" in self.processes:
                        wanted.append("scheduler")
                    if "dag-processor" in self.processes:
                        wanted.append("dag_processor")
                    if "triggerer" in self.processes:
                        wanted.append("triggerer")
                    if all((health.get(k) or {}).get("status") == "healthy" for k in wanted):
                        return
            except requests.RequestException as exc:
                last = exc
            time.sleep(0.5)
        raise TimeoutError(f"Airflow not healthy after {timeout} s (last answer: {last})")

    def wait_dag(self, dag_id: str, timeout: float = 120) -> dict:
        """Wait until the DAG processor has stored ``dag_id``; its ``GET /api/v2/dags/{dag_id}``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            response = self.api("GET", f"/api/v2/dags/{dag_id}")
            if response.ok:
                return response.json()
            time.sleep(1)
        errors = self.api("GET", "/api/v2/importErrors").text
        raise TimeoutError(f"DAG {dag_id} not parsed after {timeout} s; import errors: {errors}")

    def unpause(self, dag_id: str) -> None:
        """Unpause ``dag_id`` (needed only when ``dags_are_paused_at_creation`` is overridden to True)."""
        response = self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})
        response.raise_for_status()

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Create a manual run of ``dag_id`` with ``conf`` through the REST API; its run id."""
        response = self.api(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf or {})}
        )
        if not response.ok:
            raise RuntimeError(f"trigger {dag_id}: HTTP {response.status_code}: {response.text}")
        return response.json()["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        """The current state of a DAG run (queued, running, success, failed)."""
        response = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        response.raise_for_status()
        return response.json()["state"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 300) -> str:
        """Wait until the run is ``success`` or ``failed``; that state. ``TimeoutError`` names the
        task states reached when it does not end in ``timeout`` s; raises early if a component died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            state = self.run_state(dag_id, run_id)
            if state in FINAL_RUN_STATES:
                return state
            time.sleep(1)
        raise TimeoutError(
            f"run {run_id} of {dag_id} still {self.run_state(dag_id, run_id)} after {timeout} s; tasks: "
            + json.dumps(self.task_states(dag_id, run_id))
        )

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        """``{task_id[map_index]: state}`` for every task instance of the run."""
        response = self.api(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000}
        )
        response.raise_for_status()
        states = {}
        for ti in response.json()["task_instances"]:
            key = ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")
            states[key] = ti["state"]
        return states

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """The value of one XCom of a run (deserialized, as the API returns it)."""
        response = self.api(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}",
            params={"deserialize": True, "stringify": False},
        )
        response.raise_for_status()
        return response.json()["value"]
