"""What both converter operators share: the plan / units / finish steps of the converter skeleton."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import Context

from airflow_resnet_prep.operators.base import Arguments, PrepOperator, default

if TYPE_CHECKING:
    from airflow_resnet_prep.converters.base import Converter
    from airflow_resnet_prep.layout import DataDir

STEPS = ("all", "plan", "units", "finish")


class ConvertOperator(PrepOperator):
    """Run one step of a conversion (see :mod:`airflow_resnet_prep.converters.base`).

    - ``step="all"`` (default): plan, run every unit with ``workers`` processes, finish; one task.
    - ``step="plan"``: write the plan; return the unit ids split into ``fanout`` batches, ready for
      ``.expand(unit_ids=...)`` of a mapped ``step="units"`` task.
    - ``step="units"``: run the units ``unit_ids`` (a finished unit is skipped, so retries are cheap);
      a batch holding every unit runs the format's one-machine path, as ``step="all"`` does.
    - ``step="finish"``: check every unit is done and put the outputs under their final names.

    For ``data_dir`` (the working folder holding the catalogs; the output goes below it),
    ``storage_conn_id`` and ``allowed_conn_ids`` see :class:`~airflow_resnet_prep.operators.base.PrepOperator`.

    Steps ``all`` and ``finish`` push the output folder under :attr:`output_key` and return the
    conversion summary. A concrete operator sets :attr:`implementation` and :attr:`output_key` and lists
    its own arguments after :attr:`common_fields` in ``template_fields``.

    :param on_bad_image: ``"fail"`` (default) names an unreadable image and fails; ``"skip"`` leaves it
        out (of every output file) and lists it in the manifest. (templated)
    :param decode_check: Decode every image with TensorFlow's JPEG decoder before writing it; one that
        fails follows ``on_bad_image``. Needs the ``tensorflow`` extra. Default off. (templated)
    :param workers: Processes used by this task (0 = all cores). (templated)
    :param force: Replace an unfinished conversion with different params. (templated)
    :param step: ``"all"``, ``"plan"``, ``"units"`` or ``"finish"``.
    :param unit_ids: With ``step="units"``: the units to run (mappable). (templated)
    :param fanout: With ``step="plan"``: how many batches of units to return; 0 (default) = auto, one
        batch with a local executor, eight with a distributed one. (templated)
    """

    #: The ``implementation`` param's value this operator writes.
    implementation: ClassVar[str] = ""
    output_key: ClassVar[str] = ""
    common_fields: ClassVar[tuple[str, ...]] = (
        *PrepOperator.base_fields,
        "workers",
        "force",
        "on_bad_image",
        "decode_check",
        "unit_ids",
        "fanout",
    )
    arg_types = {"unit_ids": lambda value, name: [int(i) for i in (value or [])]}

    def __init__(
        self,
        *,
        step: str = "all",
        unit_ids: Sequence[int] | str | None = None,
        fanout: int | str = default("fanout"),
        workers: int | str = default("workers"),
        force: bool | str = default("force"),
        on_bad_image: str = default("on_bad_image"),
        decode_check: bool | str = default("decode_check"),
        **kwargs: Any,
    ) -> None:
        if step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}, got {step!r}")
        self.keep(locals())
        super().__init__(**kwargs)

    def make_converter(self, args: Arguments | None = None) -> Converter:
        """The converter of :attr:`implementation`, configured from ``args`` (default: this operator's
        rendered arguments) as the CLI configures it (:func:`airflow_resnet_prep.pipeline.make_converter`,
        imported here so that parsing a DAG never loads a converter)."""
        from airflow_resnet_prep.pipeline import make_converter

        return make_converter(self.implementation, self.arguments() if args is None else args)

    def run(self, context: Context, data_dir: DataDir, args: Arguments) -> Any:
        from airflow_resnet_prep.converters import base, local

        converter = self.make_converter(args)
        if self.step == "plan":
            plan = base.plan(converter, data_dir, force=args.force)
            fanout = args.fanout or auto_fanout()
            self.log.info("%d units in %d batches", len(plan.units), min(fanout, len(plan.units)))
            return batches([u.id for u in plan.units], fanout)
        if self.step == "units":
            ids = args.unit_ids
            plan = base.Plan.load(data_dir, converter.implementation)
            if set(ids) == {u.id for u in plan.units}:
                local.run_all(converter, plan, workers=args.workers)  # one task has it all
            else:
                local.run_units(converter, plan, ids, workers=args.workers)
            return {"units": ids}
        if self.step == "finish":
            summary = base.finish(converter, base.Plan.load(data_dir, converter.implementation))
        else:
            summary = local.convert(converter, data_dir, workers=args.workers, force=args.force)
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
