"""URLs as the HTTP client reads them, and as they may be written down.

Low in the stack (it imports nothing of the package) so that every layer that writes a URL (downloads,
the catalog, the manifest, the report, lineage, the policy) masks it with the same function:

- :func:`parse` is ``urllib3.util.parse_url``, the parser ``requests`` connects with. Deciding where a
  request goes with another parser (``urllib.parse.urlsplit`` reads ``http://a:1\\@b:2/`` as host ``b``,
  urllib3 as host ``a``) would let credentials meant for one host reach another. :func:`origin_of` and
  every check of a redirect hop use it.
- :func:`hop_problem` refuses what no honest download URL needs: ``user:password@``, backslashes,
  whitespace and control characters.
- :func:`mask_url` / :func:`mask_text`: userinfo dropped, fragment dropped, every query value masked
  (``***``) except those of :data:`SAFE_QUERY_KEYS`.
- :func:`forbidden_address`: link-local, unspecified and known metadata-service addresses, which no
  source may reach whatever the deployment allows.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import unquote

from urllib3.exceptions import LocationParseError
from urllib3.util import Url, parse_url

DEFAULT_PORTS = {"http": 80, "https": 443}

#: Query keys whose values say which file or which version, never who asks: shown as they are. Every
#: other value (signatures, tokens, ``X-Amz-Credential``, SAS ``sig``, anything unknown) is ``***``.
SAFE_QUERY_KEYS = frozenset(
    {"alt", "dl", "download", "format", "generation", "raw", "ref", "revision", "version", "versionid"}
)
MASK = "***"

# What a URL in free text looks like: a scheme, then anything up to a space or a quote (a closing
# bracket or a full stop right after it is the sentence's).
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]*[^\s\"'<>).,;\]]")
# A query string inside free text without its URL (urllib3 logs "GET /x.tar?sig=... HTTP/1.1", its errors
# say "with url: /x.tar?sig=..."): from a '?' after a path character to the next space or quote.
_QUERY_IN_TEXT = re.compile(r"(?<=[^\s?\"'])\?([^\s\"'<>]*[^\s\"'<>).,;\]])")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")

# Cloud metadata services that are neither link-local nor unspecified (AWS's IPv6 endpoint, Alibaba's).
_METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}
)


def parse(url: str) -> Url:
    """``url`` as the HTTP client reads it; raises ``ValueError`` when it cannot."""
    try:
        return parse_url(url)
    except LocationParseError as exc:
        raise ValueError(str(exc)) from None


def origin_of(url: str) -> str | None:
    """``scheme://host:port`` of an http(s) URL as the HTTP client reads it (port spelled out, host
    lower-case); None for anything else or anything it cannot read."""
    try:
        parts = parse(url.strip())
    except ValueError:
        return None
    scheme = (parts.scheme or "").lower()
    host = (parts.host or "").lower()
    if scheme not in DEFAULT_PORTS or not host:
        return None
    port = parts.port or DEFAULT_PORTS[scheme]
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


def path_segments(url: str) -> tuple[str, ...] | None:
    """The path of an http(s) URL as whole segments (the client's reading, dot segments resolved); None
    when a segment would mean something else once a server decodes it (``%2e%2e``, ``%2f``)."""
    path = parse(url.strip()).path or "/"
    segments = tuple(s for s in path.split("/") if s)
    for segment in segments:
        decoded = unquote(segment)
        if decoded in (".", "..") or "/" in decoded or "\\" in decoded:
            return None
    return segments


def hop_problem(url: str) -> str | None:
    """Why ``url`` may not be requested (a source or a redirect target), or None. Checked on the raw text,
    before any parser smooths it over."""
    if "\\" in url:
        return "it holds a backslash"
    if _CONTROL_OR_SPACE.search(url):
        return "it holds whitespace or a control character"
    try:
        parts = parse(url)
    except ValueError:
        return "it cannot be read as a URL"
    if (parts.scheme or "").lower() not in DEFAULT_PORTS or not parts.host:
        return "it is not an http(s) URL with a host"
    if parts.auth is not None or "@" in (url.split("://", 1)[-1].split("/", 1)[0]):
        return "it holds user:password@ (credentials go in an Airflow connection)"
    if path_segments(url) is None:
        return "its path has an encoded '.', '..', '/' or '\\' segment"
    return None


def _mask_query(query: str) -> str:
    pairs = []
    for pair in re.split(r"[&;]", query):
        if not pair:
            continue
        key, eq, _ = pair.partition("=")
        if eq and unquote(key).strip().lower() in SAFE_QUERY_KEYS:
            pairs.append(pair)
        elif eq:
            pairs.append(f"{key}={MASK}")
        else:
            pairs.append(MASK)  # a bare token (``?abc123``) may be the secret itself
    return "&".join(pairs)


def mask_url(url: str) -> str:
    """``url`` as it may be written down: without ``user:password@`` and fragment, query values masked
    but for :data:`SAFE_QUERY_KEYS`. Object URIs and paths come back as they are (an object URI's
    ``conn_id@`` is an id, not a secret; :func:`~airflow_resnet_prep.storage.display_uri` drops it)."""
    text = str(url)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme not in DEFAULT_PORTS:
        return text
    try:
        parts = parse(text.strip())
    except ValueError:
        return "<unreadable URL>"
    query = _mask_query(parts.query) if parts.query else None
    return Url(scheme=parts.scheme, host=parts.host, port=parts.port, path=parts.path, query=query).url


def mask_text(text: str) -> str:
    """``text`` (an error, a log line) with every URL in it masked by :func:`mask_url`, and any other
    query string (a request line, a path with ``?``) masked the same way."""
    text = _URL_IN_TEXT.sub(lambda m: mask_url(m[0]), str(text))
    return _QUERY_IN_TEXT.sub(lambda m: "?" + _mask_query(m[1].split("#", 1)[0]), text)


def forbidden_address(address: str) -> bool:
    """Whether an IP address is one no source may reach: link-local (169.254/16, fe80::/10: cloud
    metadata services live there), unspecified (0.0.0.0, ::, which reach this machine), or a known
    metadata service elsewhere; IPv4 written inside IPv6 (``::ffff:169.254.169.254``) counts as itself."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0].strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is not None and forbidden_address(str(inner)):
            return True
    return ip.is_link_local or ip.is_unspecified or ip in _METADATA_ADDRESSES


def literal_address(host: str) -> str | None:
    """The IP address ``host`` spells (``[::1]`` too), or None for a name."""
    try:
        return str(ipaddress.ip_address(host.strip("[]").split("%", 1)[0]))
    except ValueError:
        return None
