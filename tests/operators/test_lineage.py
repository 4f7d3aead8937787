"""OpenLineage: the DAG run with ``airflow dags test`` and the OpenLineage provider's file transport; the
events name the three sources as inputs and the training files as outputs, and no connection or
credential shows in them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_resnet_prep.operators.lineage import dataset_name
from tests.support.airflow_cli import dags_test
from tests.support.sampletools import sample_conf

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("/data/ILSVRC2012_img_train.tar", ("file", "/data/ILSVRC2012_img_train.tar")),
        ("/data/prep/", ("file", "/data/prep")),
        ("file:///data/x.tar", ("file", "/data/x.tar")),
        ("s3://conn_id@bucket/imagenet/train.tar", ("s3://bucket", "imagenet/train.tar")),
        ("gs://bucket/prefix/", ("gs://bucket", "prefix")),
        (
            "https://user:pw@mirror.example/a/train.tar?token=x",
            ("https://mirror.example:443", "/a/train.tar"),
        ),
        ("", None),
        ("relative/path", None),
    ],
)
def test_locations_become_datasets_by_openlineage_naming(location, expected) -> None:
    assert dataset_name(location) == expected


def test_a_dag_run_emits_sources_in_and_outputs_out(sample, tmp_path: Path) -> None:
    events_file = tmp_path / "lineage.jsonl"
    data_dir = tmp_path / "data"
    conf = sample_conf(sample, data_dir)
    run = dags_test(
        "mlperf_resnet_prep",
        conf,
        home=tmp_path / "airflow",
        dags_folder=REPO / "dags",
        env={
            "AIRFLOW__OPENLINEAGE__NAMESPACE": "resnet-prep-test",
            "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
                {"type": "file", "log_file_path": str(events_file), "append": True}
            ),
        },
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    events = [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    complete = {
        e["job"]["name"].rpartition(".")[2]: e
        for e in events
        if e.get("eventType") == "COMPLETE" and "job" in e
    }

    def names(event: dict, side: str) -> set[tuple[str, str]]:
        return {(d["namespace"], d["name"]) for d in event.get(side, [])}

    sources = {("file", str(p)) for p in (sample.train_tar, sample.val_tar, sample.labels)}
    assert names(complete["publish"], "inputs") == sources
    assert names(complete["publish"], "outputs") == {
        ("file", str(data_dir / "tfrecords")),
        ("file", str(data_dir / "manifest.json")),
    }
    assert names(complete["fetch"], "inputs") == {
        ("file", str(sample.train_tar)),
        ("file", str(sample.val_tar)),
    }
    assert names(complete["reference_finish"], "outputs") == {("file", str(data_dir / "tfrecords"))}
