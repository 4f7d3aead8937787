"""Bounds on what a trigger may ask for: processes (``workers`` against ``[resnet_prep] max_workers`` and
the units of work), ``resize``, string lengths and the checksum form. The form's schema is checked with
Airflow's own ``Param`` validation, and the DAG as ``dags test`` runs it."""

from __future__ import annotations

import os

import pytest
from airflow.sdk import Param

from airflow_resnet_prep.converters import local, pool, recordio_direct
from airflow_resnet_prep.factory import _param
from airflow_resnet_prep.params import MAX_RESIZE, MAX_STRING

GOOD_MD5 = "md5:" + "0" * 32


def _accepts(name: str, value) -> bool:
    from airflow.sdk.definitions.param import ParamValidationError

    param: Param = _param(name, None)
    try:
        param.resolve(value)
    except ParamValidationError:
        return False
    return True


@pytest.mark.parametrize(
    ("name", "value", "ok"),
    [
        ("train_checksum", None, True),  # null: not given
        ("train_checksum", "", True),
        ("train_checksum", GOOD_MD5, True),
        ("val_checksum", "SHA256:" + "aB" * 32, True),
        ("train_checksum", "md5:zz", False),
        ("train_checksum", "md5:" + "0" * 31, False),
        ("val_checksum", "sha1:" + "0" * 40, False),
        ("resize", None, True),
        ("resize", MAX_RESIZE, True),
        ("resize", 30000, False),
        ("labels_source", "x" * MAX_STRING, True),
        ("labels_source", "x" * (MAX_STRING + 1), False),
        ("http_conn_id", None, True),
        ("data_dir", "/d" + "x" * MAX_STRING, False),
        ("implementation", "nvidia", True),
    ],
)
def test_the_form_schema_bounds_what_a_trigger_may_ask(name, value, ok) -> None:
    assert _accepts(name, value) is ok


def test_dags_test_refuses_a_malformed_checksum_before_any_task(tmp_path, sample, airflow_db) -> None:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).get_dag("mlperf_resnet_prep")
    with pytest.raises(Exception, match=r"train_checksum|pattern|does not match") as err:
        dag.test(
            run_conf={
                "data_dir": str(tmp_path / "data"),
                "train_source": str(sample.train_tar),
                "val_source": str(sample.val_tar),
                "train_checksum": "md5:not-hex",
            }
        )
    assert "Param" in type(err.value).__name__ or "param" in str(err.value).lower()
    assert not (tmp_path / "data").exists()


def test_workers_are_bounded_by_max_workers_and_the_work(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__MAX_WORKERS", "3")
    assert pool.resolve_workers(40) == 3
    assert pool.resolve_workers(40, work=2) == 2
    assert pool.resolve_workers(0, work=18) <= 3
    assert pool.resolve_workers(1, work=0) == 1
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__MAX_WORKERS", "")
    assert pool.resolve_workers(10_000) == len(os.sched_getaffinity(0))
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__MAX_WORKERS", "lots")
    with pytest.raises(Exception, match="max_workers"):
        pool.resolve_workers(2)


def test_a_conversion_asking_for_40_workers_starts_no_more_than_allowed(
    tmp_path, sample, monkeypatch
) -> None:
    """workers=40 on 36 images: the processes started are what max_workers allows, never 40 (or 80)."""
    from airflow_resnet_prep.pipeline import run

    monkeypatch.setenv("AIRFLOW__RESNET_PREP__MAX_WORKERS", "2")
    started: list[int] = []
    real = pool.resolve_workers

    def counted(workers, work=None):
        started.append(real(workers, work))
        return started[-1]

    for module in (local, recordio_direct):
        monkeypatch.setattr(module, "resolve_workers", counted)
    run(
        {
            "data_dir": str(tmp_path / "data"),
            "train_source": str(sample.train_tar),
            "val_source": str(sample.val_tar),
            "labels_source": str(sample.labels),
            "workers": 40,
        }
    )
    assert started and max(started) <= 2


def test_resize_beyond_the_bound_is_refused_by_the_converter_too() -> None:
    from airflow_resnet_prep.converters.recordio import RecordIOConverter

    with pytest.raises(ValueError, match="4096"):
        RecordIOConverter(resize=30000)
    RecordIOConverter(resize=MAX_RESIZE)
