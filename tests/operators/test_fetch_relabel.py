"""FetchImagenetOperator and RelabelValOperator as Airflow runs them: templates rendered, then execute."""

from __future__ import annotations

import json
import logging

import pytest

from airflow_resnet_prep.catalog.model import SplitCatalog
from airflow_resnet_prep.errors import LabelsError, SourceError
from airflow_resnet_prep.layout import DataDir, catalog_key
from tests.support.httpserver import FileServer

SECRET = "s3cr3t-Passw0rd-for-tests"


class _TI:
    """The part of a task instance the operators use."""

    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def _run(op, params: dict):
    context = {"params": params, "ti": _TI()}
    op.render_template_fields(context)
    return op.execute(context)


@pytest.fixture
def mirror(sample, monkeypatch):
    """The sample served over HTTP behind basic auth, with a connection holding the credentials."""
    files = {p.name: p.read_bytes() for p in (sample.train_tar, sample.val_tar, sample.labels)}
    with FileServer(files=files, auth=("mlperf", SECRET)) as server:
        monkeypatch.setenv(
            "AIRFLOW_CONN_IMAGENET_MIRROR",
            json.dumps(
                {
                    "conn_type": "http",
                    "host": "127.0.0.1",
                    "port": server.port,
                    "login": "mlperf",
                    "password": SECRET,
                }
            ),
        )
        yield server


def test_fetch_and_relabel_over_authenticated_http(sample, mirror, tmp_path, caplog):
    from airflow_resnet_prep.operators.fetch import FetchImagenetOperator
    from airflow_resnet_prep.operators.relabel import RelabelValOperator

    caplog.set_level(logging.DEBUG)
    params = {
        "data_dir": str(tmp_path / "data dir ü"),  # spaces and non-ASCII are fine
        "train": mirror.url(sample.train_tar.name),
        "val": mirror.url(sample.val_tar.name),
        "labels": mirror.url(sample.labels.name),
    }
    fetch = FetchImagenetOperator(
        task_id="fetch",
        data_dir="{{ params.data_dir }}",
        train_source="{{ params.train }}",
        val_source="{{ params.val }}",
        train_checksum="md5:" + __import__("hashlib").md5(sample.train_tar.read_bytes()).hexdigest(),
        http_conn_id="imagenet_mirror",
    )
    fetched = _run(fetch, params)
    assert fetched["counts"] == {"train": sample.train_count, "val": sample.val_count}
    layout = DataDir.of(params["data_dir"])
    assert (layout.downloads / sample.train_tar.name).read_bytes() == sample.train_tar.read_bytes()
    assert fetched["imagenet_path"] == str(layout.downloads / sample.train_tar.name)

    relabel = RelabelValOperator(
        task_id="relabel",
        data_dir="{{ params.data_dir }}",
        labels_source="{{ params.labels }}",
        http_conn_id="imagenet_mirror",
    )
    relabelled = _run(relabel, params)
    assert relabelled["images"] == sample.val_count
    assert SplitCatalog.load(layout.store, catalog_key("val")).labelled

    # Credentials reach neither XCom values, nor logs, nor files written under data_dir.
    shown = json.dumps([fetched, relabelled]) + caplog.text
    for path in layout.root.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".tsv"):
            shown += path.read_text()
    assert "images in" in caplog.text  # the catalog step's log lines were captured
    assert SECRET not in shown
    assert all(r.headers.get("Authorization") for r in mirror.gets())


def test_fetch_fails_clearly_without_the_connection(sample, mirror, tmp_path):
    from airflow_resnet_prep.operators.fetch import FetchImagenetOperator

    op = FetchImagenetOperator(
        task_id="fetch",
        data_dir=str(tmp_path),
        train_source=mirror.url(sample.train_tar.name),
        val_source=mirror.url(sample.val_tar.name),
    )
    with pytest.raises(SourceError, match="401") as info:
        _run(op, {})
    assert sample.train_tar.name in str(info.value)
    assert not (tmp_path / "downloads" / sample.train_tar.name).exists()


def test_relabel_operator_rejects_a_short_labels_file(sample, tmp_path):
    from airflow_resnet_prep.operators.fetch import FetchImagenetOperator
    from airflow_resnet_prep.operators.relabel import RelabelValOperator

    _run(
        FetchImagenetOperator(
            task_id="f",
            data_dir=str(tmp_path / "d"),
            train_source=str(sample.train_tar),
            val_source=str(sample.val_tar),
        ),
        {},
    )
    short = tmp_path / "labels.txt"
    short.write_text("\n".join(sample.labels.read_text().split()[1:]) + "\n")
    with pytest.raises(LabelsError, match=f"{short}: has {sample.val_count - 1:,} lines"):
        _run(RelabelValOperator(task_id="r", data_dir=str(tmp_path / "d"), labels_source=str(short)), {})
