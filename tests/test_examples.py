"""The example DAGs shipped in the wheel (``airflow_resnet_prep/example_dags/``): they parse as Airflow
parses a DAGs folder, and one of them runs end to end with ``airflow dags test`` on the sample set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import airflow_resnet_prep.example_dags as examples
from tests.support.airflow_cli import dags_test

EXAMPLES = Path(examples.__file__).resolve().parent
EXAMPLE_IDS = {"example_resnet_prep_reference", "example_resnet_prep_nvidia"}


@pytest.fixture(scope="module")
def bag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(EXAMPLES))


def test_the_example_dags_parse_without_import_errors(bag):
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == EXAMPLE_IDS


def test_the_scheduled_example_has_every_required_default_and_the_manual_one_does_not_need_them(bag):
    weekly = bag.dags["example_resnet_prep_reference"]
    assert str(weekly.schedule) == "@weekly"
    for name in ("data_dir", "train_source", "val_source"):
        assert weekly.params.get_param(name).has_value, name
    by_hand = bag.dags["example_resnet_prep_nvidia"]
    assert by_hand.schedule is None
    assert by_hand.params["data_dir"] == "/data/imagenet/recordio"
    assert not by_hand.params.get_param("train_source").has_value  # the trigger form asks for it


def test_the_manual_example_runs_with_airflow_dags_test(sample, tmp_path):
    data_dir = tmp_path / "recordio"
    conf = {
        "data_dir": str(data_dir),
        "train_source": str(sample.train_tar),
        "val_source": str(sample.val_tar),
        "labels_source": str(sample.labels),
        "workers": 1,
    }
    run = dags_test("example_resnet_prep_nvidia", conf, home=tmp_path / "home", dags_folder=EXAMPLES)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["implementation"] == "nvidia"
    assert manifest["images"] == {"train": sample.train_count, "val": sample.val_count}
    assert (data_dir / "recordio" / "train.rec").is_file()
