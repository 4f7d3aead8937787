"""The operators in a DAG of another shape (tests/operators/dags/custom_shape.py): other params, other
task ids, no branch, run with ``airflow dags test``. The run succeeds, writes a manifest and a report
whose record names this run, and pushes the XComs the report view looks for, from a publish task that
is not called ``publish`` (the view finds it by its XComs; tests/plugins/test_report_plugin.py checks that)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.support.airflow_cli import dags_test

DAGS = Path(__file__).resolve().parent / "dags"


def test_operators_work_in_a_dag_of_another_shape(sample, tmp_path) -> None:
    workdir = tmp_path / "work"
    home = tmp_path / "airflow"
    conf = {"workdir": str(workdir), "imagenet": str(sample.root), "team": "vision"}
    run = dags_test("custom_shape", conf, home=home, dags_folder=DAGS)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    manifest = json.loads((workdir / "manifest.json").read_text())
    assert manifest["params"]["train_shards"] == 3 and manifest["images"]["train"] == sample.train_count
    record = json.loads((workdir / "report" / "run.json").read_text())
    assert record["dag_id"] == "custom_shape" and (workdir / "report" / "index.html").is_file()
    with sqlite3.connect(home / "airflow.db") as db:
        keys = {row[0] for row in db.execute("SELECT key FROM xcom WHERE task_id = 'announce'")}
        (run_id,) = db.execute("SELECT run_id FROM dag_run WHERE dag_id = 'custom_shape'").fetchone()
    assert {"report", "manifest", "tfrecords_path"} <= keys
    assert record["run_id"] == run_id
