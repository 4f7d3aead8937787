"""HTTP sessions that never connect to a link-local, unspecified or metadata-service address.

The check sits where the socket is made (urllib3's ``HTTPConnection._new_conn``): the host is resolved
once, every address it resolves to is checked, and the socket connects to one of exactly those
addresses. A name that answers a harmless address to a first lookup and ``169.254.169.254`` to the
next (DNS rebinding) gains nothing: there is no second lookup. A host that resolves to any forbidden
address is refused whole, before any connection attempt. Through an HTTP proxy (``HTTP(S)_PROXY``) the
socket goes to the proxy, which the deployment chose; the policy's checks of each URL still apply.
"""

from __future__ import annotations

import socket
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util import connection

from airflow_resnet_prep.errors import SourceError
from airflow_resnet_prep.urls import forbidden_address


class AddressRefusedError(SourceError):
    """A download would connect to an address no source may reach."""


def checked_addresses(host: str, port: int) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` of ``host``, refused whole when any address is forbidden
    (:func:`airflow_resnet_prep.urls.forbidden_address`)."""
    infos = socket.getaddrinfo(host.strip("[]"), port, 0, socket.SOCK_STREAM)
    if any(forbidden_address(str(info[4][0])) for info in infos):
        raise AddressRefusedError(
            f"{host}: resolves to a link-local, unspecified or cloud-metadata address; no source may be "
            "read from there, whatever the deployment allows"
        )
    return infos


def _guarded_new_conn(conn: HTTPConnection) -> socket.socket:
    """urllib3's ``_new_conn``, connecting only to addresses :func:`checked_addresses` let through."""
    try:
        infos = checked_addresses(conn._dns_host, conn.port)
    except socket.gaierror as exc:
        raise NameResolutionError(conn.host, conn, exc) from exc
    last: OSError | None = None
    for info in infos:
        try:
            return connection.create_connection(
                (str(info[4][0]), conn.port),
                conn.timeout,
                source_address=conn.source_address,
                socket_options=conn.socket_options,
            )
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
            ) from exc
        except OSError as exc:
            last = exc
    raise NewConnectionError(conn, f"Failed to establish a new connection: {last}")


class _GuardedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _guarded_new_conn(self)


class _GuardedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _guarded_new_conn(self)


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


def guarded_session() -> requests.Session:
    """A ``requests.Session`` whose connections refuse forbidden addresses (see the module doc)."""
    session = requests.Session()
    adapter = _GuardedAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
