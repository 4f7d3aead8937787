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

from airflow_resnet_prep.errors import SourceError


def http_auth_from_connection(conn_id: str | None) -> tuple[tuple[str, str] | None, dict[str, str]]:
    """``(basic auth, headers)`` for downloads from the connection ``conn_id``; ``(None, {})`` without one.

    Basic auth comes from the login and password (``None`` when there is no login). Headers come from the
    extra: ``{"headers": {...}}`` when it has that key, else the extra's top-level string values (the
    form the HTTP provider's connections use). Raises :class:`SourceError` naming ``conn_id`` (and no
    secret) when the connection is not defined.
    """
    if not conn_id or not conn_id.strip():
        return None, {}
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
    auth = (conn.login, conn.password or "") if conn.login else None
    extra = conn.extra_dejson
    if isinstance(extra.get("headers"), dict):
        headers = {str(k): str(v) for k, v in extra["headers"].items() if v is not None}
    else:
        # Top-level form: only string values are headers (numbers/booleans are other settings).
        headers = {str(k): v for k, v in extra.items() if isinstance(v, str)}
    return auth, headers
