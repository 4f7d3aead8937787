"""Download credentials bound to the one origin they belong to.

A login, a password or an API-key header is sent only to the scheme, host and port it was given for:
an Airflow connection's own host, or the URL that carried ``user:password@``. A download from another
origin with those credentials is refused before any request; a redirect to another origin is followed
without them (``requests`` would drop ``Authorization`` on a cross-host redirect but keep every other
header set on the session, so redirects are followed here, one hop at a time). The origin of a URL is
read by :func:`airflow_resnet_prep.urls.origin_of`, with the parser the HTTP client connects with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# One parser for "where may credentials go" and "where does the request go": the HTTP client's own.
from airflow_resnet_prep.urls import DEFAULT_PORTS, origin_of

__all__ = ["DEFAULT_PORTS", "HttpCredentials", "origin_of"]


@dataclass(frozen=True)
class HttpCredentials:
    """Basic auth and headers for downloads from ``origin`` (see :func:`origin_of`) and nowhere else.

    ``owner`` says where they came from, for messages (``"the connection 'mirror'"``); it holds no secret.
    """

    origin: str
    auth: tuple[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    owner: str = "the credentials"

    def __repr__(self) -> str:  # never show the secrets
        return f"HttpCredentials(origin={self.origin!r}, owner={self.owner!r})"

    def for_url(self, url: str) -> tuple[tuple[str, str] | None, dict[str, str]]:
        """``(auth, headers)`` to send to ``url``: these credentials on their origin, nothing elsewhere."""
        if origin_of(url) == self.origin:
            return self.auth, dict(self.headers)
        return None, {}
