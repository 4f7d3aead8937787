"""http_auth_from_connection: Airflow connections read through the Task SDK from AIRFLOW_CONN_* variables."""

from __future__ import annotations

import json

import pytest

from airflow_resnet_prep.errors import SourceError
from airflow_resnet_prep.operators.connections import http_auth_from_connection


def _define(monkeypatch: pytest.MonkeyPatch, conn_id: str, value: dict | str) -> None:
    text = value if isinstance(value, str) else json.dumps(value)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", text)


def test_no_connection_means_no_auth() -> None:
    assert http_auth_from_connection(None) == (None, {})
    assert http_auth_from_connection("") == (None, {})


def test_json_connection_with_headers_key(monkeypatch: pytest.MonkeyPatch) -> None:
    _define(
        monkeypatch,
        "mirror_a",
        {
            "conn_type": "http",
            "host": "mirror.example",
            "login": "alice",
            "password": "p@ss:w/rd!",
            "extra": {"headers": {"X-Token": "tok-123", "X-Retries": 3}, "timeout": 30},
        },
    )
    auth, headers = http_auth_from_connection("mirror_a")
    assert auth == ("alice", "p@ss:w/rd!")
    assert headers == {"X-Token": "tok-123", "X-Retries": "3"}  # only the headers key, values as text


def test_json_connection_with_top_level_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    _define(
        monkeypatch,
        "mirror_b",
        {"conn_type": "http", "extra": {"Authorization": "Bearer abcdef123", "timeout": 30, "verify": False}},
    )
    auth, headers = http_auth_from_connection("mirror_b")
    assert auth is None  # no login: no basic auth
    assert headers == {"Authorization": "Bearer abcdef123"}  # numbers and booleans are not headers


def test_uri_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    _define(monkeypatch, "mirror_c", "http://bob:s%40cret99@mirror.example/?X-Api-Key=k123")
    auth, headers = http_auth_from_connection("mirror_c")
    assert auth == ("bob", "s@cret99")
    assert headers == {"X-Api-Key": "k123"}


def test_login_without_password(monkeypatch: pytest.MonkeyPatch) -> None:
    _define(monkeypatch, "mirror_d", {"conn_type": "http", "login": "carol"})
    assert http_auth_from_connection("mirror_d") == (("carol", ""), {})


def test_missing_connection_names_the_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_MIRROR", raising=False)
    with pytest.raises(SourceError) as err:
        http_auth_from_connection("no_such_mirror")
    msg = str(err.value)
    assert "'no_such_mirror'" in msg and "AIRFLOW_CONN_NO_SUCH_MIRROR" in msg
    assert err.value.__cause__ is None
