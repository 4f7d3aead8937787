"""VerifyOperator: check a prepared data set (or a copy of it) against its manifest, as a task."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from airflow.sdk import BaseOperator, Context

from airflow_resnet_prep.policy import Policy, dag_conn_ids, dag_places


class VerifyOperator(BaseOperator):
    """Run :func:`airflow_resnet_prep.verify.verify` on ``data_dir``; fail listing every problem found.

    For a DAG that copies the output to where training reads it (another bucket, the nodes' disks) and
    wants to know the copy is intact before a multi-day run, or as a step after ``publish``. Needs only
    the copy: the manifest and the output folder. Returns the result as a dict (``ok``, counts,
    ``problems``) and pushes it as XCom ``verify``.

    :param data_dir: The data set: a local path or ``s3://[conn_id@]bucket/prefix`` / ``gs://`` URI. (templated)
    :param decode: Also decode every image with TensorFlow's JPEG decoder (needs the ``tensorflow``
        extra; about 2 ms of CPU per image). (templated)
    :param workers: Processes (0 = one per core). (templated)
    :param storage_conn_id: Connection for a URI that names none; must be allowed like the
        conversion's (``[resnet_prep] allowed_conn_ids`` or ``allowed_conn_ids``). (templated)
    """

    template_fields = ("data_dir", "decode", "workers", "storage_conn_id")
    ui_color = "#e3f2fd"

    def __init__(
        self,
        *,
        data_dir: str,
        decode: bool | str = False,
        workers: int | str = 0,
        storage_conn_id: str | None = None,
        allowed_conn_ids: Collection[str] | None = None,
        allowed_places: Collection[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.data_dir = data_dir
        self.decode = decode
        self.workers = workers
        self.storage_conn_id = storage_conn_id
        self.allowed_conn_ids = dag_conn_ids(
            allowed_conn_ids, conns=(storage_conn_id,), locations=(data_dir,)
        )
        # Sources and data_dirs the DAG's code names (literally here, or the factory's defaults).
        self.dag_places = dag_places([*(allowed_places or ()), data_dir])

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_resnet_prep.layout import DataDir
        from airflow_resnet_prep.operators.values import as_bool, as_int
        from airflow_resnet_prep.verify import check_or_raise, verify

        Policy.load(self.allowed_conn_ids, dag_places=self.dag_places).check_run(
            data_dir=self.data_dir, conns={"storage_conn_id": self.storage_conn_id}
        )
        layout = DataDir.of(self.data_dir, self.storage_conn_id or None)
        report = verify(layout, decode=as_bool(self.decode), workers=as_int(self.workers, "workers"))
        for line in report.lines():
            self.log.info("%s", line)
        context["ti"].xcom_push(key="verify", value=report.to_dict())
        check_or_raise(report)
        return report.to_dict()
