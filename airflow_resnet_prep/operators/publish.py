"""PublishOperator: the DAG's last task: the manifest, the output paths in XCom, the Asset event."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import Asset, BaseOperator, Context

from airflow_resnet_prep.plugins.links import DatasetReportLink


class PublishOperator(BaseOperator):
    """Write ``manifest.json`` (last, atomically), push the output paths and update the prepared Asset.

    The work is :func:`airflow_resnet_prep.publish.publish_outputs`, given the run's params and the
    XComs of the fetch, relabel and finish tasks. With a conversion summary (the converter's finish task
    ran) it writes the manifest; without one (the run took the reuse branch) it reads the existing one.
    Every key of its result (``data_path``, ``imagenet_path``, ``tfrecords_path`` or
    ``preprocessed_path``, ``manifest``, ``cached``, and whatever else it reports, e.g. ``report``) is
    pushed as an XCom of its own, and the whole dict is the return value. The task has an extra link,
    *Dataset report*, to the report tab of its DAG run.

    :param data_dir: Working and output folder; overrides the run's ``data_dir`` param. (templated)
    :param implementation: ``"nvidia"`` or ``"reference"``: which converter's output to publish;
        overrides the run's ``implementation`` param. (templated)
    :param defaults: What a param left empty (``None``) in the run means, e.g. the DAG's defaults with
        their ``MLPERF_RESNET_PREP_*`` overrides; default: the built-in defaults of
        :mod:`airflow_resnet_prep.params`. The resolved params are recorded in the manifest (output
        params only, never a credential).
    :param asset: An Asset to update: it is added to ``outlets``, and its event's extra gets the
        ``*_path`` keys, ``implementation`` and ``cached`` (true when the run reused the output).
    :param fetch_task_id: The task whose return value holds the catalogs and fingerprints.
    :param relabel_task_id: The task whose return value holds the validation labels' fingerprint.
    :param finish_task_id: The converter's finish task, ``{implementation}`` replaced by the
        implementation; its return value is the conversion summary (none when it was skipped).
    """

    template_fields: Sequence[str] = ("data_dir", "implementation")
    operator_extra_links = (DatasetReportLink(),)
    ui_color = "#fff8e1"

    def __init__(
        self,
        *,
        data_dir: str,
        implementation: str,
        defaults: Mapping[str, Any] | None = None,
        asset: Asset | None = None,
        fetch_task_id: str = "fetch",
        relabel_task_id: str = "relabel_val",
        finish_task_id: str = "{implementation}_finish",
        **kwargs: Any,
    ) -> None:
        if asset is not None:
            outlets = list(kwargs.pop("outlets", None) or [])
            kwargs["outlets"] = outlets if asset in outlets else [*outlets, asset]
        super().__init__(**kwargs)
        self.data_dir = data_dir
        self.implementation = implementation
        self.defaults = dict(defaults) if defaults is not None else None
        self.asset = asset
        self.fetch_task_id = fetch_task_id
        self.relabel_task_id = relabel_task_id
        self.finish_task_id = finish_task_id

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_resnet_prep.params import resolved
        from airflow_resnet_prep.publish import publish_outputs

        params = resolved(dict(context["params"]), self.defaults)
        params["data_dir"] = self.data_dir
        params["implementation"] = implementation = self.implementation
        ti = context["ti"]
        outputs = publish_outputs(
            params,
            fetched=ti.xcom_pull(task_ids=self.fetch_task_id),
            relabelled=ti.xcom_pull(task_ids=self.relabel_task_id),
            summary=ti.xcom_pull(task_ids=self.finish_task_id.format(implementation=implementation)),
        )
        for key, value in outputs.items():
            ti.xcom_push(key=key, value=value)
        if self.asset is not None:
            # Every successful run updates the Asset; ``cached`` tells consumers whether the data changed.
            context["outlet_events"][self.asset].extra = {
                **{k: v for k, v in outputs.items() if k.endswith("_path")},
                "implementation": implementation,
                "cached": outputs["cached"],
            }
        return outputs
