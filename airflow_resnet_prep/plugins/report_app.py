"""FastAPI app of the plugin: serves one DAG run's ``data_dir/report/`` behind Airflow's access checks.

Routes (mounted at :data:`~airflow_resnet_prep.plugins.links.URL_PREFIX`, e.g. ``/resnet-prep``):

- ``GET /dags/{dag_id}/runs/{run_id}/report/``: the run's ``report/index.html``, or, when the run has
  no report (still running, failed, or it reused an output that has none), a plain page saying so and why;
- ``GET /dags/{dag_id}/runs/{run_id}/report/{path}``: another file of that folder;
- ``GET /dags/{dag_id}/runs/{run_id}/report``: redirects to the folder URL, so relative links resolve.

Airflow mounts plugin apps without authentication: every route depends on ``requires_access_dag``
(read access to the DAG's runs), which refuses a request without a valid token or session cookie
(401/403).

Where the report is comes from the run's XComs (``report``, else ``manifest``; pushed by a
:class:`~airflow_resnet_prep.operators.publish.PublishOperator`, whatever its task id). Whoever may edit
XComs through Airflow's API could repoint those, so they are only a hint, checked before anything is
served:

- the place must lie under ``[resnet_prep] allowed_data_roots`` (when set), and a bucket is read only
  with a connection listed in ``[resnet_prep] allowed_conn_ids`` (or the API server's default
  credentials when the run used none);
- a bucket read without a connection (the API server's own identity) must lie under
  ``[resnet_prep] allowed_data_roots``, as for the tasks;
- ``report/run.json``, which the run's own publish task wrote beside the report, must name this DAG
  and this run: another DAG's report, another run's, or a folder that merely looks like a report is
  not served; and only the files that record lists (``files``; a record without the list: ``index.html``)
  are served, whatever else lies in the folder.

A requested path is refused (404) when it has an empty, ``.`` or ``..`` segment, a backslash or a NUL,
or (locally) when its real path (symlinks resolved) is not a regular file inside the real report folder.
Files are streamed in bounded chunks. A failed read says so without the error's text (which is logged),
so no page can show what a storage client put into its message. Every answer, redirects and errors
included, carries the security headers below and must not be stored by a cache.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import mimetypes
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import select

if TYPE_CHECKING:
    from airflow_resnet_prep.layout import DataDir

log = logging.getLogger(__name__)

PUBLISH_OPERATOR = "PublishOperator"
REPORT_DIR_NAME = "report"
INDEX = "index.html"
REPORT_SUFFIX = f"/{REPORT_DIR_NAME}/{INDEX}"
#: The publish XComs the view reads (any task id: the operator may be used in any DAG).
PUBLISHED_KEYS = ("report", "manifest", "cached", "storage_conn_id")
#: Bucket files are streamed in pieces of this size: the API server holds one at a time per request.
STREAM_CHUNK = 4 * 1024 * 1024

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
    "X-Frame-Options": "SAMEORIGIN",
    "Referrer-Policy": "no-referrer",
    # A report can hold what only some users may see: no shared or private cache keeps it.
    "Cache-Control": "no-store, private",
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
    #: The files of ``report/`` its run's publish listed in ``report/run.json``: the only ones served.
    files: frozenset[str] = frozenset({INDEX})

    @property
    def found(self) -> bool:
        return self.report_dir is not None or self.bucket is not None


def _decoded(row: Any) -> Any:
    from airflow.models.xcom import XComModel

    try:
        value = XComModel.deserialize_value(row)
    except Exception:
        value = row.value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # a JSON-encoded string, as some backends store it
            decoded = json.loads(value)
            value = decoded if isinstance(decoded, str) else value
    return value


def _xcom_values(session: Any, dag_id: str, run_id: str) -> dict[str, Any]:
    """The publish XComs of this run (map index -1), deserialized: those of the task that pushed a
    ``manifest`` (the newest, should the DAG have several)."""
    from airflow.models.xcom import XComModel

    rows = session.scalars(
        XComModel.get_many(run_id=run_id, dag_ids=dag_id, key=None, map_indexes=-1).where(
            XComModel.key.in_(PUBLISHED_KEYS)
        )
    ).all()
    by_task: dict[str, dict[str, Any]] = {}
    newest: dict[str, Any] = {}
    for row in rows:
        by_task.setdefault(row.task_id, {})[row.key] = _decoded(row)
        if row.key == "manifest" and (row.task_id not in newest or row.timestamp > newest[row.task_id]):
            newest[row.task_id] = row.timestamp
    if not newest:
        return {}
    return by_task[max(newest, key=lambda task_id: newest[task_id])]


def _state(value: Any) -> str:
    return str(value.value if hasattr(value, "value") else value)


def _why_no_publish(session: Any, dag_run: Any) -> Located:
    """The reason a run has no publish XCom, from the run's and its tasks' states."""
    from airflow.models.taskinstance import TaskInstance

    state = _state(dag_run.state)
    tis = session.scalars(
        select(TaskInstance).where(
            TaskInstance.dag_id == dag_run.dag_id, TaskInstance.run_id == dag_run.run_id
        )
    ).all()
    ti_states = {ti.task_id: _state(ti.state) for ti in tis}
    publishers = sorted(ti.task_id for ti in tis if getattr(ti, "operator", None) == PUBLISH_OPERATOR)
    failed = sorted({ti.task_id for ti in tis if ti_states[ti.task_id] == "failed"})
    if ti_states and not publishers:
        # external_views put the tab on every DAG's runs: say plainly that this DAG has no report.
        return Located(
            None,
            "No dataset report for this DAG",
            "This tab comes with the airflow-resnet-prep provider: it shows the report that a "
            f"{PUBLISH_OPERATOR} task writes. DAG {dag_run.dag_id} has no such task. (The tab can be "
            "turned off with `[resnet_prep] report_view = false`.)",
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
    publish_state = ti_states.get(publishers[0]) if publishers else None
    return Located(
        None,
        "This run has no report",
        f"The run ended {state} but {publishers[0] if publishers else 'publish'} "
        + ("did not run" if publish_state in (None, "None") else f"ended {publish_state}")
        + " and pushed no manifest, so there is no report to show.",
    )


def locate_report(session: Any, dag_id: str, run_id: str) -> Located:
    """Find the report folder of one run from its publish XComs, check it is this run's, or say why
    there is none."""
    from airflow.models.dagrun import DagRun

    from airflow_resnet_prep.layout import MANIFEST, DataDir

    dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if dag_run is None:
        return Located(None, "No such run", f"DAG {dag_id} has no run {run_id}.")
    published = _xcom_values(session, dag_id, run_id)
    report, manifest = published.get("report"), published.get("manifest")
    if isinstance(report, str) and report:
        if not report.endswith(REPORT_SUFFIX):
            return Located(None, "No report here", "The run's report XCom does not name a report/index.html.")
        data_dir = report[: -len(REPORT_SUFFIX)]
    elif isinstance(manifest, str) and manifest:
        if not manifest.endswith("/" + MANIFEST):
            return Located(None, "No report here", "The run's manifest XCom does not name a manifest.json.")
        data_dir = manifest[: -len(MANIFEST) - 1]
    else:
        return _why_no_publish(session, dag_run)
    conn_id = published.get("storage_conn_id")
    conn_id = conn_id.strip() if isinstance(conn_id, str) and conn_id.strip() else None
    refused = _refused(data_dir, conn_id)
    if refused is not None:
        return refused
    try:
        layout = DataDir.of(data_dir, conn_id)
    except Exception as exc:
        _log_failure(data_dir, exc)
        return Located(None, "No report here", "The run's XComs do not name a usable data_dir.")
    if layout.disk is not None:
        return _locate_on_disk(published, layout, dag_id, run_id)
    return _locate_in_bucket(published, layout, dag_id, run_id)


def _refused(data_dir: str, conn_id: str | None) -> Located | None:
    """Why the API server will not read ``data_dir`` with ``conn_id``: a place outside the allowed
    roots, or a connection the deployment did not list; None when it may."""
    from airflow_resnet_prep.policy import NotAllowedError, Policy

    try:
        policy = Policy.load()
        policy.check_conn(conn_id, "the run's storage connection")
        policy.check_location(data_dir, "the run's data_dir")
        allowed = policy.place_allowed(data_dir)
    except NotAllowedError as exc:
        log.warning("dataset report of %s refused: %s", data_dir, exc)
        return Located(
            None,
            "This report cannot be shown here",
            "The run names a connection that this Airflow does not allow the report view to use "
            "(`[resnet_prep] allowed_conn_ids`).",
            status_code=403,
        )
    try:
        policy.check_ambient(data_dir, "the run's data_dir", conn_id)
    except NotAllowedError as exc:
        log.warning("dataset report of %s refused: %s", data_dir, exc)
        return Located(
            None,
            "This report cannot be shown here",
            "The run's data_dir is a bucket named without a connection, which the API server would read "
            "with its own cloud identity; that is allowed only under `[resnet_prep] allowed_data_roots`.",
            status_code=403,
        )
    if not allowed:
        return Located(
            None,
            "This report cannot be shown here",
            "The run's data_dir is outside the places this Airflow allows (`[resnet_prep] allowed_data_roots`).",
            status_code=403,
        )
    return None


def _listed_files(record: dict[str, Any]) -> frozenset[str]:
    """The files of ``report/`` the run record lists (see :data:`Located.files`); well-formed ones only."""
    files = record.get("files")
    if not isinstance(files, list):
        return frozenset({INDEX})  # a record from before the list: its report was index.html alone
    return frozenset(f for f in files if isinstance(f, str) and safe_parts(f) == f.split("/"))


def _owner_mismatch(layout: DataDir, dag_id: str, run_id: str) -> Located | frozenset[str]:
    """The files ``report/run.json`` lists when it names this run; else why the report is not served."""
    from airflow_resnet_prep.report.build import RUN_RECORD_KEY

    record = layout.read_json(RUN_RECORD_KEY)
    if isinstance(record, dict) and record.get("dag_id") == dag_id and record.get("run_id") == run_id:
        return _listed_files(record)
    if isinstance(record, dict) and record.get("dag_id") == dag_id:
        return Located(
            None,
            "A later run published this report",
            f"The output in {layout.url} was published again by a later run of {dag_id}; its report is "
            "shown on that run's tab.",
        )
    return Located(
        None,
        "This run's report is not there",
        "The place this run's XComs name holds no report published by this run (its report/run.json "
        f"names another run, or none). Trigger a new run of {dag_id}: an unchanged output is reused and "
        "its report published for that run.",
    )


def _locate_on_disk(published: dict[str, Any], layout: DataDir, dag_id: str, run_id: str) -> Located:
    report_dir = layout.path(REPORT_DIR_NAME)
    if report_dir.is_dir() and not report_dir.is_symlink():
        owned = _owner_mismatch(layout, dag_id, run_id)
        if isinstance(owned, Located):
            return owned
        if (report_dir / INDEX).is_file():
            return Located(report_dir, status_code=200, files=owned)
    return _missing(
        published,
        layout.url,
        None,
        f"{report_dir / INDEX} is not there: it was moved or deleted since the run, or this API server "
        "does not see data_dir (it must be mounted at the same path as on the workers)",
    )


def _locate_in_bucket(published: dict[str, Any], layout: DataDir, dag_id: str, run_id: str) -> Located:
    """The report of a run whose data_dir is in a bucket, read through its store."""
    from airflow_resnet_prep.report.build import REPORT_KEY

    try:
        owned = _owner_mismatch(layout, dag_id, run_id)
        exists = not isinstance(owned, Located) and layout.exists(REPORT_KEY)
    except Exception as exc:
        _log_failure(layout.url, exc)
        return _unreadable(layout.url, layout.store.conn_id)
    if isinstance(owned, Located):
        return owned
    if exists:
        return Located(None, status_code=200, bucket=layout, files=owned)
    return _missing(
        published,
        layout.url,
        layout.store.conn_id,
        f"{layout.uri(REPORT_KEY)} is not there: it was deleted since the run",
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
    return HTMLResponse(text, status_code=status_code)


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
    parts = safe_parts(relative)
    if parts is None or "/".join(parts) not in located.files:
        # Not what this run's publish wrote: anything else in the folder may be another run's planting.
        return _page("Not found", "This report has no such file.", 404)
    if located.bucket is not None:
        return _serve_object(located.bucket, relative)
    assert located.report_dir is not None
    target = safe_file(located.report_dir, relative)
    if target is None:
        return _page("Not found", "This report has no such file.", 404)
    return FileResponse(target, media_type=_media_type(target.name))


def _serve_object(layout: DataDir, relative: str) -> Response:
    """A file of ``report/`` of a data_dir in a bucket, streamed through its store in
    :data:`STREAM_CHUNK` pieces (memory stays bounded whatever the file's size)."""
    parts = safe_parts(relative)
    if parts is None:
        return _page("Not found", "This report has no such file.", 404)
    key = "/".join([REPORT_DIR_NAME, *parts])
    try:
        size = layout.store.size(key)
    except FileNotFoundError:
        return _page("Not found", "This report has no such file.", 404)
    except Exception as exc:
        _log_failure(layout.uri(key), exc)
        located = _unreadable(layout.url, layout.store.conn_id)
        return _page(located.title, _reason_html(located.reason), located.status_code)
    return StreamingResponse(
        _chunks(layout, key, size),
        media_type=_media_type(parts[-1]),
        headers={"Content-Length": str(size)},
    )


def _chunks(layout: DataDir, key: str, size: int) -> Iterator[bytes]:
    offset = 0
    while offset < size:
        piece = layout.store.read_range(key, offset, min(STREAM_CHUNK, size - offset))
        offset += len(piece)
        yield piece


def create_app() -> FastAPI:
    """The plugin's FastAPI app (no OpenAPI docs: plugin apps are mounted without authentication)."""
    app = FastAPI(
        title="MLPerf ResNet prep: dataset reports",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        """Every answer (pages, files, the redirect, 401/403/404 and errors) gets the same headers."""
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

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
