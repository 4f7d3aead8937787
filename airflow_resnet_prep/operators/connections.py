"""Download credentials from an Airflow connection (``http_conn_id``).

Read through the Task SDK's ``BaseHook.get_connection`` (``airflow.sdk``), which works in both places
we need it:

* inside a running task it asks the supervisor, which reads the metadata DB or the secrets backend;
* in a plain process (tests, a script, ``dag.test()``) it falls back to the configured secrets backends,
  including ``AIRFLOW_CONN_<CONN_ID>`` environment variables in URI or JSON form.

It also registers the password (and secret-looking extra values) with Airflow's log masker, so they are
shown as ``***`` should anything print them. Airflow is imported lazily so ``sources/`` and the tests that
do not need a connection never pay for the import.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from airflow_resnet_prep.errors import SourceError
from airflow_resnet_prep.sources.credentials import HttpCredentials, origin_of

#: Connection types whose login, password and headers are meant for an HTTP server.
HTTP_CONN_TYPES = ("http", "https")


def http_credentials_from_connection(conn_id: str | None) -> HttpCredentials | None:
    """The download credentials of the connection ``conn_id``, bound to its origin; None without one.

    The connection must be of type ``http`` (or ``https``) and name its server: ``host`` as
    ``mirror.example`` or ``https://mirror.example``, with ``schema`` (``http``/``https``, as the HTTP
    provider reads it; default ``http``) and ``port``. Basic auth comes from the login and password
    (none without a login). Headers come from the extra: ``{"headers": {...}}`` when it has that key,
    else the extra's top-level string values (the form the HTTP provider's connections use). Raises
    :class:`SourceError` naming ``conn_id`` (and no secret) when it is not defined, not an http
    connection or names no host.
    """
    if not conn_id or not conn_id.strip():
        return None
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    conn_id = conn_id.strip()
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise SourceError(
            f"http_conn_id {conn_id!r}: no such Airflow connection; create it in the UI, with "
            f"`airflow connections add {conn_id} ...`, or as the environment variable "
            f"AIRFLOW_CONN_{conn_id.upper()}"
        ) from None
    if (conn.conn_type or "").lower() not in HTTP_CONN_TYPES:
        raise SourceError(
            f"http_conn_id {conn_id!r} is a {conn.conn_type or 'typeless'} connection; downloads take an "
            "http connection whose host is the download server"
        )
    origin = _connection_origin(conn)
    if origin is None:
        raise SourceError(
            f"http_conn_id {conn_id!r} names no host: set its host (and schema, port) to the download "
            "server; its credentials are sent there and nowhere else"
        )
    auth = (conn.login, conn.password or "") if conn.login else None
    extra = conn.extra_dejson
    if isinstance(extra.get("headers"), dict):
        headers = {str(k): str(v) for k, v in extra["headers"].items() if v is not None}
    else:
        # Top-level form: only string values are headers (numbers/booleans are other settings).
        headers = {str(k): v for k, v in extra.items() if isinstance(v, str)}
    return HttpCredentials(origin, auth, headers, owner=f"the connection {conn_id!r}")


def _connection_origin(conn) -> str | None:
    """The origin an http connection names, read as the HTTP provider's hook builds its base URL."""
    host = (conn.host or "").strip()
    if not host:
        return None
    if "://" not in host:
        schema = (conn.schema or "").strip().lower()
        scheme = schema if schema in HTTP_CONN_TYPES else ("https" if conn.conn_type == "https" else "http")
        host = f"{scheme}://{host}"
    try:
        parts = urlsplit(host)
        port = conn.port or parts.port
    except ValueError:
        return None
    hostname = parts.hostname or ""
    if ":" in hostname:
        hostname = f"[{hostname}]"
    return origin_of(f"{parts.scheme}://{hostname}{f':{port}' if port else ''}/")
