"""ChooseImplementationOperator: the DAG's branch between the converters and reusing the output."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.providers.standard.operators.branch import BranchMixIn
from airflow.sdk import Context

from airflow_resnet_prep.operators.base import AfterSourcesOperator, Arguments, PrepOperator, default

if TYPE_CHECKING:
    from airflow_resnet_prep.layout import DataDir


class ChooseImplementationOperator(AfterSourcesOperator, BranchMixIn):
    """Follow ``{implementation}_plan``, or ``reuse_existing`` when ``data_dir``'s manifest says the output
    is up to date with this run's params and sources (and ``force`` is off); skip the other branches.

    For ``data_dir``, ``storage_conn_id`` and ``allowed_conn_ids`` see
    :class:`~airflow_resnet_prep.operators.base.PrepOperator`.

    :param implementation: ``"nvidia"``, ``"reference"`` or ``"webdataset"``. (templated)
    :param force: Rebuild even when the manifest says the output is up to date. (templated)
    :param defaults: What a param the run left empty (null) means: the DAG's resolved defaults; the run's
        params are compared with the manifest's after filling them in.
    :param reuse_task_id: The task to follow when the output is up to date.
    """

    template_fields: Sequence[str] = (*PrepOperator.base_fields, "implementation", "force")
    inherits_from_skipmixin = True
    ui_color = "#f3e5f5"

    def __init__(
        self,
        *,
        implementation: str = default("implementation"),
        force: bool | str = default("force"),
        defaults: Mapping[str, Any] | None = None,
        reuse_task_id: str = "reuse_existing",
        **kwargs: Any,
    ) -> None:
        self.keep(locals())
        self.defaults = dict(defaults or {})
        super().__init__(**kwargs)

    def run(self, context: Context, data_dir: DataDir, args: Arguments) -> Any:
        from airflow_resnet_prep.manifest import cached_manifest
        from airflow_resnet_prep.params import PARAMS, resolved
        from airflow_resnet_prep.pipeline import fingerprints_of

        params = resolved({k: v for k, v in context["params"].items() if k in PARAMS}, self.defaults or None)
        fingerprints = fingerprints_of(*self.sources_returned(context))
        if not args.force and cached_manifest(data_dir, args.implementation, params, fingerprints):
            return self.do_branch(context, self.reuse_task_id)
        return self.do_branch(context, f"{args.implementation}_plan")
