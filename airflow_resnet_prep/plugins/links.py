"""Where a run's report lives in the Airflow UI, and the ``publish`` task's extra link to it.

Imports nothing heavy: the worker imports this module with the operator, to compute the link when the
task finishes (Airflow 3 stores extra links in XCom then; the API server only reads them back).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, urlparse

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

#: Where the plugin's FastAPI app is mounted, under the API server's base path.
URL_PREFIX = "/resnet-prep"
#: The DAG run tab's route: ``/dags/<dag_id>/runs/<run_id>/plugin/<URL_ROUTE>``.
URL_ROUTE = "dataset-report"
#: The tab's and the extra link's name.
VIEW_NAME = "Dataset report"


def base_path() -> str:
    """The path part of ``[api] base_url`` without its trailing slash ("" when Airflow is at ``/``)."""
    try:
        from airflow.sdk.configuration import conf
    except ImportError:  # pragma: no cover - an API server without the Task SDK's configuration
        from airflow.configuration import conf
    base_url = conf.get("api", "base_url", fallback="/") or "/"
    path = urlparse(base_url).path if base_url.startswith(("http://", "https://")) else base_url
    return path.rstrip("/")


def report_url(dag_id: str, run_id: str, prefix: str | None = None) -> str:
    """The report of one run as the plugin app serves it (the folder URL, ending with ``/``)."""
    prefix = base_path() if prefix is None else prefix
    return f"{prefix}{URL_PREFIX}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/report/"


def run_tab_url(dag_id: str, run_id: str, prefix: str | None = None) -> str:
    """The *Dataset report* tab of a DAG run page in the Airflow UI."""
    prefix = base_path() if prefix is None else prefix
    return f"{prefix}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/plugin/{URL_ROUTE}"


class DatasetReportLink(BaseOperatorLink):
    """Extra link of ``publish``: the *Dataset report* tab of the task's DAG run (same origin, so the
    UI opens it in place)."""

    name = VIEW_NAME

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return run_tab_url(ti_key.dag_id, ti_key.run_id)
