"""mlperf_resnet_prep: ImageNet -> MLPerf ResNet-50 training inputs (NVIDIA RecordIO or reference TFRecords).

fetch -> relabel_val -> choose_implementation -> {nvidia|reference}_plan -> *_units (mapped) -> *_finish -> publish
                                              \\-> reuse_existing (manifest says the output is up to date) -/

Parsing this file imports no TensorFlow: the heavy work is imported inside tasks. Defaults for a
scheduled run come from environment variables (MLPERF_RESNET_PREP_DATA_DIR, ..._TRAIN_SOURCE,
..._VAL_SOURCE, ..._LABELS_SOURCE, ..._SCHEDULE); see the README.
"""

from __future__ import annotations

import os
from typing import Any

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Asset, Param, TriggerRule, task

from airflow_resnet_prep.operators.fetch import FetchImagenetOperator
from airflow_resnet_prep.operators.nvidia import NvidiaPrepOperator
from airflow_resnet_prep.operators.publish import PublishOperator
from airflow_resnet_prep.operators.relabel import RelabelValOperator
from airflow_resnet_prep.operators.tfrecord import ConvertTFRecordOperator
from airflow_resnet_prep.params import PARAMS

ENV_PREFIX = "MLPERF_RESNET_PREP_"
PREPARED = Asset(name="mlperf_resnet_prepared", uri="file:///mlperf-resnet-prep/prepared")


def _from_env(name: str) -> str | None:
    """MLPERF_RESNET_PREP_<NAME>, the deployment's default of a string param; an empty variable (as
    docker compose passes an unset one) is no default."""
    return (
        os.environ.get(ENV_PREFIX + name.upper()) or None if isinstance(PARAMS[name].default, str) else None
    )


# What a param left empty (null) means: the deployment's default, else params.py's.
DEFAULTS = {name: _from_env(name) or spec.default for name, spec in PARAMS.items()}


def _params() -> dict[str, Param]:
    """The trigger form: required params first, then the optional ones (which admit null) by section."""
    params = {}
    for name, spec in PARAMS.items():
        # The form shows `description_md` only when `description` is None.
        description = None if spec.description_md else spec.description
        extra = {"description_md": spec.description_md} if spec.description_md else {}
        params[name] = Param(
            _from_env(name) or spec.form_default,
            description=description,
            title=name,
            **spec.form_schema(),
            **extra,
        )
    return params


def or_default(value: Any, name: str) -> Any:
    """Jinja filter: a param left empty in the form (null) takes its default."""
    return DEFAULTS[name] if value is None else value


def p(name: str) -> str:
    return "{{ params." + name + " | or_default('" + name + "') }}"


with DAG(
    dag_id="mlperf_resnet_prep",
    description="Prepare ImageNet for MLPerf ResNet-50 training (MXNet RecordIO or TFRecords).",
    schedule=os.environ.get(ENV_PREFIX + "SCHEDULE") or None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # one run per data_dir at a time; the data_dir lock also guards across DAGs
    params=_params(),
    render_template_as_native_obj=True,
    user_defined_filters={"or_default": or_default},
    default_args={"retries": 1, "retry_delay": pendulum.duration(seconds=10)},
    tags=["mlperf", "imagenet", "resnet"],
    doc_md=__doc__,
) as dag:
    fetch = FetchImagenetOperator(
        task_id="fetch",
        data_dir=p("data_dir"),
        train_source=p("train_source"),
        val_source=p("val_source"),
        train_checksum=p("train_checksum"),
        val_checksum=p("val_checksum"),
        http_conn_id=p("http_conn_id"),
        extract=p("extract"),
        storage_conn_id=p("storage_conn_id"),
        download_sources=p("download_sources"),
    )
    relabel = RelabelValOperator(
        task_id="relabel_val",
        data_dir=p("data_dir"),
        labels_source=p("labels_source"),
        http_conn_id=p("http_conn_id"),
        extract=p("extract"),
        storage_conn_id=p("storage_conn_id"),
        download_sources=p("download_sources"),
    )

    @task.branch(task_id="choose_implementation")
    def choose_implementation(params: dict, ti=None) -> str:
        """The converter of ``implementation``, or ``reuse_existing`` when the manifest is up to date."""
        from airflow_resnet_prep.layout import DataDir
        from airflow_resnet_prep.manifest import cached_manifest
        from airflow_resnet_prep.params import resolved
        from airflow_resnet_prep.pipeline import fingerprints_of

        params = resolved(dict(params), DEFAULTS)
        fingerprints = fingerprints_of(ti.xcom_pull(task_ids="fetch"), ti.xcom_pull(task_ids="relabel_val"))
        if not params["force"] and cached_manifest(
            DataDir.of(params["data_dir"], params["storage_conn_id"] or None),
            params["implementation"],
            params,
            fingerprints,
        ):
            return "reuse_existing"
        return f"{params['implementation']}_plan"

    branch = choose_implementation()
    reuse = EmptyOperator(task_id="reuse_existing")
    common = {
        "data_dir": p("data_dir"),
        "on_bad_image": p("on_bad_image"),
        "workers": p("workers"),
        "storage_conn_id": p("storage_conn_id"),
    }
    reference = {
        "train_shards": p("train_shards"),
        "val_shards": p("val_shards"),
        "shuffle_seed": p("shuffle_seed"),
        "dali_index": p("dali_index"),
        **common,
    }
    nvidia = {"resize": p("resize"), "quality": p("quality"), "mxnet_version": p("mxnet_version"), **common}

    finishes = []
    for name, operator, kwargs in (
        ("reference", ConvertTFRecordOperator, reference),
        ("nvidia", NvidiaPrepOperator, nvidia),
    ):
        plan = operator(task_id=f"{name}_plan", step="plan", fanout=p("fanout"), force=p("force"), **kwargs)
        units = operator.partial(task_id=f"{name}_units", step="units", retries=2, **kwargs).expand(
            unit_ids=plan.output
        )
        finish = operator(task_id=f"{name}_finish", step="finish", **kwargs)
        branch >> plan >> units >> finish
        finishes.append(finish)

    # Writes manifest.json (last), pushes the output paths and updates the prepared-data Asset; its
    # extra link opens the run's Dataset report tab.
    publish = PublishOperator(
        task_id="publish",
        data_dir=p("data_dir"),
        implementation=p("implementation"),
        defaults=DEFAULTS,
        asset=PREPARED,
        trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
    )

    fetch >> relabel >> branch >> reuse
    [reuse, *finishes] >> publish
