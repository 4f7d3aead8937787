"""Where a DAG's param defaults come from, and what happens without the required ones.

The factory's defaults, then ``[resnet_prep]`` (``AIRFLOW__RESNET_PREP__<PARAM>``), then the built-in
ones; a DAG with a schedule but no value for a required param is an import error when its file is parsed
(as Airflow's DAG processor reports it), naming each missing param and where to set it. Every option the
code reads is declared; the deprecated ``MLPERF_RESNET_PREP_*`` names still work, with a warning.
"""

from __future__ import annotations

import re
import textwrap
import warnings
from pathlib import Path

import pytest

from airflow_resnet_prep import config
from airflow_resnet_prep.params import PARAMS

PACKAGE = Path(config.__file__).resolve().parent


def parse(folder: Path, source: str):
    from airflow.dag_processing.dagbag import DagBag

    folder.mkdir(exist_ok=True)
    (folder / "my_prep.py").write_text(textwrap.dedent(source))
    return DagBag(dag_folder=str(folder))


SCHEDULED = """
    from airflow_resnet_prep import mlperf_resnet_prep_dag

    dag = mlperf_resnet_prep_dag("my_prep", defaults={"data_dir": "/data/prep"}, schedule="@weekly")
"""


@pytest.fixture
def clean_env(monkeypatch):
    for name in PARAMS:
        monkeypatch.delenv(f"AIRFLOW__RESNET_PREP__{name.upper()}", raising=False)
        monkeypatch.delenv(f"MLPERF_RESNET_PREP_{name.upper()}", raising=False)
    return monkeypatch


def test_a_scheduled_dag_without_the_required_sources_is_an_import_error_naming_them(tmp_path, clean_env):
    bag = parse(tmp_path / "dags", SCHEDULED)
    assert bag.dag_ids == []
    (error,) = bag.import_errors.values()
    assert "no value for the required params train_source, val_source" in error
    for name in ("train_source", "val_source"):
        assert f"defaults={{'{name}': ...}}" in error
        assert f"[resnet_prep] {name} (AIRFLOW__RESNET_PREP__{name.upper()})" in error
    assert "data_dir" not in error.split("required params", 1)[1].split(":", 1)[0]


def test_the_deployment_can_give_the_sources_a_scheduled_dag_needs(tmp_path, clean_env):
    clean_env.setenv("AIRFLOW__RESNET_PREP__TRAIN_SOURCE", "/imagenet/ILSVRC2012_img_train.tar")
    clean_env.setenv("AIRFLOW__RESNET_PREP__VAL_SOURCE", "/imagenet/ILSVRC2012_img_val.tar")
    clean_env.setenv("AIRFLOW__RESNET_PREP__TRAIN_SHARDS", "256")
    bag = parse(tmp_path / "dags", SCHEDULED)
    assert bag.import_errors == {}
    dag = bag.dags["my_prep"]
    assert dag.params["train_source"] == "/imagenet/ILSVRC2012_img_train.tar"
    assert dag.params["data_dir"] == "/data/prep"  # the DAG's own default wins over none
    assert dag.params["train_shards"] == 256  # typed as the param


def test_a_dag_triggered_by_hand_leaves_the_required_params_to_the_form(tmp_path, clean_env):
    bag = parse(tmp_path / "dags", SCHEDULED.replace('schedule="@weekly"', "schedule=None"))
    assert bag.import_errors == {}
    assert not bag.dags["my_prep"].params.get_param("train_source").has_value


def test_a_deployment_default_outside_its_schema_is_refused_naming_the_option(tmp_path, clean_env):
    clean_env.setenv("AIRFLOW__RESNET_PREP__IMPLEMENTATION", "tensorflow")
    bag = parse(tmp_path / "dags", SCHEDULED.replace('schedule="@weekly"', "schedule=None"))
    (error,) = bag.import_errors.values()
    assert "[resnet_prep] implementation (AIRFLOW__RESNET_PREP__IMPLEMENTATION) = 'tensorflow'" in error


def test_every_option_the_code_reads_is_declared_with_a_description():
    read = set()
    for path in PACKAGE.rglob("*.py"):
        read |= set(re.findall(r"config\.(?:get|get_list|get_bool|lookup)\(\s*\"(\w+)\"", path.read_text()))
    read |= set(config.PARAM_DEFAULT_OPTIONS)  # deployment_defaults() reads these
    assert read, "found no option reads: the pattern is out of date"
    declared = config.provider_config()["resnet_prep"]["options"]
    assert read <= set(declared), sorted(read - set(declared))
    for name, option in declared.items():
        assert len(option["description"]) > 30, name
    assert set(config.PARAM_DEFAULT_OPTIONS) == set(PARAMS) - {"force"}
    assert declared["train_shards"]["type"] == "integer" and declared["extract"]["type"] == "boolean"


def test_the_deprecated_names_still_work_and_warn_once(clean_env):
    clean_env.setenv("MLPERF_RESNET_PREP_WORKERS", "3")
    config._warned.discard("MLPERF_RESNET_PREP_WORKERS")
    with pytest.warns(FutureWarning, match="set AIRFLOW__RESNET_PREP__WORKERS"):
        assert config.deployment_defaults()["workers"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config.lookup("workers") == "3"  # said once per process
    clean_env.setenv("AIRFLOW__RESNET_PREP__WORKERS", "5")  # the new name wins
    assert config.lookup("workers") == "5"
