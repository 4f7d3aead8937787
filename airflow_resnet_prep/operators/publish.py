"""PublishOperator: the pipeline's last task: the manifest, the output paths in XCom, the Asset event."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, Context

from airflow_resnet_prep.operators.base import AfterSourcesOperator, Arguments, PrepOperator
from airflow_resnet_prep.plugins.links import DatasetReportLink

if TYPE_CHECKING:
    from airflow_resnet_prep.layout import DataDir


class PublishOperator(AfterSourcesOperator):
    """Write ``manifest.json`` (last, atomically), push the output paths and update an Asset.

    The work is :func:`airflow_resnet_prep.publish.publish_outputs`, given this task's arguments and the
    return values of the fetch, relabel and finish tasks. With a conversion summary (the converter's
    finish task ran) it writes the manifest; without one (the run reused the output) it reads the
    existing one. Every key of its result (``data_path``, ``imagenet_path``, ``tfrecords_path``,
    ``preprocessed_path`` or ``webdataset_path``, ``manifest``, ``cached``, ``report``,
    ``storage_conn_id``) is pushed as an XCom of its own, and the whole dict is the return value. It also writes ``report/run.json`` naming
    this DAG run, which the *Dataset report* tab checks before showing the report; the task's extra link
    opens that tab. For ``data_dir``, ``storage_conn_id`` and ``allowed_conn_ids`` see
    :class:`~airflow_resnet_prep.operators.base.PrepOperator`.

    :param implementation: ``"nvidia"``, ``"reference"`` or ``"webdataset"``: which converter's output to
        publish. (templated)
    :param manifest_params: Output params recorded in the manifest besides the converter's own (which
        come with its summary), e.g. ``{"mxnet_version": "22.04"}``. Never a credential. (templated)
    :param asset: An Asset to update: it is added to ``outlets``, and its event's extra gets the
        ``*_path`` keys, ``implementation`` and ``cached`` (true when the run reused the output).
    :param finish_task_id: The converter's finish task, ``{implementation}`` replaced by the
        implementation; its return value is the conversion summary (none when it was skipped).
    """

    template_fields: Sequence[str] = (*PrepOperator.base_fields, "implementation", "manifest_params")
    operator_extra_links = (DatasetReportLink(),)
    ui_color = "#fff8e1"

    def __init__(
        self,
        *,
        implementation: str,
        manifest_params: Mapping[str, Any] | None = None,
        asset: Asset | None = None,
        finish_task_id: str = "{implementation}_finish",
        **kwargs: Any,
    ) -> None:
        self.keep(locals())
        self.manifest_params = dict(manifest_params or {})
        if asset is not None:
            outlets = list(kwargs.pop("outlets", None) or [])
            kwargs["outlets"] = outlets if asset in outlets else [*outlets, asset]
        super().__init__(**kwargs)

    def run(self, context: Context, data_dir: DataDir, args: Arguments) -> dict[str, Any]:
        from airflow_resnet_prep.params import as_declared
        from airflow_resnet_prep.pipeline import fingerprints_of
        from airflow_resnet_prep.publish import publish_outputs

        ti = context["ti"]
        implementation = self.implementation
        fetched, relabelled = self.sources_returned(context)
        summary = ti.xcom_pull(task_ids=self.finish_task_id.format(implementation=implementation))
        params = {
            **(summary or {}).get("params", {}),
            **as_declared(self.manifest_params),
            "data_dir": self.data_dir,
            "implementation": implementation,
            "storage_conn_id": args.storage_conn_id,
        }
        outputs = publish_outputs(
            params,
            fetched=fetched,
            relabelled=relabelled,
            summary=summary,
            run={"dag_id": ti.dag_id, "run_id": ti.run_id},
            data_dir=data_dir,
        )
        for key, value in outputs.items():
            ti.xcom_push(key=key, value=value)
        # The pipeline as a whole: the three sources in, the training files (and the manifest) out.
        fingerprints = fingerprints_of(fetched, relabelled)
        self.record_lineage(
            [(fp or {}).get("source") for fp in fingerprints.values()],
            [
                v
                for k, v in outputs.items()
                if k in ("tfrecords_path", "preprocessed_path", "webdataset_path", "manifest")
            ],
        )
        if self.asset is not None:
            # Every successful run updates the Asset; ``cached`` tells consumers whether the data changed.
            context["outlet_events"][self.asset].extra = {
                **{k: v for k, v in outputs.items() if k.endswith("_path")},
                "implementation": implementation,
                "cached": outputs["cached"],
            }
        return outputs
