"""The UI plugin without a running Airflow: path confinement, the no-report reasons, the extra link and
the registration. tests/ui/ checks the same pieces in a browser against a real Airflow."""

from __future__ import annotations

import json
import os
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace

import pytest

from airflow_resnet_prep.plugins import report_app
from airflow_resnet_prep.plugins.links import DatasetReportLink, report_url, run_tab_url
from airflow_resnet_prep.plugins.report_app import locate_report, safe_file

RUN_ID = "manual__2026-12-01T05:00:00.123456+00:00"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A finished output: manifest.json, report/index.html and a thumbnail; a secret beside them."""
    data = tmp_path / "data"
    (data / "report" / "img").mkdir(parents=True)
    (data / "manifest.json").write_text("{}")
    (data / "report" / "index.html").write_text("<h1>report</h1>")
    (data / "report" / "run.json").write_text(json.dumps({"dag_id": "d", "run_id": RUN_ID}))
    (data / "report" / "img" / "a.png").write_bytes(b"png")
    (tmp_path / "secret.txt").write_text("secret")
    return data


def test_safe_file_serves_only_regular_files_inside_the_report_folder(data_dir: Path):
    report = data_dir / "report"
    (report / "to-manifest.json").symlink_to(data_dir / "manifest.json")
    (report / "to-data").symlink_to(data_dir)
    (report / "inner.html").symlink_to(report / "index.html")  # a link that stays inside is fine
    assert safe_file(report, "index.html") == (report / "index.html").resolve()
    assert safe_file(report, "img/a.png") == (report / "img" / "a.png").resolve()
    assert safe_file(report, "inner.html") == (report / "index.html").resolve()
    assert safe_file(report, "img/") is None  # a folder without index.html
    for bad in (
        "",
        "..",
        "../manifest.json",
        "img/../../manifest.json",
        "./index.html",
        "img//a.png",
        "/etc/passwd",
        str(data_dir / "manifest.json"),
        "..\\manifest.json",
        "index.html\x00.png",
        "to-manifest.json",
        "to-data/manifest.json",
        "missing.html",
        "img",
    ):
        assert safe_file(report, bad) is None, bad
    # A link that leaves and comes back ends inside: only the real path counts.
    assert safe_file(report, "to-data/report/index.html") == (report / "index.html").resolve()


class FakeSession:
    """Answers locate_report's two queries: the run, and (for the reasons) its task instances."""

    def __init__(self, run, tis=()):
        self.run, self.tis = run, list(tis)

    def scalar(self, statement):
        return self.run

    def scalars(self, statement):
        return SimpleNamespace(all=lambda: self.tis)


def run(state: str) -> SimpleNamespace:
    return SimpleNamespace(dag_id="d", run_id=RUN_ID, state=state)


def ti(task_id: str, state: str, operator: str | None = None) -> SimpleNamespace:
    if operator is None:
        operator = "PublishOperator" if task_id == "publish" else "EmptyOperator"
    return SimpleNamespace(task_id=task_id, state=state, operator=operator)


@pytest.fixture
def xcoms(monkeypatch):
    values: dict = {}
    monkeypatch.setattr(report_app, "_xcom_values", lambda session, dag_id, run_id: values)
    return values


def test_the_report_is_found_from_the_report_xcom_or_beside_the_manifest(data_dir, xcoms):
    xcoms.update(manifest=str(data_dir / "manifest.json"), cached=False)
    assert locate_report(FakeSession(run("success")), "d", RUN_ID).report_dir == data_dir / "report"
    xcoms["report"] = str(data_dir / "report" / "index.html")
    assert locate_report(FakeSession(run("success")), "d", RUN_ID).report_dir == data_dir / "report"


@pytest.mark.parametrize(
    ("state", "tis", "title", "words"),
    [
        ("queued", [], "not written yet", ["still queued"]),
        ("running", [ti("fetch", "success"), ti("publish", None)], "not written yet", ["still running"]),
        (
            "failed",
            [ti("fetch", "success"), ti("relabel_val", "failed"), ti("publish", "upstream_failed")],
            "it failed",
            ["Task relabel_val failed", "log"],
        ),
        ("success", [ti("publish", "skipped")], "no report", ["publish ended skipped"]),
        ("success", [ti("train", "success")], "No dataset report for this DAG", ["has no such task"]),
        # the publish task may have any id: it is found by its operator
        ("success", [ti("announce", "skipped", "PublishOperator")], "no report", ["announce ended skipped"]),
    ],
)
def test_a_run_without_publish_output_says_why(xcoms, state, tis, title, words):
    located = locate_report(FakeSession(run(state), tis), "d", RUN_ID)
    assert located.report_dir is None and located.status_code == 404
    assert title in located.title
    for word in words:
        assert word in located.reason


def test_no_such_run(xcoms):
    located = locate_report(FakeSession(None), "d", "nope")
    assert located.report_dir is None and "No such run" in located.title


def test_a_report_that_could_not_be_written_or_is_gone_says_so(data_dir, xcoms):
    (data_dir / "report" / "index.html").unlink()
    xcoms.update(manifest=str(data_dir / "manifest.json"), cached=True, report=None)
    located = locate_report(FakeSession(run("success")), "d", RUN_ID)
    assert "could not be written" in located.title
    assert "reused" in located.reason and "--html" in located.reason
    del xcoms["report"]  # a run from before reports existed
    assert (
        "reused an output that has no report" in locate_report(FakeSession(run("success")), "d", RUN_ID).title
    )
    xcoms.update(report=str(data_dir / "report" / "index.html"), cached=False)
    located = locate_report(FakeSession(run("success")), "d", RUN_ID)
    assert "missing" in located.title and "mounted at the same path" in located.reason


def test_a_report_folder_must_be_a_real_folder_named_report(tmp_path, data_dir, xcoms):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "index.html").write_text("x")
    xcoms["report"] = str(elsewhere / "index.html")  # not named report
    assert locate_report(FakeSession(run("success")), "d", RUN_ID).report_dir is None
    link = tmp_path / "other" / "report"
    link.parent.mkdir()
    link.symlink_to(elsewhere)
    xcoms["report"] = str(link / "index.html")  # named report, but a link
    assert locate_report(FakeSession(run("success")), "d", RUN_ID).report_dir is None


def test_pages_escape_what_they_show():
    page = report_app._page("<t>", report_app._reason_html("a <b> `c & d` e"), 404).body.decode()
    assert "&lt;t&gt;" in page and "a &lt;b&gt; <code>c &amp; d</code> e" in page
    assert "<b>" not in page


def test_links_encode_the_run_id_and_follow_the_api_base_path(monkeypatch):
    key = SimpleNamespace(dag_id="mlperf_resnet_prep", run_id=RUN_ID)
    encoded = "manual__2026-12-01T05%3A00%3A00.123456%2B00%3A00"
    link = DatasetReportLink()
    assert link.name == "Dataset report"
    assert link.get_link(None, ti_key=key) == f"/dags/mlperf_resnet_prep/runs/{encoded}/plugin/dataset-report"
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/team/")
    assert link.get_link(None, ti_key=key).startswith("/team/dags/mlperf_resnet_prep/runs/")
    assert run_tab_url("d", "r/x", prefix="") == "/dags/d/runs/r%2Fx/plugin/dataset-report"
    assert report_url("d", RUN_ID, prefix="/a") == f"/a/resnet-prep/dags/d/runs/{encoded}/report/"


def test_the_plugin_is_registered_through_the_entry_point():
    (point,) = [p for p in entry_points(group="airflow.plugins") if p.name == "resnet_prep"]
    plugin = point.load()
    assert plugin.name == "airflow_resnet_prep"
    (app,) = plugin.fastapi_apps
    assert app["url_prefix"] == "/resnet-prep"
    (view,) = plugin.external_views
    assert view["destination"] == "dag_run" and view["url_route"] == "dataset-report"
    assert view["href"].endswith("/resnet-prep/dags/{DAG_ID}/runs/{RUN_ID}/report/")
    assert type(app["app"]).__name__ == "ReportApp"  # built on its first request, in the API server
    routes = [r for r in app["app"].app.routes if "{dag_id}" in getattr(r, "path", "")]
    assert len(routes) == 3
    for route in routes:  # every route checks access to the DAG's runs
        names = [d.call.__qualname__ for d in route.dependant.dependencies]
        assert any("requires_access_dag" in name for name in names), route.path
    assert not [r for r in app["app"].app.routes if getattr(r, "path", "") in ("/docs", "/openapi.json")]


def test_the_dag_publish_task_has_the_extra_link():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    task = bag.dags["mlperf_resnet_prep"].get_task("publish")
    assert type(task).__name__ == "PublishOperator"
    assert [link.name for link in task.operator_extra_links] == ["Dataset report"]
