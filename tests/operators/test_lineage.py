"""OpenLineage: the DAG run with ``airflow dags test`` and the OpenLineage provider's file transport; the
events name the three sources as inputs and the training files as outputs, and no connection or
credential shows in them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_resnet_prep.operators.lineage import dataset_name

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
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))},
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "resnet-prep-test",
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events_file), "append": True}
        ),
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
    conf = {
        "implementation": "reference",
        "data_dir": str(data_dir),
        "train_source": str(sample.train_tar),
        "val_source": str(sample.val_tar),
        "labels_source": str(sample.labels),
        "train_shards": 2,
        "val_shards": 1,
        "workers": 1,
    }
    run = subprocess.run(
        [airflow, "dags", "test", "mlperf_resnet_prep", "-c", json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
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
