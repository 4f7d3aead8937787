"""The pipeline as a DAG: :func:`mlperf_resnet_prep_dag` builds it, so that a deployment can ship it with
a few lines and run several side by side (other ids, defaults, schedules, Assets).

fetch -> relabel_val -> choose_implementation -> {nvidia|reference|webdataset}_plan -> *_units (mapped) -> *_finish -> publish
                                              \\-> reuse_existing (manifest says the output is up to date) -/

Building it imports no TensorFlow and reads no data: the heavy work is imported inside tasks.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Asset, Param, TriggerRule

from airflow_resnet_prep import config
from airflow_resnet_prep.config import deployment_defaults
from airflow_resnet_prep.operators.base import PrepOperator
from airflow_resnet_prep.operators.branch import ChooseImplementationOperator
from airflow_resnet_prep.operators.fetch import FetchImagenetOperator
from airflow_resnet_prep.operators.nvidia import NvidiaPrepOperator
from airflow_resnet_prep.operators.publish import PublishOperator
from airflow_resnet_prep.operators.relabel import RelabelValOperator
from airflow_resnet_prep.operators.tfrecord import ConvertTFRecordOperator
from airflow_resnet_prep.operators.webdataset import ConvertWebDatasetOperator
from airflow_resnet_prep.params import IMPLEMENTATIONS, PARAMS, missing_required, recorded
from airflow_resnet_prep.policy import dag_conn_ids, dag_places

DEFAULT_DAG_ID = "mlperf_resnet_prep"
#: The shipped DAG's Asset keeps the name its consumers already schedule on.
DEFAULT_ASSET_NAME = "mlperf_resnet_prepared"


def recorded_params() -> list[str]:
    """The params a manifest of any implementation records, in declaration order."""
    names = {name for implementation in IMPLEMENTATIONS for name in recorded(implementation)}
    return [name for name in PARAMS if name in names]


def _param(name: str, default: Any) -> Param:
    """One field of the trigger form: required params first, optional ones (which admit null) in sections.

    A required param without a default gets none (Airflow's "not set"): the form keeps *Trigger* disabled
    until it is filled, and the REST API and ``airflow dags test`` refuse a run without it ("Invalid input
    for param data_dir: No value passed and Param has no default value"); its schema's ``minLength``
    refuses an empty string the same way."""
    spec = PARAMS[name]
    # The form shows `description_md` only when `description` is None.
    description = None if spec.description_md else spec.description
    extra = {"description_md": spec.description_md} if spec.description_md else {}
    if spec.required:
        # Param() without a default is Airflow's public way to say "none" (its NOTSET sentinel).
        given = {"default": default} if default else {}
    else:
        given = {"default": default if default != spec.default else spec.form_default}
    return Param(**given, description=description, title=name, **spec.form_schema(), **extra)


def _check_scheduled_defaults(dag_id: str, schedule: Any, resolved_defaults: dict[str, Any]) -> None:
    """A DAG that runs on its own (a schedule, an Asset) must have every required param's value: fail
    when its file is parsed (an import error), not in each scheduled run, naming where to set them."""
    if schedule is None or getattr(schedule, "can_be_scheduled", True) is False:
        return
    missing = missing_required(resolved_defaults)
    if missing:
        where = "; ".join(
            f"{name}: defaults={{{name!r}: ...}} or [resnet_prep] {name} "
            f"(AIRFLOW__RESNET_PREP__{name.upper()})"
            for name in missing
        )
        raise ValueError(
            f"DAG {dag_id!r} has a schedule ({schedule!r}) but no value for the required "
            f"param{'s' if len(missing) > 1 else ''} {', '.join(missing)}: every scheduled run would be "
            f"refused. Set {where}; or build it with schedule=None to trigger it by hand."
        )


def _asset(dag_id: str) -> Asset:
    """The Asset a run updates, one per DAG. Its URI names the DAG, not a folder: each run chooses its
    own data_dir, and two DAGs writing the same folder would otherwise claim one URI under two names
    (Airflow then disables both). Where the data is travels in each event's extra (``data_path``, the
    ``*_path`` keys)."""
    if dag_id == DEFAULT_DAG_ID:
        return Asset(name=DEFAULT_ASSET_NAME, uri="file:///mlperf-resnet-prep/prepared")
    return Asset(name=f"{dag_id}_prepared", uri=f"file:///mlperf-resnet-prep/{dag_id}")


def mlperf_resnet_prep_dag(
    dag_id: str = DEFAULT_DAG_ID,
    *,
    defaults: Mapping[str, Any] | None = None,
    schedule: Any = ...,
    asset: Asset | None = None,
    allowed_conn_ids: Collection[str] = (),
    start_date: pendulum.DateTime | None = None,
    tags: Collection[str] = ("mlperf", "imagenet", "resnet"),
    **dag_kwargs: Any,
) -> DAG:
    """The MLPerf ResNet-50 data preparation DAG.

    :param dag_id: The DAG's id.
    :param defaults: Param defaults of this DAG, e.g. ``{"data_dir": "/data/prep", "implementation":
        "reference"}``; they win over the deployment's ``[resnet_prep]`` defaults, which win over the
        built-in ones. What a run leaves empty takes these.
    :param schedule: Airflow schedule; default ``[resnet_prep] schedule`` (none: triggered by hand).
    :param asset: The Asset ``publish`` updates; default: see :func:`_asset`.
    :param allowed_conn_ids: Connections runs of this DAG may name, besides ``[resnet_prep]
        allowed_conn_ids``; the connections the defaults name are always allowed.
    :param start_date: Default 2024-01-01 (no catch-up).
    :param tags: The DAG's tags.
    :param dag_kwargs: Anything else :class:`airflow.sdk.DAG` takes (``description``, ``default_args``...).
    """
    unknown = sorted(set(defaults or {}) - set(PARAMS))
    if unknown:
        raise ValueError(f"unknown params in defaults: {', '.join(unknown)}; known: {', '.join(PARAMS)}")
    resolved_defaults = {
        **{name: spec.default for name, spec in PARAMS.items()},
        **deployment_defaults(),
        **{k: v for k, v in (defaults or {}).items() if v is not None},
    }
    dag_conns = dag_conn_ids(
        allowed_conn_ids,
        conns=(resolved_defaults["http_conn_id"], resolved_defaults["storage_conn_id"]),
        locations=[resolved_defaults[n] for n in ("data_dir", "train_source", "val_source", "labels_source")],
    )
    # The places the defaults name (the DAG author's or the deployment's choice) are the DAG's own.
    places = dag_places(
        resolved_defaults[n] for n in ("data_dir", "train_source", "val_source", "labels_source")
    )
    if asset is None:
        asset = _asset(dag_id)
    if schedule is ...:
        schedule = config.get("schedule") or None
    _check_scheduled_defaults(dag_id, schedule, resolved_defaults)

    def or_default(value: Any, name: str) -> Any:
        """Jinja filter: a param left empty in the form (null) takes its default."""
        return resolved_defaults[name] if value is None else value

    def p(name: str) -> str:
        return "{{ params." + name + " | or_default('" + name + "') }}"

    dag = DAG(
        dag_id=dag_id,
        description=dag_kwargs.pop(
            "description",
            "Prepare ImageNet for ResNet-50 training (MXNet RecordIO, TFRecords or WebDataset shards).",
        ),
        schedule=schedule,
        start_date=start_date or pendulum.datetime(2024, 1, 1, tz="UTC"),
        catchup=dag_kwargs.pop("catchup", False),
        max_active_runs=dag_kwargs.pop("max_active_runs", 1),  # the data_dir lock also guards across DAGs
        params={name: _param(name, resolved_defaults[name]) for name in PARAMS},
        render_template_as_native_obj=True,
        user_defined_filters={"or_default": or_default},
        default_args=dag_kwargs.pop(
            "default_args", {"retries": 1, "retry_delay": pendulum.duration(seconds=10)}
        ),
        tags=list(tags),
        doc_md=dag_kwargs.pop("doc_md", __doc__),
        **dag_kwargs,
    )
    with dag:

        def templated(operator: type[PrepOperator]) -> dict[str, Any]:
            """The operator's arguments named for params, each taken from the run's params."""
            fields = [name for name in operator.template_fields if name in PARAMS]
            return {name: p(name) for name in fields} | {
                "allowed_conn_ids": dag_conns,
                "allowed_places": places,
            }

        fetch = FetchImagenetOperator(task_id="fetch", **templated(FetchImagenetOperator))
        relabel = RelabelValOperator(task_id="relabel_val", **templated(RelabelValOperator))
        branch = ChooseImplementationOperator(
            task_id="choose_implementation",
            defaults=resolved_defaults,
            **templated(ChooseImplementationOperator),
        )
        reuse = EmptyOperator(task_id="reuse_existing")
        finishes = []
        for name, operator in (
            ("reference", ConvertTFRecordOperator),
            ("nvidia", NvidiaPrepOperator),
            ("webdataset", ConvertWebDatasetOperator),
        ):
            kwargs = templated(operator)
            plan = operator(task_id=f"{name}_plan", step="plan", **kwargs)
            units = operator.partial(task_id=f"{name}_units", step="units", retries=2, **kwargs).expand(
                unit_ids=plan.output
            )
            finish = operator(task_id=f"{name}_finish", step="finish", **kwargs)
            branch >> plan >> units >> finish
            finishes.append(finish)

        # Writes manifest.json (last), pushes the output paths and updates the Asset; its extra link
        # opens the run's Dataset report tab.
        publish = PublishOperator(
            task_id="publish",
            # Every param a manifest records: written as they are, or compared with it when reused.
            manifest_params={name: p(name) for name in recorded_params()},
            asset=asset,
            trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
            **templated(PublishOperator),
        )

        fetch >> relabel >> branch >> reuse
        [reuse, *finishes] >> publish
    return dag
