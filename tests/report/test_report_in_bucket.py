"""The dataset report of a data_dir in a bucket (SeaweedFS on 127.0.0.1): written by ``publish`` (and
``write_report`` / the CLI given the URI) through the data_dir's store, the same page as a local run's
report of the same data, and served by the UI plugin, which reads it through the run's connection.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from airflow_resnet_prep import pipeline
from airflow_resnet_prep.layout import DataDir
from airflow_resnet_prep.params import resolved
from airflow_resnet_prep.publish import publish_outputs
from airflow_resnet_prep.report import REPORT_KEY, write_report
from airflow_resnet_prep.storage import store_for

REPO = Path(__file__).resolve().parents[2]
RUN_ID = "manual__2026-12-01T05:00:00+00:00"


def values(data_dir: str, sample, implementation: str) -> dict[str, Any]:
    return {
        "data_dir": data_dir,
        "train_source": str(sample.train_tar),
        "val_source": str(sample.val_tar),
        "labels_source": str(sample.labels),
        "implementation": implementation,
        "workers": 1,
        "train_shards": 3,
        "val_shards": 2,
    }


def stable(text: str, data_dir: str) -> str:
    """The page without what differs between two runs of the same data: where the data_dir is, when the
    manifest was written, and the Steps section's timings (the section itself stays)."""
    text = text.replace(data_dir, "DATA_DIR")
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)?", "TIME", text)
    return re.sub(r'(<section id="steps">).*?(</section>)', r"\1TIMINGS\2", text, flags=re.S)


def sections(text: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', text)


@pytest.fixture(params=["reference", "nvidia"])
def both(request, sample, s3_prefix, tmp_path) -> SimpleNamespace:
    """The sample converted into the bucket and into a local folder, each report written by publish
    (the bucket's) and by ``write_report`` (the local one)."""
    implementation = request.param
    pipeline.run(values(s3_prefix, sample, implementation))
    local = tmp_path / "data"
    pipeline.run(values(str(local), sample, implementation))
    write_report(local)
    params = resolved(values(s3_prefix, sample, implementation))
    published = publish_outputs(
        params,
        fetched={"imagenet_path": str(sample.train_tar)},
        relabelled={},
        summary=None,
        run={"dag_id": "d", "run_id": RUN_ID},
    )
    return SimpleNamespace(implementation=implementation, bucket=s3_prefix, local=local, published=published)


def test_the_report_in_the_bucket_is_the_local_page(both, s3_server) -> None:
    store = store_for(both.bucket)
    layout = DataDir.of(both.bucket)
    # publish wrote it (the output was reused: the report was missing) and returned its URI.
    assert both.published["cached"] is True
    assert both.published["report"] == layout.uri(REPORT_KEY) == f"{layout.url}/report/index.html"
    assert s3_server.conn_id not in both.published["report"]
    assert both.published["storage_conn_id"] == s3_server.conn_id
    remote = store.read_bytes(REPORT_KEY).decode("utf-8")
    local = (both.local / "report" / "index.html").read_text(encoding="utf-8")
    assert "Sample records" in remote and f"<code>{layout.url}</code>" in remote
    assert "no preview" not in remote and "report incomplete" not in remote
    # The same page: the same counts, charts, sample thumbnails (bytes and all), sizes, files, listed
    # images (for reference, re-encoded images found in the shards through the plan) and params.
    assert (
        sections(remote)
        == sections(local)
        == ["classes", "samples", "sizes", "listed", "checks", "steps", "run"]
    )
    # publish reused the output, so its page says so on top; the rest is the local page.
    banner = re.search(r'<div class="reused">.*?</div>', remote, flags=re.S)
    assert banner and "The latest run reused this output" in banner[0] and '<div class="reused">' not in local
    assert stable(remote.replace(banner[0], ""), layout.url) == stable(local, str(both.local))
    thumbs = re.findall(r'src="(data:image/jpeg;base64,[^"]+)"', remote)
    assert len(thumbs) >= 36 and thumbs == re.findall(r'src="(data:image/jpeg;base64,[^"]+)"', local)
    if both.implementation == "reference":  # re-encoded images found in the shards, through the plan
        assert "data-stored-file" in remote


def test_the_cli_writes_and_summarises_a_report_in_the_bucket(sample, s3_prefix, s3_server) -> None:
    """``python -m airflow_resnet_prep.report URI --html``, the connection given by ``--conn-id``."""
    pipeline.run(values(s3_prefix, sample, "nvidia"))
    store = store_for(s3_prefix)
    assert not store.exists(REPORT_KEY)  # the pipeline CLI does not write it: --html does
    bare = s3_prefix.replace(f"{s3_server.conn_id}@", "")
    result = subprocess.run(
        [sys.executable, "-m", "airflow_resnet_prep.report", bare, "--html", "--conn-id", s3_server.conn_id],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert store.exists(REPORT_KEY)
    assert f"  report: {bare}/report/index.html" in result.stdout.splitlines()
    assert "Sample records" in store.read_bytes(REPORT_KEY).decode()


# -- the UI plugin ---------------------------------------------------------------------------------------
class FakeSession:
    """Answers the plugin's query for the DAG run (the XComs are given by ``published``)."""

    def scalar(self, statement):
        return SimpleNamespace(dag_id="d", run_id=RUN_ID, state="success")

    def scalars(self, statement):
        return SimpleNamespace(all=lambda: [])


@pytest.fixture
def client(monkeypatch, s3_server):
    """The plugin's app with the access check and the database session stubbed; returns
    ``(client, xcoms)``: set the XComs of publish in ``xcoms``. The deployment allows the report view
    the test bucket's connection."""
    from airflow.api_fastapi.common.db.common import _get_session
    from fastapi.testclient import TestClient

    from airflow_resnet_prep.plugins import report_app

    xcoms: dict[str, Any] = {}
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_CONN_IDS", f"{s3_server.conn_id},not_defined_here")
    monkeypatch.setattr(report_app, "_xcom_values", lambda session, dag_id, run_id: xcoms)
    app = report_app.create_app()
    app.dependency_overrides[report_app.READ_RUN.dependency] = lambda: None
    app.dependency_overrides[_get_session] = lambda: FakeSession()
    with TestClient(app) as http:
        yield http, xcoms


def test_the_plugin_serves_the_report_from_the_bucket(both, client, s3_server) -> None:
    from airflow_resnet_prep.plugins import report_app
    from airflow_resnet_prep.plugins.report_app import CONTENT_SECURITY_POLICY

    http, xcoms = client
    xcoms.update(both.published)  # as publish pushed them: URIs without the connection, and its id
    store = store_for(both.bucket)
    base = f"/dags/d/runs/{RUN_ID}/report/"
    response = http.get(base)
    assert response.status_code == 200, response.text
    assert response.content == store.read_bytes(REPORT_KEY)
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert http.get(base + "index.html").content == response.content
    # Only files below report/: nothing beside it (the manifest is there), however the path is spelled
    # (the client resolves plain dot segments itself; encoded ones reach the app).
    assert store.exists("manifest.json")
    for bad in (
        "../manifest.json",
        "%2E%2E/manifest.json",
        "..%2Fmanifest.json",
        "x/..%2F..%2Fmanifest.json",
        "a//b",
        "..%5Cmanifest.json",
        "index.html%00",
    ):
        refused = http.get(base + bad)
        assert refused.status_code == 404 and b'"images"' not in refused.content, bad
    layout = DataDir.of(both.bucket)
    for bad in ("../manifest.json", "./index.html", "report/../../manifest.json", "/manifest.json"):
        assert report_app._serve_object(layout, bad).status_code == 404, bad
    assert http.get(base + "missing.html").status_code == 404
    # Found beside the manifest when the report XCom is absent (a reused output's run) ...
    del xcoms["report"]
    assert http.get(base).content == response.content
    # ... and a report deleted since says so.
    xcoms["report"] = both.published["report"]
    store.delete(REPORT_KEY)
    gone = http.get(base)
    assert gone.status_code == 404 and "missing" in gone.text


def test_a_bucket_the_api_server_cannot_read_says_so_without_secrets(both, client, s3_server) -> None:
    http, xcoms = client
    xcoms.update(both.published, storage_conn_id="not_defined_here")
    response = http.get(f"/dags/d/runs/{RUN_ID}/report/")
    assert response.status_code == 502 and "could not be read" in response.text
    assert "not_defined_here" in response.text  # the connection id is named, never its secrets
    for secret in (s3_server.secret_key, s3_server.access_key):
        assert secret not in response.text
