"""What both converter operators share: the plan / units / finish steps of the converter skeleton."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

from airflow_resnet_prep.operators.lineage import LineageMixin
from airflow_resnet_prep.policy import Policy, dag_conn_ids, dag_places

STEPS = ("all", "plan", "units", "finish")


class ConvertOperatorBase(LineageMixin, BaseOperator):
    """Run one step of a conversion (see :mod:`airflow_resnet_prep.converters.base`).

    - ``step="all"`` (default): plan, run every unit with ``workers`` processes, finish; one task.
    - ``step="plan"``: write the plan; return the unit ids split into ``fanout`` batches, ready for
      ``.expand(unit_ids=...)`` of a mapped ``step="units"`` task.
    - ``step="units"``: run the units ``unit_ids`` (a finished unit is skipped, so retries are cheap);
      a batch holding every unit runs the format's one-machine path, as ``step="all"`` does.
    - ``step="finish"``: check every unit is done and put the outputs under their final names.

    ``data_dir`` is a local path or an ``s3://`` / ``gs://`` URI, whose connection is the URI's own
    (``s3://conn_id@bucket/prefix``) or ``storage_conn_id``. That connection must be allowed (in
    ``[resnet_prep] allowed_conn_ids``, ``allowed_conn_ids`` or given literally) and ``data_dir`` must lie
    under ``[resnet_prep] allowed_data_roots`` when it is set; see :mod:`airflow_resnet_prep.policy`.

    Steps ``all`` and ``finish`` push the output folder under :attr:`output_key` and return the
    conversion summary. A concrete operator sets :attr:`output_key` and defines ``make_converter()``,
    which imports its converter lazily so that parsing a DAG never loads TensorFlow.
    """

    output_key: str = ""
    common_fields: tuple[str, ...] = (
        "data_dir",
        "workers",
        "force",
        "on_bad_image",
        "decode_check",
        "unit_ids",
        "fanout",
        "storage_conn_id",
    )

    def __init__(
        self,
        *,
        data_dir: str,
        step: str = "all",
        unit_ids: Sequence[int] | str | None = None,
        fanout: int | str = 0,
        workers: int | str = 0,
        force: bool | str = False,
        on_bad_image: str = "fail",
        decode_check: bool | str = False,
        storage_conn_id: str | None = None,
        allowed_conn_ids: Collection[str] | None = None,
        allowed_places: Collection[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}, got {step!r}")
        self.data_dir = data_dir
        self.step = step
        self.unit_ids = unit_ids
        self.fanout = fanout
        self.workers = workers
        self.force = force
        self.on_bad_image = on_bad_image
        self.decode_check = decode_check
        self.storage_conn_id = storage_conn_id
        self.allowed_conn_ids = dag_conn_ids(
            allowed_conn_ids, conns=(storage_conn_id,), locations=(data_dir,)
        )
        # Sources and data_dirs the DAG's code names (literally here, or the factory's defaults).
        self.dag_places = dag_places([*(allowed_places or ()), data_dir])

    def execute(self, context: Context) -> Any:
        from airflow_resnet_prep.converters import base, local
        from airflow_resnet_prep.layout import DataDir
        from airflow_resnet_prep.operators.values import as_bool, as_int

        Policy.load(self.allowed_conn_ids, dag_places=self.dag_places).check_run(
            data_dir=self.data_dir, conns={"storage_conn_id": self.storage_conn_id}
        )
        converter = self.make_converter()  # type: ignore[attr-defined]
        workers = as_int(self.workers, "workers")
        data_dir = DataDir.of(self.data_dir, self.storage_conn_id or None)
        if self.step == "plan":
            plan = base.plan(converter, data_dir, force=as_bool(self.force))
            fanout = as_int(self.fanout, "fanout") or auto_fanout()
            self.log.info("%d units in %d batches", len(plan.units), min(fanout, len(plan.units)))
            return batches([u.id for u in plan.units], fanout)
        if self.step == "units":
            ids = [int(i) for i in (self.unit_ids or [])]
            plan = base.Plan.load(data_dir, converter.implementation)
            if set(ids) == {u.id for u in plan.units}:
                local.run_all(converter, plan, workers=workers)  # one task has it all
            else:
                local.run_units(converter, plan, ids, workers=workers)
            return {"units": ids}
        if self.step == "finish":
            summary = base.finish(converter, base.Plan.load(data_dir, converter.implementation))
        else:
            summary = local.convert(converter, data_dir, workers=workers, force=as_bool(self.force))
        out_dir = data_dir.uri(converter.output_key)
        self.record_lineage([data_dir.url + "/catalog"], [data_dir.url + "/" + converter.output_key])
        context["ti"].xcom_push(key=self.output_key, value=out_dir)
        self.log.info("%s: %s", self.output_key, out_dir)
        return summary


DISTRIBUTED_FANOUT = 8


def auto_fanout() -> int:
    """``fanout=0``: one batch on a single machine, where one task running every unit is fastest
    (``nvidia`` then writes each ``.rec`` in place, without part files to join); a few batches for
    executors that spread tasks over machines."""
    from airflow.sdk.configuration import conf

    executor = conf.get("core", "executor", fallback="LocalExecutor")
    distributed = any(name in executor for name in ("Celery", "Kubernetes", "Edge", "Batch", "Ecs"))
    return DISTRIBUTED_FANOUT if distributed else 1


def batches(ids: list[int], fanout: int) -> list[list[int]]:
    """Split ``ids`` into at most ``fanout`` contiguous, near-equal, non-empty batches."""
    fanout = max(1, min(fanout, len(ids)))
    bounds = [len(ids) * i // fanout for i in range(fanout + 1)]
    return [ids[bounds[i] : bounds[i + 1]] for i in range(fanout)]
