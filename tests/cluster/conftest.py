"""The session's Celery cluster (``pytest -m cluster`` runs only these tests).

Started once for every test of this folder: PostgreSQL, Redis, API server, scheduler, DAG processor and
two Celery workers, torn down at the end even when a test fails. Without the servers or the Celery
provider installed, the tests are skipped; under CI (``CI=true``) they fail instead, since CI installs
them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

from cluster.celery_cluster import DAG_ID, SECOND_DAG, CeleryCluster
from cluster.services import missing_services
from cluster.settings import DAG_DEFAULTS

REPO = Path(__file__).resolve().parents[2]
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


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, cluster_sources):
    """A started :class:`CeleryCluster` with the repo's DAG and a consumer of its Asset, both unpaused.

    Every Airflow process has the DAG's defaults (``MLPERF_RESNET_PREP_DATA_DIR`` and the sources, as
    ``docker-compose.yaml`` sets them), no schedule (the schedule test sets one), and
    ``PREPARED_CONSUMER_LOG``, the file the consumer DAG appends the Asset events it sees to.
    """
    missing = missing_services() + missing_python_modules()
    if missing:
        unavailable("not installed: " + ", ".join(missing))
    root = tmp_path_factory.mktemp("cluster")
    # The DAG's defaults, as docker-compose.yaml sets them (the same variables, cluster.settings).
    defaults = {"data_dir": str(root / "default-data"), **cluster_sources}
    env = {
        **{variable: defaults[param] for variable, param in DAG_DEFAULTS.items()},
        "PREPARED_CONSUMER_LOG": str(root / "consumer.jsonl"),
    }
    cluster = CeleryCluster(root, dags=[MAIN_DAG, CONSUMER_DAG], env=env)
    # The same DAG under another id: a second DAG writing the same data_dir (max_active_runs=1 keeps two
    # runs of one DAG apart, not two DAGs).
    text = MAIN_DAG.read_text(encoding="utf-8")
    assert text.count(f'dag_id="{DAG_ID}"') == 1, "the DAG file's dag_id line changed"
    (cluster.dags_folder / f"{SECOND_DAG}.py").write_text(
        text.replace(f'dag_id="{DAG_ID}"', f'dag_id="{SECOND_DAG}"'), encoding="utf-8"
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
