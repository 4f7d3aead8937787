"""Attacks through places, round 2, by someone who may only trigger the DAG: borrowing the worker's own
cloud identity for a bucket nobody configured (SeaweedFS standing in, reached through ``AWS_*``
variables as an instance role would be), planting files into another run's report, and object keys
that spell a way out of an allowed prefix. Operators run for real (``execute``); the report view's
lookup is the one the API server runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from airflow_resnet_prep.policy import NotAllowedError, Policy
from airflow_resnet_prep.storage import StorageError, parse_object_uri, store_for

RUN_A = "manual__2026-12-07T01:00:00+00:00"


def _fetch_op(data_dir: str, train: str, val: str, **kw):
    from airflow_resnet_prep.operators.fetch import FetchImagenetOperator

    op = FetchImagenetOperator(
        task_id="fetch",
        data_dir="{{ params.data_dir }}",
        train_source="{{ params.train_source }}",
        val_source="{{ params.val_source }}",
        **kw,
    )
    op.data_dir, op.train_source, op.val_source = data_dir, train, val  # as the trigger's params render
    return op


# -- 4. ambient credentials: the worker's own identity -----------------------------------------------


def _forget_ambient_clients() -> None:
    """Drop the S3 clients made without a connection in this process: a client reads the AWS_*
    variables when it is made, and one made by an earlier test would still reach real AWS."""
    import s3fs
    from airflow.sdk.io import store as io_store

    for alias in [a for a in io_store._STORE_CACHE if a.startswith("airflow-resnet-prep:s3::")]:
        del io_store._STORE_CACHE[alias]
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def ambient(s3_server, monkeypatch):
    """The worker's own identity, as an instance role would give it: AWS_* variables reaching the S3
    server, and no Airflow connection in the URIs."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    _forget_ambient_clients()
    yield s3_server
    _forget_ambient_clients()


def _keys(server, prefix: str) -> list[str]:
    """The objects under ``prefix``, listed with a plain client (not through the code under test)."""
    answer = server.client().list_objects_v2(Bucket=server.bucket, Prefix=prefix)
    return [o["Key"] for o in answer.get("Contents", [])]


def test_a_bucket_data_dir_without_a_connection_is_refused_before_any_request(
    ambient, sample, request
) -> None:
    prefix = f"t/ambient-{request.node.name[-20:]}"
    op = _fetch_op(f"s3://{ambient.bucket}/{prefix}", str(sample.train_tar), str(sample.val_tar))
    with pytest.raises(NotAllowedError) as err:
        op.execute({"params": {}, "ti": None})
    text = str(err.value)
    assert "data_dir" in text and "allowed_data_roots" in text and "own cloud identity" in text
    assert _keys(ambient, prefix) == [], "not even the lock object was written"


def test_a_bucket_source_without_a_connection_is_refused_before_any_request(
    ambient, sample, tmp_path
) -> None:
    key = "t/ambient-source/ILSVRC2012_img_train.tar"
    ambient.client().put_object(Bucket=ambient.bucket, Key=key, Body=sample.train_tar.read_bytes())
    op = _fetch_op(str(tmp_path / "data"), f"s3://{ambient.bucket}/{key}", str(sample.val_tar))
    with pytest.raises(NotAllowedError, match=r"train_source.*allowed_sources"):
        op.execute({"params": {}, "ti": None})
    assert not (tmp_path / "data" / "catalog").exists()


def test_an_allowed_bucket_with_ambient_credentials_still_works(
    ambient, sample, monkeypatch, request
) -> None:
    """The positive control: a prefix the deployment lists is reached with the worker's identity."""
    root = f"s3://{ambient.bucket}/t/allowed-ambient"
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_DATA_ROOTS", root)
    prefix = f"t/allowed-ambient/{request.node.name[-12:]}"
    op = _fetch_op(f"s3://{ambient.bucket}/{prefix}", str(sample.train_tar), str(sample.val_tar))
    assert op.execute({"params": {}, "ti": None})["counts"]["train"] == sample.train_count
    assert f"{prefix}/catalog/fetch.json" in _keys(ambient, prefix)


def test_a_bucket_the_dag_names_may_use_the_workers_identity(ambient, sample) -> None:
    """A data_dir the DAG's code names is the author's choice: the policy lets it through."""
    place = f"s3://{ambient.bucket}/t/dag-named"
    Policy.load(dag_places=[place]).check_run(data_dir=place + "/run1", conns={"storage_conn_id": None})
    with pytest.raises(NotAllowedError):
        Policy.load(dag_places=[place]).check_run(data_dir=f"s3://{ambient.bucket}/t/other")


def test_the_report_view_refuses_a_bucket_read_with_its_own_identity(monkeypatch) -> None:
    from airflow_resnet_prep.plugins.report_app import _refused

    refused = _refused("s3://team-bucket/prep", None)
    assert refused is not None and refused.status_code == 403 and "allowed_data_roots" in refused.reason
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_DATA_ROOTS", "s3://team-bucket/prep")
    assert _refused("s3://team-bucket/prep", None) is None


# -- 7. another run's report folder ------------------------------------------------------------------


class _Session:
    def __init__(self, dag_run):
        self.dag_run = dag_run

    def scalar(self, statement):
        return self.dag_run

    def scalars(self, statement):
        return SimpleNamespace(all=list)


@pytest.fixture
def published(tmp_path, sample) -> Path:
    """Run A: fetched, converted and published by its own publish (which writes report/run.json)."""
    from airflow_resnet_prep.pipeline import run
    from airflow_resnet_prep.publish import publish_outputs

    data_dir = tmp_path / "run-a"
    params = {
        "data_dir": str(data_dir),
        "train_source": str(sample.train_tar),
        "val_source": str(sample.val_tar),
        "labels_source": str(sample.labels),
        "implementation": "nvidia",
    }
    run(params)
    publish_outputs(
        {"data_dir": str(data_dir), "implementation": "nvidia"},
        fetched={"imagenet_path": str(sample.train_tar)},
        relabelled={},
        summary=None,
        run={"dag_id": "prep", "run_id": RUN_A},
    )
    return data_dir


def test_a_second_run_cannot_write_into_another_runs_report_folder(tmp_path, published) -> None:
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "evil.html").write_text("<script>alert(1)</script>")
    (evil / "evil.svg").write_text("<svg/>")
    for inside in (published / "report", published / "recordio" / "x"):
        op = _fetch_op(str(inside), str(evil / "evil.html"), str(evil / "evil.svg"))
        with pytest.raises(NotAllowedError, match="another data set's folder"):
            op.execute({"params": {}, "ti": None})
    assert sorted(p.name for p in (published / "report").iterdir()) == ["index.html", "run.json"]


def test_the_report_view_serves_only_what_its_runs_publish_listed(published, monkeypatch) -> None:
    from airflow_resnet_prep.plugins import report_app

    record = json.loads((published / "report" / "run.json").read_text())
    assert record["files"] == ["index.html"]
    # planted by some other means (another tool, an older release): present, but not this run's
    (published / "report" / "evil.html").write_text("<script>alert(1)</script>")
    (published / "report" / "img").mkdir()
    (published / "report" / "img" / "x.svg").write_text("<svg/>")
    monkeypatch.setattr(
        report_app, "_xcom_values", lambda s, d, r: {"manifest": str(published / "manifest.json")}
    )
    dag_run = SimpleNamespace(dag_id="prep", run_id=RUN_A, state="success")
    located = report_app.locate_report(_Session(dag_run), "prep", RUN_A)
    assert located.found and located.files == frozenset({"index.html"})
    assert report_app._serve(located, "index.html").status_code == 200
    for planted in ("evil.html", "img/x.svg", "run.json", "../manifest.json"):
        assert report_app._serve(located, planted).status_code == 404, planted
    # a record from before the list serves its index.html alone
    (published / "report" / "run.json").write_text(json.dumps({"dag_id": "prep", "run_id": RUN_A}))
    located = report_app.locate_report(_Session(dag_run), "prep", RUN_A)
    assert report_app._serve(located, "evil.html").status_code == 404
    assert report_app._serve(located, "index.html").status_code == 200


# -- 7. object keys that spell a way out -------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/pre/../secret/x",
        "s3://bucket/pre/./x",
        "s3://bucket/pre//x",
        "gs://b/pre/..",
        "s3://c@b/./k",
    ],
)
def test_object_keys_with_dot_or_empty_segments_are_refused_by_the_shared_parser(monkeypatch, uri) -> None:
    with pytest.raises(StorageError, match="segment"):
        parse_object_uri(uri)
    with pytest.raises(StorageError):
        store_for(uri)
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_DATA_ROOTS", "s3://bucket/pre,gs://b/pre")
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_CONN_IDS", "c")
    with pytest.raises(NotAllowedError):
        Policy.load().check_data_dir(uri, storage_conn_id="c")
