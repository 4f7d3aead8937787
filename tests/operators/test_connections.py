"""http_credentials_from_connection: Airflow connections read through the Task SDK from AIRFLOW_CONN_*
variables, bound to the origin the connection names."""

from __future__ import annotations

import json

import pytest

from airflow_resnet_prep.errors import SourceError
from airflow_resnet_prep.operators.connections import http_credentials_from_connection


def _define(monkeypatch: pytest.MonkeyPatch, conn_id: str, value: dict | str) -> None:
    text = value if isinstance(value, str) else json.dumps(value)
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", text)


def test_no_connection_means_no_credentials() -> None:
    assert http_credentials_from_connection(None) is None
    assert http_credentials_from_connection("") is None


def test_json_connection_with_headers_key(monkeypatch: pytest.MonkeyPatch) -> None:
    _define(
        monkeypatch,
        "mirror_a",
        {
            "conn_type": "http",
            "host": "mirror.example",
            "schema": "https",
            "login": "alice",
            "password": "p@ss:w/rd!",
            "extra": {"headers": {"X-Token": "tok-123", "X-Retries": 3}, "timeout": 30},
        },
    )
    creds = http_credentials_from_connection("mirror_a")
    assert creds is not None and creds.origin == "https://mirror.example:443"
    assert creds.auth == ("alice", "p@ss:w/rd!")
    assert dict(creds.headers) == {"X-Token": "tok-123", "X-Retries": "3"}  # the headers key, values as text
    assert "p@ss" not in repr(creds) and "tok-123" not in repr(creds)


def test_json_connection_with_top_level_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    _define(
        monkeypatch,
        "mirror_b",
        {
            "conn_type": "http",
            "host": "https://Mirror.Example:8443/base",
            "extra": {"Authorization": "Bearer abcdef123", "timeout": 30, "verify": False},
        },
    )
    creds = http_credentials_from_connection("mirror_b")
    assert creds is not None and creds.origin == "https://mirror.example:8443"
    assert creds.auth is None  # no login: no basic auth
    assert dict(creds.headers) == {
        "Authorization": "Bearer abcdef123"
    }  # numbers and booleans are not headers


def test_uri_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    _define(monkeypatch, "mirror_c", "http://bob:s%40cret99@mirror.example/?X-Api-Key=k123")
    creds = http_credentials_from_connection("mirror_c")
    assert creds is not None and creds.origin == "http://mirror.example:80"  # the HTTP provider's default
    assert creds.auth == ("bob", "s@cret99")
    assert dict(creds.headers) == {"X-Api-Key": "k123"}


def test_credentials_go_only_to_their_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    _define(
        monkeypatch, "mirror_d", {"conn_type": "http", "host": "127.0.0.1", "port": 8123, "login": "carol"}
    )
    creds = http_credentials_from_connection("mirror_d")
    assert creds is not None
    assert creds.for_url("http://127.0.0.1:8123/train.tar") == (("carol", ""), {})
    for elsewhere in (
        "http://127.0.0.1:8124/train.tar",  # another port
        "https://127.0.0.1:8123/train.tar",  # another scheme
        "http://localhost:8123/train.tar",  # another host name
        "http://127.0.0.1.evil.example:8123/train.tar",
        "ftp://127.0.0.1:8123/train.tar",
    ):
        assert creds.for_url(elsewhere) == (None, {}), elsewhere


@pytest.mark.parametrize(
    ("definition", "words"),
    [
        ({"conn_type": "postgres", "host": "db", "login": "u", "password": "dbsecret"}, ["postgres", "http"]),
        ({"conn_type": "http", "login": "u", "password": "dbsecret"}, ["names no host"]),
    ],
)
def test_only_http_connections_with_a_host(monkeypatch: pytest.MonkeyPatch, definition: dict, words) -> None:
    _define(monkeypatch, "not_for_downloads", definition)
    with pytest.raises(SourceError) as err:
        http_credentials_from_connection("not_for_downloads")
    for word in words:
        assert word in str(err.value)
    assert "dbsecret" not in str(err.value)


def test_missing_connection_names_the_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_MIRROR", raising=False)
    with pytest.raises(SourceError) as err:
        http_credentials_from_connection("no_such_mirror")
    msg = str(err.value)
    assert "'no_such_mirror'" in msg and "AIRFLOW_CONN_NO_SUCH_MIRROR" in msg
    assert err.value.__cause__ is None
