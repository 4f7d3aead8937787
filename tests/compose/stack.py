"""The repo's ``docker-compose.yaml`` started for a test, and the REST API as a user's script calls it.

``ComposeStack`` runs the compose CLI on the repo's file under a project name of its own, with a clean
environment (nothing of the test session's ``AIRFLOW_*`` leaks in, no ``.env``), its own folder for the
mounted ``dags``/``logs``/``config``/``plugins`` (a copy of the repo's ``dags/``), and the API server on a
free port of 127.0.0.1. Every call is wrapped in ``timeout -k`` (``images.run``).

``RestClient`` logs in with the admin user (``POST /auth/token``, the FAB auth manager) and calls
``/api/v2`` as a script outside the stack would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from tests.compose import images

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
PROJECT = "airflow-resnet-prep-compose-test"
ADMIN = ("airflow", "airflow")
DATA_VOLUME = "mlperf-data"
FINAL_RUN_STATES = {"success", "failed"}
# Tries of an idempotent REST call that times out (60 s each).
API_ATTEMPTS = 4
# Variables of the test process that the compose CLI and docker need (nothing of Airflow's).
_PASSED = ("PATH", "HOME", "LANG", "LC_ALL", "DOCKER_HOST", "DOCKER_CONFIG", "XDG_RUNTIME_DIR", "TMPDIR")


@dataclass
class ComposeStack:
    """The stack of ``docker-compose.yaml`` for one test session (see the module's doc)."""

    root: Path
    compose_cli: list[str]
    variables: dict[str, str]
    project: str = PROJECT
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.proj_dir = self.root / "airflow"
        shutil.copytree(REPO / "dags", self.proj_dir / "dags", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("logs", "config", "plugins"):
            (self.proj_dir / name).mkdir(parents=True, exist_ok=True)
        (self.root / "imagenet").mkdir(exist_ok=True)
        self.env_file = self.root / "empty.env"
        self.env_file.write_text("")

    @property
    def env(self) -> dict[str, str]:
        env = {k: os.environ[k] for k in _PASSED if k in os.environ}
        return {
            **env,
            "DOCKER_BUILDKIT": "0",
            "COMPOSE_PROJECT_NAME": self.project,
            "AIRFLOW_UID": "50000",
            "AIRFLOW_PROJ_DIR": str(self.proj_dir),
            "IMAGENET_DIR": str(self.root / "imagenet"),
            **self.variables,
        }

    def compose(self, *args: str, timeout: float = 300, check: bool = True):
        argv = [
            *self.compose_cli, "--project-name", self.project, "--file", str(COMPOSE_FILE),
            "--env-file", str(self.env_file), *args,
        ]  # fmt: skip
        return images.run(argv, timeout, check=check, env=self.env, cwd=REPO)

    def timed(self, what: str, *args: str, timeout: float = 300):
        started = time.monotonic()
        result = self.compose(*args, timeout=timeout)
        self.log.append(f"{what}: {time.monotonic() - started:.0f} s")
        return result

    # -- state -----------------------------------------------------------------------------------------

    def containers(self, service: str | None = None, *, all: bool = True) -> list[dict[str, Any]]:
        """``docker inspect`` of the project's containers (of one service)."""
        labels = [f"label=com.docker.compose.project={self.project}"]
        if service:
            labels.append(f"label=com.docker.compose.service={service}")
        argv = ["ps", "-q", *(["-a"] if all else [])]
        for label in labels:
            argv += ["--filter", label]
        ids = images.docker(*argv, timeout=60).stdout.split()
        if not ids:
            return []
        return json.loads(images.docker("inspect", *ids, timeout=60).stdout)

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, volumes and networks of the project that still exist."""
        label = f"label=com.docker.compose.project={self.project}"
        found = {
            "containers": images.docker("ps", "-aq", "--filter", label, timeout=60).stdout.split(),
            "volumes": images.docker("volume", "ls", "-q", "--filter", label, timeout=60).stdout.split(),
            "networks": images.docker("network", "ls", "-q", "--filter", label, timeout=60).stdout.split(),
        }
        return {kind: ids for kind, ids in found.items() if ids}

    def volume_path(self, volume: str = DATA_VOLUME) -> Path:
        """Where the named volume's files are on this machine (the local driver's folder)."""
        name = f"{self.project}_{volume}"
        return Path(
            images.docker("volume", "inspect", "--format", "{{.Mountpoint}}", name, timeout=60).stdout.strip()
        )

    def exec(self, service: str, *argv: str, timeout: float = 300):
        """``compose exec -T`` in the first container of ``service``."""
        return self.compose("exec", "-T", service, *argv, timeout=timeout)

    def service_logs(self, *services: str, tail: int = 200) -> str:
        result = self.compose("logs", "--no-color", "--tail", str(tail), *services, timeout=120, check=False)
        return result.stdout + result.stderr

    def startup_timeline(self) -> list[str]:
        """When each container started and became healthy (or exited), in seconds after the first start:
        where ``up --wait`` spends its time."""

        def seconds(stamp: str) -> float:
            # Docker's timestamps have nanoseconds: keep microseconds for fromisoformat.
            stamp = re.sub(r"(\.\d{6})\d*", r"\1", stamp.replace("Z", "+00:00"))
            return datetime.fromisoformat(stamp).timestamp()

        rows = []
        for c in self.containers():
            state = c["State"]
            name = c["Name"].lstrip("/").removeprefix(self.project + "-")
            started = seconds(state["StartedAt"])
            if state["Status"] == "exited":
                rows.append((started, name, f"exited {state['ExitCode']} at", seconds(state["FinishedAt"])))
            else:
                # Docker keeps the last 5 checks: with 5, the first healthy one may be older.
                checks = (state.get("Health") or {}).get("Log", [])
                healthy = [seconds(h["End"]) for h in checks if h["ExitCode"] == 0]
                what = "healthy by" if len(checks) >= 5 else "healthy at"
                rows.append((started, name, what, min(healthy) if healthy else float("nan")))
        if not rows:
            return []
        zero = min(r[0] for r in rows)
        return [
            f"  {name}: started {s - zero:.0f} s, {what} {t - zero:.0f} s"
            for s, name, what, t in sorted(rows)
        ]

    def down(self) -> None:
        self.timed("compose down -v", "down", "-v", "--remove-orphans", "--timeout", "30", timeout=300)


class RestClient:
    """The REST API of the stack with the admin user's bearer token."""

    def __init__(self, base_url: str, auth: tuple[str, str] = ADMIN) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = auth
        self._token: str | None = None

    def token(self) -> str:
        if self._token is None:
            username, password = self.auth
            response = requests.post(
                f"{self.base_url}/auth/token", json={"username": username, "password": password}, timeout=60
            )
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return self._token

    def api(self, method: str, path: str, *, auth: bool = True, **kw: Any) -> requests.Response:
        """One request; an idempotent one (not POST) is tried again when the API server does not answer in
        time, as a script polling a busy server on a laptop would (the stack shares 2 cores in CI)."""
        headers = dict(kw.pop("headers", None) or {})
        if auth:
            headers.setdefault("Authorization", f"Bearer {self.token()}")
        kw.setdefault("timeout", 60)
        attempts = 1 if method.upper() == "POST" else API_ATTEMPTS
        for attempt in range(1, attempts + 1):
            try:
                return requests.request(method, self.base_url + path, headers=headers, **kw)
            except (requests.Timeout, requests.ConnectionError):
                if attempt == attempts:
                    raise
                time.sleep(5)
        raise AssertionError("unreachable")

    def wait_dag(self, dag_id: str, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.api("GET", f"/api/v2/dags/{dag_id}")
            if response.ok:
                return response.json()
            time.sleep(1)
        errors = self.api("GET", "/api/v2/importErrors").text
        raise TimeoutError(f"DAG {dag_id} not parsed after {timeout} s; import errors: {errors}")

    def unpause(self, dag_id: str) -> None:
        self.api("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> str:
        response = self.api(
            "POST", f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf)}
        )
        if not response.ok:
            raise RuntimeError(f"trigger {dag_id}: HTTP {response.status_code}: {response.text}")
        return response.json()["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        response = self.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        response.raise_for_status()
        return response.json()["state"]

    def wait_run(self, dag_id: str, run_id: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if state in FINAL_RUN_STATES:
                return state
            time.sleep(2)
        raise TimeoutError(f"run {run_id} not finished after {timeout} s: {self.task_states(dag_id, run_id)}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        response = self.api(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000}
        )
        response.raise_for_status()
        return response.json()["task_instances"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {
            ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else ""): ti["state"]
            for ti in self.task_instances(dag_id, run_id)
        }

    def task_log(self, dag_id: str, run_id: str, ti: dict[str, Any]) -> str:
        response = self.api(
            "GET",
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{ti['task_id']}/logs/{ti['try_number']}",
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

    def run_report(self, dag_id: str, run_id: str) -> str:
        """What a failed assertion shows: task states, hosts, failed tasks' logs."""
        tis = self.task_instances(dag_id, run_id)
        lines = [
            json.dumps({f"{t['task_id']}[{t['map_index']}]": [t["state"], t.get("hostname")] for t in tis})
        ]
        for ti in tis:
            if ti["state"] in {"failed", "up_for_retry", "upstream_failed"}:
                lines.append(f"--- {ti['task_id']}[{ti['map_index']}] try {ti['try_number']}: {ti['state']}")
                lines.append(self.task_log(dag_id, run_id, ti)[-3000:])
        return "\n".join(lines)
