"""The whole DAG on the real Celery cluster with ``data_dir`` and the sources in a bucket: a cloud
cluster whose workers share nothing but the bucket.

SeaweedFS (``cluster_bucket``, started before the cluster) holds the sample's tars and labels file,
and each run's ``data_dir`` (catalog, plan, done records, outputs, manifest). Every Airflow process has
the connection as ``AIRFLOW_CONN_CLUSTER_BUCKET``, as a deployment sets it; each worker has a HOME and
a TMPDIR of its own (its scratch space) and no folder of the data on a shared disk.

As in ``test_celery_cluster``, "the units ran on both workers" is made deterministic by holding every
unit's lock before the run: in a bucket the lock is a lease object (``work/<impl>/done/<id>.lock``,
conditional PUT, renewed while held), taken here by the test process; the mapped tasks start, wait at
their first unit, and are released once two of them run at once (one per worker, a worker has one
slot). The outputs downloaded from the bucket are compared byte for byte with a local one-process run
(``test_celery_cluster``'s ``expected``).
"""

# ruff: noqa: F811 (the fixture imported from test_celery_cluster is a parameter here)
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_resnet_prep.layout import DataDir
from airflow_resnet_prep.storage import store_for
from tests.cluster.conftest import S3_CONN_ID, ClusterS3
from tests.cluster.test_celery_cluster import (  # noqa: F401 (expected is a fixture)
    OUTPUT_DIR,
    check_consumer_saw,
    conf_for,
    expected,
    run_spread,
)
from tests.support.cluster.celery_cluster import DAG_ID

pytestmark = pytest.mark.cluster

OUTPUT_KEY = {"reference": "tfrecords_path", "nvidia": "preprocessed_path"}


# -- helpers -------------------------------------------------------------------------------------------


def bucket_uri(s3: ClusterS3, key: str) -> str:
    """``s3://<conn>@<bucket>/<key>``: the form the DAG's params take."""
    assert s3.server is not None
    return f"s3://{S3_CONN_ID}@{s3.server.bucket}/{key}"


def shown(uri: str) -> str:
    """A URI as messages, XCom and the Asset event show it: without the connection."""
    return uri.replace(f"{S3_CONN_ID}@", "", 1)


def bucket_files(data_dir: str, implementation: str) -> dict[str, str]:
    """Every object below the data_dir's output folder (as ``test_celery_cluster.output_files`` lists
    a local one: relative names, sub-folders included) with the SHA-256 of its bytes, downloaded."""
    store = store_for(data_dir).child(OUTPUT_DIR[implementation])
    return {o.key: hashlib.sha256(store.read_bytes(o.key)).hexdigest() for o in store.list()}


@contextlib.contextmanager
def holding_leases(data_dir: str, implementation: str, units: int) -> Iterator[None]:
    """Hold the lease of units ``0 .. units - 1`` (at least as many as the plan makes: a bucket's units
    are never smaller than a local run's): a task that reaches a unit waits for it until the block ends."""
    layout = DataDir.of(data_dir)
    with contextlib.ExitStack() as held:
        for unit in range(units):
            held.enter_context(layout.hold(f"work/{implementation}/done/{unit:05d}.lock", wait_s=0))
        yield


def files_below(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def bucket_sources(cluster_bucket: ClusterS3, cluster_sources: dict[str, str]) -> dict[str, str]:
    """The cluster's sample set (the files ``expected`` converts locally) uploaded to the bucket, under
    the same names; the params as ``s3://cluster_bucket@cluster/sources-<hex>/<name>``."""
    prefix = f"sources-{secrets.token_hex(3)}"
    store = store_for(bucket_uri(cluster_bucket, prefix))
    sources = {}
    for param, path in cluster_sources.items():
        name = Path(path).name
        store.write_bytes(name, Path(path).read_bytes())
        sources[param] = bucket_uri(cluster_bucket, f"{prefix}/{name}")
    return sources


# -- tests ---------------------------------------------------------------------------------------------


def test_the_workers_get_the_connection_and_folders_of_their_own(cluster, cluster_bucket):
    """The deployment's settings reach the workers: the connection is in the env every Airflow process
    is started with (the test process's own ``AIRFLOW_CONN_*`` are never inherited, so the runs below
    reach the bucket through it alone), and each worker has a HOME and a TMPDIR of its own, shared with
    no other worker nor the test process. (``/proc/<pid>/environ`` cannot show it: Airflow and Celery
    rewrite their process titles over it.)"""
    variable = f"AIRFLOW_CONN_{S3_CONN_ID.upper()}"
    assert json.loads(cluster.airflow.env[variable]) == json.loads(cluster_bucket.server.connection_json())
    folders = [cluster.worker_dirs(name)[v] for name in cluster.worker_names for v in ("HOME", "TMPDIR")]
    assert len(set(folders)) == len(folders) == 2 * len(cluster.worker_names)
    assert all(folder.is_dir() and cluster.root in folder.parents for folder in folders)
    assert not {os.environ.get("HOME"), os.environ.get("TMPDIR")} & {str(f) for f in folders}


@pytest.mark.parametrize("implementation", ["nvidia", "reference"])
def test_dag_with_data_dir_and_sources_in_a_bucket(
    cluster, cluster_bucket, bucket_sources, expected, implementation
):
    """fanout=4, data_dir and sources in the bucket: the mapped units run on both workers, the run
    succeeds, the outputs in the bucket are a local run's bytes (nothing more in the output folder), no
    multipart upload or lease is left, the workers' scratch folders are empty again, and ``publish`` and
    the Asset event the consumer DAG receives show the URIs without the connection."""
    files, local_units = expected(implementation)
    data_dir = bucket_uri(cluster_bucket, f"cluster-{implementation}-{secrets.token_hex(3)}")
    conf = conf_for(implementation, data_dir, bucket_sources, fanout=4)
    run_id, mapped = run_spread(
        cluster, implementation, conf, holding_leases(data_dir, implementation, local_units)
    )

    store = store_for(data_dir)
    units = len(json.loads(store.read_bytes(f"work/{implementation}/plan.json"))["units"])
    assert len(mapped) == min(4, units) >= 2, mapped

    assert bucket_files(data_dir, implementation) == files
    keys = [o.key for o in store.list()]
    assert "manifest.json" in keys
    assert [k for k in keys if k.endswith(".lock")] == []  # every lease released
    assert store.list_uploads() == []
    for name in cluster.worker_names:  # scratch only: nothing left in a worker's TMPDIR
        assert files_below(cluster.worker_dirs(name)["TMPDIR"]) == [], name

    published = cluster.airflow.xcom(DAG_ID, run_id, "publish")
    assert published["data_path"] == shown(data_dir)
    assert published[OUTPUT_KEY[implementation]] == f"{shown(data_dir)}/{OUTPUT_DIR[implementation]}"
    text = json.dumps(published)
    assert f"{S3_CONN_ID}@" not in text and cluster_bucket.server.secret_key not in text
    # the DAG scheduled on the Asset got the same URIs, without the connection, from the event
    events = check_consumer_saw(cluster, DAG_ID, run_id, implementation)
    assert events[-1]["data"] == f"{shown(data_dir)}/{OUTPUT_DIR[implementation]}"
    for secret in (f"{S3_CONN_ID}@", cluster_bucket.server.secret_key):
        assert secret not in json.dumps(events)
