"""The Airflow plugin: the report app and the *Dataset report* tab of a DAG run.

Registered through the ``airflow.plugins`` entry point (pyproject.toml), so it loads with Airflow's
default lazy provider discovery; plugins listed only in provider info would load only with
``[core] lazy_discover_providers = False``. The ``publish`` task's extra link needs no registration: it
is declared on :class:`~airflow_resnet_prep.operators.publish.PublishOperator`, and Airflow 3 stores
its URL in XCom when the task ends.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_resnet_prep import config
from airflow_resnet_prep.plugins.links import URL_PREFIX, URL_ROUTE, VIEW_NAME, base_path


class ReportApp:
    """The report app (:func:`~airflow_resnet_prep.plugins.report_app.create_app`) as an ASGI app built
    on its first request.

    Every Airflow process imports entry-point plugins, task processes included; building the FastAPI app
    imports the API server's security and database modules, which only the API server needs.
    """

    def __init__(self) -> None:
        self._app = None

    @property
    def app(self):
        if self._app is None:
            from airflow_resnet_prep.plugins.report_app import create_app

            self._app = create_app()
        return self._app

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)


def _fastapi_app() -> dict:
    return {"app": ReportApp(), "url_prefix": URL_PREFIX, "name": "MLPerf ResNet prep dataset reports"}


def _run_tab() -> dict:
    return {
        "name": VIEW_NAME,
        # {DAG_ID} and {RUN_ID} are substituted (URL-encoded) by the UI; the tab renders it in an iframe.
        "href": f"{base_path()}{URL_PREFIX}/dags/{{DAG_ID}}/runs/{{RUN_ID}}/report/",
        "destination": "dag_run",
        "url_route": URL_ROUTE,
    }


class DatasetReportPlugin(AirflowPlugin):
    """Serves each DAG run's ``data_dir/report/`` (see :mod:`.report_app`) and shows it as a tab.

    Airflow shows a plugin's run tab on every DAG's runs (runs of DAGs without a PublishOperator say so
    in it); ``[resnet_prep] report_view = false`` hides it. The app stays, for the extra link.
    """

    name = "airflow_resnet_prep"
    fastapi_apps = [_fastapi_app()]
    external_views = [_run_tab()] if config.get_bool("report_view") else []
