"""PublishOperator: the pipeline's last task: the manifest, the output paths in XCom, the Asset event."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from airflow.sdk import Asset, BaseOperator, Context

from airflow_resnet_prep.operators.lineage import LineageMixin
from airflow_resnet_prep.plugins.links import DatasetReportLink
from airflow_resnet_prep.policy import Policy, dag_conn_ids


class PublishOperator(LineageMixin, BaseOperator):
    """Write ``manifest.json`` (last, atomically), push the output paths and update an Asset.

    The work is :func:`airflow_resnet_prep.publish.publish_outputs`, given this task's arguments and the
    return values of the fetch, relabel and finish tasks. With a conversion summary (the converter's
    finish task ran) it writes the manifest; without one (the run reused the output) it reads the
    existing one. Every key of its result (``data_path``, ``imagenet_path``, ``tfrecords_path``,
    ``preprocessed_path`` or ``webdataset_path``, ``manifest``, ``cached``, ``report``, ``storage_conn_id``) is pushed as an
    XCom of its own, and the whole dict is the return value. It also writes ``report/run.json`` naming
    this DAG run, which the *Dataset report* tab checks before showing the report; the task's extra link
    opens that tab.

    :param data_dir: Working and output folder (path or ``s3://``/``gs://`` URI). (templated)
    :param implementation: ``"nvidia"``, ``"reference"`` or ``"webdataset"``: which converter's output to
        publish. (templated)
    :param storage_conn_id: Connection for a ``data_dir`` URI that names none. (templated)
    :param manifest_params: Output params recorded in the manifest besides the converter's own (which
        come with its summary), e.g. ``{"mxnet_version": "22.04"}``. Never a credential. (templated)
    :param asset: An Asset to update: it is added to ``outlets``, and its event's extra gets the
        ``*_path`` keys, ``implementation`` and ``cached`` (true when the run reused the output).
    :param fetch_task_id: The task whose return value holds the catalogs and fingerprints.
    :param relabel_task_id: The task whose return value holds the validation labels' fingerprint.
    :param finish_task_id: The converter's finish task, ``{implementation}`` replaced by the
        implementation; its return value is the conversion summary (none when it was skipped).
    :param allowed_conn_ids: Connections this task may use besides ``[resnet_prep] allowed_conn_ids``
        and those given here literally; see :mod:`airflow_resnet_prep.policy`.
    """

    template_fields: Sequence[str] = ("data_dir", "implementation", "storage_conn_id", "manifest_params")
    operator_extra_links = (DatasetReportLink(),)
    ui_color = "#fff8e1"

    def __init__(
        self,
        *,
        data_dir: str,
        implementation: str,
        storage_conn_id: str | None = None,
        manifest_params: Mapping[str, Any] | None = None,
        asset: Asset | None = None,
        fetch_task_id: str = "fetch",
        relabel_task_id: str = "relabel_val",
        finish_task_id: str = "{implementation}_finish",
        allowed_conn_ids: Collection[str] | None = None,
        **kwargs: Any,
    ) -> None:
        if asset is not None:
            outlets = list(kwargs.pop("outlets", None) or [])
            kwargs["outlets"] = outlets if asset in outlets else [*outlets, asset]
        super().__init__(**kwargs)
        self.data_dir = data_dir
        self.implementation = implementation
        self.storage_conn_id = storage_conn_id
        self.manifest_params = dict(manifest_params or {})
        self.asset = asset
        self.fetch_task_id = fetch_task_id
        self.relabel_task_id = relabel_task_id
        self.finish_task_id = finish_task_id
        self.allowed_conn_ids = dag_conn_ids(
            allowed_conn_ids, conns=(storage_conn_id,), locations=(data_dir,)
        )

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_resnet_prep.params import as_declared
        from airflow_resnet_prep.pipeline import fingerprints_of
        from airflow_resnet_prep.publish import publish_outputs

        Policy.load(self.allowed_conn_ids).check_run(
            data_dir=self.data_dir, conns={"storage_conn_id": self.storage_conn_id}
        )
        ti = context["ti"]
        implementation = self.implementation
        fetched = ti.xcom_pull(task_ids=self.fetch_task_id)
        relabelled = ti.xcom_pull(task_ids=self.relabel_task_id)
        summary = ti.xcom_pull(task_ids=self.finish_task_id.format(implementation=implementation))
        params = {
            **(summary or {}).get("params", {}),
            **as_declared(self.manifest_params),
            "data_dir": self.data_dir,
            "implementation": implementation,
            "storage_conn_id": (self.storage_conn_id or "").strip() or None,
        }
        outputs = publish_outputs(
            params,
            fetched=fetched,
            relabelled=relabelled,
            summary=summary,
            run={"dag_id": ti.dag_id, "run_id": ti.run_id},
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
