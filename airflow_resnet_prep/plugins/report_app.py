"""FastAPI app of the plugin: serves one DAG run's ``data_dir/report/`` behind Airflow's access checks.

Routes (mounted at :data:`~airflow_resnet_prep.plugins.links.URL_PREFIX`, e.g. ``/resnet-prep``):

- ``GET /dags/{dag_id}/runs/{run_id}/report/``: the run's ``report/index.html``, or, when the run has
  no report (still running, failed, or it reused an output that has none), a plain page saying so and why;
- ``GET /dags/{dag_id}/runs/{run_id}/report/{path}``: another file of that folder;
- ``GET /dags/{dag_id}/runs/{run_id}/report``: redirects to the folder URL, so relative links resolve.

Airflow mounts plugin apps without authentication: every route depends on ``requires_access_dag``
(read access to the DAG's runs), which refuses a request without a valid token or session cookie
(401/403). The report folder is found from the run's XComs of task ``publish``: ``report`` (the path or
URI of ``index.html``), else ``manifest`` (``report/`` beside ``manifest.json``); locally it must be a
real folder named ``report``. A data_dir in a bucket (an ``s3://`` or ``gs://`` URI) is read through its
store (:class:`~airflow_resnet_prep.layout.DataDir`) with the connection in the XCom ``storage_conn_id``,
which must be defined on the API server too. A requested path is refused (404) when it has an empty,
``.`` or ``..`` segment, a backslash or a NUL, or (locally) when its real path (symlinks resolved) is not
a regular file inside the real report folder. A failed read says so without the error's text (which is
logged), so no page can show what a storage client put into its message.
Responses carry a Content-Security-Policy that sandboxes the report (its scripts cannot reach the
Airflow UI's origin or the network).
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

if TYPE_CHECKING:
    from airflow_resnet_prep.layout import DataDir

log = logging.getLogger(__name__)

PUBLISH_TASK_ID = "publish"
REPORT_DIR_NAME = "report"
INDEX = "index.html"
REPORT_SUFFIX = f"/{REPORT_DIR_NAME}/{INDEX}"

#: The report may use inline styles, inline SVG, ``data:`` images and inline scripts, and files of its
#: own folder; nothing else. ``sandbox`` without ``allow-same-origin`` gives it an opaque origin: a
#: script in it cannot read the Airflow UI (the parent frame) nor call the API with the user's cookie.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "img-src 'self' data: blob:",
        "style-src 'self' 'unsafe-inline'",
        "font-src 'self' data:",
        "script-src 'self' 'unsafe-inline'",
        "connect-src 'none'",
        "form-action 'none'",
        "base-uri 'none'",
        "frame-ancestors 'self'",
        "sandbox allow-scripts allow-popups allow-popups-to-escape-sandbox allow-downloads",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-cache",
}

READ_RUN = Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.RUN))


@dataclass
class Located:
    """Where a run's report is: ``report_dir`` (a local folder) or ``bucket`` (a data_dir in object
    storage whose ``report/index.html`` exists); or why it has none (both None, ``reason`` set)."""

    report_dir: Path | None
    title: str = ""
    reason: str = ""
    status_code: int = 404
    bucket: DataDir | None = None

    @property
    def found(self) -> bool:
        return self.report_dir is not None or self.bucket is not None


def _xcom_values(session: Any, dag_id: str, run_id: str) -> dict[str, Any]:
    """The XComs of ``publish`` (map index -1) in this run, deserialized."""
    from airflow.models.xcom import XComModel

    rows = session.scalars(
        XComModel.get_many(run_id=run_id, dag_ids=dag_id, task_ids=PUBLISH_TASK_ID, map_indexes=-1)
    ).all()
    values = {}
    for row in rows:
        try:
            value = XComModel.deserialize_value(row)
        except Exception:
            value = row.value
        if isinstance(value, str):
            with contextlib.suppress(ValueError):  # a JSON-encoded string, as some backends store it
                decoded = json.loads(value)
                value = decoded if isinstance(decoded, str) else value
        values[row.key] = value
    return values


def _why_no_publish(session: Any, dag_run: Any) -> Located:
    """The reason a run has no ``publish`` XCom, from the run's and its tasks' states."""
    from airflow.models.taskinstance import TaskInstance

    state = str(dag_run.state.value if hasattr(dag_run.state, "value") else dag_run.state)
    tis = session.scalars(
        select(TaskInstance).where(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
        )
    ).all()
    ti_states = {ti.task_id: str(ti.state.value if hasattr(ti.state, "value") else ti.state) for ti in tis}
    failed = sorted({ti.task_id for ti in tis if ti_states[ti.task_id] == "failed"})
    if ti_states and PUBLISH_TASK_ID not in ti_states:
        # external_views put the tab on every DAG's runs: say plainly that this DAG has no report.
        return Located(
            None,
            "No dataset report for this DAG",
            "This tab comes with the airflow-resnet-prep provider: it shows the report that the publish "
            f"task of mlperf_resnet_prep writes. DAG {dag_run.dag_id} has no task named publish.",
        )
    if state in ("queued", "running"):
        return Located(
            None,
            "The report is not written yet",
            f"This run is still {state}. The last task, publish, writes the report when the output is "
            "complete; come back to this tab when the run has finished.",
        )
    if state == "failed" or failed:
        named = (
            f"Task {failed[0]}"
            if len(failed) == 1
            else ("Tasks " + ", ".join(failed) if failed else "A task")
        )
        return Located(
            None,
            "This run has no report: it failed",
            f"{named} failed, so publish did not run and no report was written. The failed task's log "
            "says why; fix that, then clear the failed task (finished work is kept) or trigger a new run.",
        )
    publish_state = ti_states.get(PUBLISH_TASK_ID)
    return Located(
        None,
        "This run has no report",
        f"The run ended {state} but publish "
        + ("did not run" if publish_state in (None, "None") else f"ended {publish_state}")
        + " and pushed no manifest, so there is no report to show.",
    )


def locate_report(session: Any, dag_id: str, run_id: str) -> Located:
    """Find the report folder of one run from its ``publish`` XComs, or say why there is none."""
    from airflow.models.dagrun import DagRun

    dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if dag_run is None:
        return Located(None, "No such run", f"DAG {dag_id} has no run {run_id}.")
    published = _xcom_values(session, dag_id, run_id)
    report = published.get("report")
    manifest = published.get("manifest")
    where = report if isinstance(report, str) and report else manifest
    if isinstance(where, str) and where:
        from airflow_resnet_prep.storage import is_object_uri

        if is_object_uri(where):
            return _locate_in_bucket(published)
    if isinstance(report, str) and report:
        report_dir = Path(report).parent
    elif isinstance(manifest, str) and manifest:
        report_dir = Path(manifest).parent / REPORT_DIR_NAME
    else:
        return _why_no_publish(session, dag_run)
    data_dir = report_dir.parent
    if (
        report_dir.name == REPORT_DIR_NAME
        and report_dir.is_absolute()
        and not report_dir.is_symlink()
        and (report_dir / INDEX).is_file()
    ):
        return Located(report_dir, status_code=200)
    return _missing(
        published,
        str(data_dir),
        None,
        f"{report_dir / INDEX} is not there: it was moved or deleted since the run, or this API server "
        "does not see data_dir (it must be mounted at the same path as on the workers)",
    )


def _missing(published: dict[str, Any], data_dir: str, conn_id: str | None, gone: str) -> Located:
    """Why a run that published has no report to show: writing it failed, the reused output predates
    reports, or (``gone``) it has disappeared since."""
    reused = (
        f"Nothing had changed since the output in {data_dir} was made, so this run reused it (the "
        "reuse_existing branch) and converted nothing. "
        if published.get("cached")
        else ""
    )
    rewrite = _rewrite_hint(data_dir, conn_id)
    if "report" in published and published.get("report") is None:
        return Located(
            None,
            "The report could not be written",
            f"{reused}The output and its manifest.json are complete, but writing the report failed: "
            f"publish's log has the error. {rewrite}",
        )
    if "report" not in published and published.get("cached"):
        return Located(
            None,
            "This run reused an output that has no report",
            f"{reused}That output has no report: it was made before reports existed. {rewrite}",
        )
    return Located(None, "This run's report is missing", f"publish finished, but {gone}. {rewrite}")


def _rewrite_hint(data_dir: str, conn_id: str | None) -> str:
    conn = f" --conn-id {conn_id}" if conn_id else ""
    return (
        f"`python -m airflow_resnet_prep.report {data_dir} --html{conn}` writes it, or trigger a run "
        "with force=true."
    )


def _locate_in_bucket(published: dict[str, Any]) -> Located:
    """The report of a run whose data_dir is in a bucket: ``report/index.html`` under the data_dir the
    XComs name, read through :class:`~airflow_resnet_prep.layout.DataDir` with the run's connection."""
    from airflow_resnet_prep.layout import MANIFEST, DataDir
    from airflow_resnet_prep.report.build import REPORT_KEY

    report, manifest = published.get("report"), published.get("manifest")
    conn_id = published.get("storage_conn_id")
    conn_id = conn_id.strip() if isinstance(conn_id, str) and conn_id.strip() else None
    if isinstance(report, str) and report:
        if not report.endswith(REPORT_SUFFIX):
            return Located(None, "No report here", "The run's report XCom does not name a report/index.html.")
        data_dir = report[: -len(REPORT_SUFFIX)]
    elif isinstance(manifest, str) and manifest.endswith("/" + MANIFEST):
        data_dir = manifest[: -len(MANIFEST) - 1]
    else:
        return Located(None, "No report here", "The run's manifest XCom does not name a manifest.json.")
    try:
        layout = DataDir.of(data_dir, conn_id)
        exists = layout.exists(REPORT_KEY)
    except Exception as exc:
        _log_failure(data_dir, exc)
        return _unreadable(data_dir, conn_id)
    if exists:
        return Located(None, status_code=200, bucket=layout)
    return _missing(
        published, data_dir, conn_id, f"{layout.uri(REPORT_KEY)} is not there: it was deleted since the run"
    )


def _log_failure(where: str, exc: BaseException) -> None:
    """Log a failed read for the operator. The package's errors name URIs, never credentials; another
    library's message is not trusted that far: only its type is logged."""
    from airflow_resnet_prep.errors import PrepError

    detail = str(exc) if isinstance(exc, PrepError) else type(exc).__name__
    log.warning("dataset report: cannot read %s: %s", where, detail)


def _unreadable(data_dir: str, conn_id: str | None) -> Located:
    connection = f"the Airflow connection `{conn_id}`" if conn_id else "the default credentials"
    return Located(
        None,
        "The report could not be read",
        f"The API server could not read the report of {data_dir} with {connection}: the connection "
        "must be defined on the API server too (as on the workers) and allowed to read the bucket. "
        "The API server's log says more.",
        status_code=502,
    )


def safe_parts(relative: str) -> list[str] | None:
    """The segments of ``relative`` (a folder's ``index.html`` for a trailing ``/``), or None when it is
    empty, absolute, or has an empty, ``.`` or ``..`` segment, a backslash or a NUL."""
    if not relative or "\\" in relative or "\x00" in relative or relative.startswith("/"):
        return None
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts[:-1]) or parts[-1] in (".", ".."):
        return None
    if parts[-1] == "":  # a folder: its index.html
        parts[-1] = INDEX
    return parts


def safe_file(report_dir: Path, relative: str) -> Path | None:
    """The regular file ``relative`` names inside ``report_dir``, or None if it would leave it."""
    parts = safe_parts(relative)
    if parts is None:
        return None
    try:
        root = report_dir.resolve(strict=True)
        target = report_dir.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target


def _page(title: str, body: str, status_code: int) -> HTMLResponse:
    """A plain, readable HTML page (used when there is no report to show)."""
    text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font: 15px/1.5 system-ui, sans-serif; margin: 2rem; max-width: 48rem; color: #1a202c; }}
h1 {{ font-size: 1.3rem; }} code {{ background: #edf2f7; padding: 0 .25em; border-radius: 3px; }}
</style></head>
<body><h1>{html.escape(title)}</h1><p>{body}</p></body></html>
"""
    return HTMLResponse(text, status_code=status_code, headers=SECURITY_HEADERS)


def _reason_html(reason: str) -> str:
    """Escape ``reason``, showing `backquoted` parts as code."""
    pieces = html.escape(reason).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))


def _media_type(name: str) -> str:
    media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if media_type.startswith("text/") or media_type in ("image/svg+xml", "application/javascript"):
        media_type += "; charset=utf-8"
    return media_type


def _serve(located: Located, relative: str) -> Response:
    if located.bucket is not None:
        return _serve_object(located.bucket, relative)
    assert located.report_dir is not None
    target = safe_file(located.report_dir, relative)
    if target is None:
        return _page("Not found", "This report has no such file.", 404)
    return FileResponse(target, media_type=_media_type(target.name), headers=SECURITY_HEADERS)


def _serve_object(layout: DataDir, relative: str) -> Response:
    """A file of ``report/`` of a data_dir in a bucket, read whole through its store (the report is one
    self-contained page of a few MB)."""
    parts = safe_parts(relative)
    if parts is None:
        return _page("Not found", "This report has no such file.", 404)
    key = "/".join([REPORT_DIR_NAME, *parts])
    try:
        data = layout.store.read_bytes(key)
    except FileNotFoundError:
        return _page("Not found", "This report has no such file.", 404)
    except Exception as exc:
        _log_failure(layout.uri(key), exc)
        located = _unreadable(layout.url, layout.store.conn_id)
        return _page(located.title, _reason_html(located.reason), located.status_code)
    return Response(data, media_type=_media_type(parts[-1]), headers=SECURITY_HEADERS)


def create_app() -> FastAPI:
    """The plugin's FastAPI app (no OpenAPI docs: plugin apps are mounted without authentication)."""
    app = FastAPI(
        title="MLPerf ResNet prep: dataset reports",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.get("/dags/{dag_id}/runs/{run_id}/report", dependencies=[READ_RUN], include_in_schema=False)
    def report_folder(dag_id: str, run_id: str) -> RedirectResponse:
        """The folder URL with its slash, so that the report's relative links resolve inside it."""
        from airflow_resnet_prep.plugins.links import report_url

        return RedirectResponse(report_url(dag_id, run_id), status_code=307)

    @app.get("/dags/{dag_id}/runs/{run_id}/report/", dependencies=[READ_RUN], response_class=HTMLResponse)
    def report_index(dag_id: str, run_id: str, session: SessionDep) -> Response:
        """The run's ``report/index.html``, or a page saying why the run has none."""
        located = locate_report(session, dag_id, run_id)
        if not located.found:
            return _page(located.title, _reason_html(located.reason), located.status_code)
        return _serve(located, INDEX)

    @app.get("/dags/{dag_id}/runs/{run_id}/report/{path:path}", dependencies=[READ_RUN])
    def report_file(dag_id: str, run_id: str, path: str, session: SessionDep) -> Response:
        """A file of the run's report folder; nothing outside it."""
        located = locate_report(session, dag_id, run_id)
        if not located.found:
            return _page(located.title, _reason_html(located.reason), located.status_code)
        return _serve(located, path)

    return app


def _default_mimetypes() -> None:
    for suffix, media_type in (
        (".svg", "image/svg+xml"),
        (".webp", "image/webp"),
        (".json", "application/json"),
    ):
        mimetypes.add_type(media_type, suffix)


_default_mimetypes()
