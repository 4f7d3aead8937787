"""VerifyOperator: check a prepared data set (or a copy of it) against its manifest, as a task."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import Context

from airflow_resnet_prep.operators.base import Arguments, PrepOperator, default
from airflow_resnet_prep.operators.values import as_bool

if TYPE_CHECKING:
    from airflow_resnet_prep.layout import DataDir


class VerifyOperator(PrepOperator):
    """Run :func:`airflow_resnet_prep.verify.verify` on ``data_dir``; fail listing every problem found.

    For a DAG that copies the output to where training reads it (another bucket, the nodes' disks) and
    wants to know the copy is intact before a multi-day run, or as a step after ``publish``. Needs only
    the copy: the manifest and the output folder. Returns the result as a dict (``ok``, counts,
    ``problems``) and pushes it as XCom ``verify``. ``data_dir`` is the data set; for it,
    ``storage_conn_id`` and ``allowed_conn_ids`` see :class:`~airflow_resnet_prep.operators.base.PrepOperator`.

    :param decode: Also decode every image with TensorFlow's JPEG decoder (needs the ``tensorflow``
        extra; about 2 ms of CPU per image). (templated)
    :param workers: Processes (0 = one per core). (templated)
    """

    template_fields = (*PrepOperator.base_fields, "decode", "workers")
    arg_types = {"decode": lambda value, name: as_bool(value)}
    ui_color = "#e3f2fd"

    def __init__(
        self, *, decode: bool | str = False, workers: int | str = default("workers"), **kwargs: Any
    ) -> None:
        self.keep(locals())
        super().__init__(**kwargs)

    def run(self, context: Context, data_dir: DataDir, args: Arguments) -> dict[str, Any]:
        from airflow_resnet_prep.verify import check_or_raise, verify

        report = verify(data_dir, decode=args.decode, workers=args.workers)
        for line in report.lines():
            self.log.info("%s", line)
        context["ti"].xcom_push(key="verify", value=report.to_dict())
        check_or_raise(report)
        return report.to_dict()
