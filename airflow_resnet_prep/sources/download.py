"""Turn a source parameter into a local file or folder: download ``http(s)://`` resumably, use paths in place.

Downloads (into ``downloads_dir``):

* ``<name>.part`` receives the bytes. ``<name>.part.json`` records the URL (without credentials) and the
  server's ETag / Last-Modified / size as soon as the first response arrives, so a later attempt, even in
  another process, can resume with ``Range`` + ``If-Range``. A ``.part`` without that record is discarded,
  never resumed blindly, and never taken for a finished file.
* Retries: connection errors, read timeouts (a stalled server), HTTP 5xx/408/429 and bodies shorter than
  Content-Length are retried with exponential backoff (``backoff_s``, doubling, capped at 60 s).
  ``retries`` bounds the *consecutive* attempts that bring no new bytes, so a long download over a
  flaky link that keeps making progress is not abandoned. Other 4xx fail at once.
* When complete: the checksum (if given) is checked on the ``.part`` (a mismatch deletes it), the file is
  synced and renamed to ``<name>``, and ``<name>.json`` (the fingerprint) is written. A rerun whose
  sidecar names the same URL and size reuses the file without touching the network; the checksum is
  then answered from the verify cache (``verified.json``), not by hashing again.

Local paths and ``file://`` URLs are used where they are, never copied or modified.

Credentials (``user:pass@`` in the URL, an ``http_conn_id``'s login, password and headers) go only to
their own origin, redirects included (:mod:`.credentials`), and never appear in logs, errors,
fingerprints or sidecars: URLs are shown through :func:`airflow_resnet_prep.urls.mask_url` (query values
masked but for a few harmless keys, no fragment, no userinfo).

Every URL requested, the source and each redirect hop, is first checked: no userinfo (in a hop),
backslash, whitespace or control character (:func:`airflow_resnet_prep.urls.hop_problem`), then the
caller's ``url_guard`` (the policy's ``[resnet_prep] allowed_sources``), and the connection itself never
reaches a link-local, unspecified or metadata-service address (:mod:`.netguard`).
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit
from urllib.request import url2pathname

import requests

from airflow_resnet_prep.errors import SourceError
from airflow_resnet_prep.failpoints import failpoint
from airflow_resnet_prep.fsutil import (
    atomic_write_json,
    disk_full_as_error,
    exclusive_lock,
    fsync_dir,
    read_json,
)
from airflow_resnet_prep.sources.bucket import resolve_object
from airflow_resnet_prep.sources.checksum import (
    ByteProgress,
    file_digest,
    parse_checksum,
    remember_digest,
    verify_file,
)
from airflow_resnet_prep.sources.credentials import HttpCredentials, origin_of
from airflow_resnet_prep.sources.fetched import Fetched
from airflow_resnet_prep.sources.netguard import guarded_session
from airflow_resnet_prep.storage import is_object_uri
from airflow_resnet_prep.urls import hop_problem, mask_text, mask_url, parse

#: Called with every URL before it is requested (the source, each redirect hop); raises to refuse it.
UrlGuard = Callable[[str], None]

log = logging.getLogger(__name__)

# A cut connection loses the chunk being read: 1 MiB keeps that small and writes stay efficient.
CHUNK_BYTES = 1024 * 1024
MAX_BACKOFF_S = 60.0
MAX_REDIRECTS = 10
PART_SUFFIX = ".part"
SIDECAR_SUFFIX = ".json"
_CONTENT_RANGE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")
# urllib3 logs each request line, query string included, at DEBUG ("GET /x.tar?token=... HTTP/1.1").
_URLLIB3_LOGGERS = ("urllib3.connectionpool", "urllib3.util.retry")


class _Retry(Exception):
    """A transient failure worth another attempt."""


class _RedactQueryFilter(logging.Filter):
    """Masks query values in the records of the HTTP library's loggers, whatever their level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = mask_text(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(mask_text(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: mask_text(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def _install_log_redaction() -> None:
    for name in _URLLIB3_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactQueryFilter) for f in logger.filters):
            logger.addFilter(_RedactQueryFilter())


_install_log_redaction()


def resolve_source(
    source: str,
    downloads_dir: Path,
    *,
    checksum: str | None = None,
    credentials: HttpCredentials | None = None,
    retries: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    storage_conn_id: str | None = None,
    download: bool = False,
    url_guard: UrlGuard | None = None,
) -> Fetched:
    """Make ``source`` (``http(s)://`` URL, ``file://`` URL or local path) available as a local path.

    A bucket URI (``s3://[conn_id@]bucket/key``, ``gs://...``) is read in place with the connection of
    the URI, else ``storage_conn_id``; with ``download`` it is copied to ``downloads_dir`` first
    (see :mod:`.bucket`).

    ``credentials`` (from ``http_conn_id``) are sent only to their own origin: an http(s) source on
    another origin is refused before any request. ``timeout_s`` bounds connecting and each wait for more
    bytes; ``retries`` and ``backoff_s`` are explained in the module docstring. ``url_guard`` is called
    with the URL of every request (the source and each redirect hop) before it is sent, and refuses by
    raising. Raises :class:`SourceError` naming the source and the problem.
    """
    source = (source or "").strip()
    if not source:
        raise SourceError("source is empty: give an http(s):// URL, a file:// URL or a local path")
    parse_checksum(checksum)  # a malformed checksum fails before any work
    downloads_dir = Path(downloads_dir)
    scheme = urlsplit(source).scheme.lower()
    if is_object_uri(source):
        return resolve_object(
            source, downloads_dir, checksum=checksum, conn_id=storage_conn_id or None, download=download
        )
    if scheme in ("http", "https"):
        if credentials is not None and origin_of(source) != credentials.origin:
            raise SourceError(
                f"{mask_url(source)}: {credentials.owner} is for {credentials.origin} only, and its "
                "credentials are never sent elsewhere; give a source on that server, a local path, or "
                "leave http_conn_id empty for a public download"
            )
        return _download(
            source, downloads_dir, checksum, credentials, retries, backoff_s, timeout_s, url_guard
        )
    if scheme == "file":
        parts = urlsplit(source)
        if parts.netloc not in ("", "localhost"):
            raise SourceError(f"{mask_url(source)}: a file:// URL must name a local file (no host)")
        return _local(Path(url2pathname(parts.path)), downloads_dir, checksum)
    if scheme and not os.path.exists(source):
        raise SourceError(
            f"{mask_url(source)}: unsupported URL scheme {scheme!r}; use http(s)://, file://, s3://, gs:// "
            "or a path"
        )
    return _local(Path(source), downloads_dir, checksum)


def discard_download(fetched: Fetched, downloads_dir: Path) -> bool:
    """Remove a download whose content was refused (a labels URL that answered with something else), and
    all it left in ``downloads_dir``: the file, its record, resume state and lock, so that nothing of the
    answer stays and the next run asks the server again. Only a copy this package made there is removed:
    a local source, or an object read in place from its bucket, is never touched. The caller holds the
    data_dir's lock, which every download into ``downloads_dir`` also runs under. Returns whether it was a
    download."""
    path = fetched.path  # an object read in place is its URI (a str), never a Path
    if fetched.fingerprint.get("kind") not in ("url", "object") or not isinstance(path, Path):
        return False
    if path.parent.resolve() != Path(downloads_dir).resolve():
        return False
    name = path.name
    for suffix in ("", SIDECAR_SUFFIX, PART_SUFFIX, PART_SUFFIX + SIDECAR_SUFFIX):
        (path.parent / f"{name}{suffix}").unlink(missing_ok=True)
    (path.parent / f".{name}.lock").unlink(missing_ok=True)
    log.info("%s: removed the refused download %s", fetched.fingerprint.get("source"), path)
    return True


# -- local paths ------------------------------------------------------------------------------------


def _local(path: Path, downloads_dir: Path, checksum: str | None) -> Fetched:
    path = Path(os.path.abspath(path.expanduser()))
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file or folder") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read it ({exc.strerror})") from None
    if path.is_dir():
        if parse_checksum(checksum):
            log.warning("%s: is a folder; the checksum %s applies to archives and is ignored", path, checksum)
        files, size, newest = _walk_folder(path)
        fp: dict[str, object] = {
            "kind": "dir",
            "source": str(path),
            "files": files,
            "size": size,
            "mtime_ns": newest,
        }
        return Fetched(path, fp)
    if not path.is_file():
        raise SourceError(f"{path}: neither a regular file nor a folder")
    verified = verify_file(path, checksum, cache_dir=downloads_dir)
    fp = {"kind": "file", "source": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if verified:
        fp["checksum"] = verified
    return Fetched(path, fp)


def _walk_folder(root: Path) -> tuple[int, int, int]:
    """(regular files, their total bytes, newest mtime_ns of files and folders) below ``root``.

    Symlinks to files and folders are followed (data sets are often assembled from links); a folder
    reached twice (a link loop) is walked once.
    """
    files = size = 0
    newest = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(root)]
    started = time.monotonic()
    next_log = started + 10.0
    while stack:
        folder = stack.pop()
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        newest = max(newest, st.st_mtime_ns)
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir():
                    stack.append(entry.path)
                elif entry.is_file():
                    est = entry.stat()
                    files += 1
                    size += est.st_size
                    newest = max(newest, est.st_mtime_ns)
        if time.monotonic() >= next_log:
            next_log = time.monotonic() + 10.0
            log.info("%s: fingerprinting, %d files (%.1f GB) so far", root, files, size / 1e9)
    log.info("%s: %d files, %.1f GB (walked in %.1fs)", root, files, size / 1e9, time.monotonic() - started)
    return files, size, newest


# -- downloads --------------------------------------------------------------------------------------


def _file_name(url_path: str, shown: str) -> str:
    name = posixpath.basename(unquote(url_path))
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise SourceError(f"{shown}: the URL path does not end in a file name to save the download under")
    if name.endswith(PART_SUFFIX):
        raise SourceError(f"{shown}: a file name ending in {PART_SUFFIX} is reserved for partial downloads")
    return name


def _download(
    url: str,
    downloads_dir: Path,
    checksum: str | None,
    credentials: HttpCredentials | None,
    retries: int,
    backoff_s: float,
    timeout_s: float,
    url_guard: UrlGuard | None = None,
) -> Fetched:
    shown = mask_url(url)
    try:
        parts = parse(url)
    except ValueError:
        raise SourceError(f"{shown}: cannot be read as a URL") from None
    if parts.auth is not None:
        # Credentials go in the Authorization header, never in the URL that requests logs and reports.
        url = parts._replace(auth=None, fragment=None).url
        if credentials is None or credentials.auth is None:
            user, _, password = parts.auth.partition(":")
            headers = credentials.headers if credentials else {}
            credentials = HttpCredentials(
                origin_of(url) or "",
                (unquote(user), unquote(password)),
                headers,
                owner="the URL's user:password",
            )
    _check_hop(url, shown, url_guard)
    name = _file_name(parts.path or "", shown)
    downloads_dir.mkdir(parents=True, exist_ok=True)
    final = downloads_dir / name
    sidecar = downloads_dir / f"{name}{SIDECAR_SUFFIX}"
    part = downloads_dir / f"{name}{PART_SUFFIX}"
    part_meta = downloads_dir / f"{name}{PART_SUFFIX}{SIDECAR_SUFFIX}"

    with exclusive_lock(downloads_dir / f".{name}.lock"):
        reused = _reuse(final, sidecar, part_meta, shown, checksum, downloads_dir)
        if reused is not None and (
            checksum or not _changed_on_server(url, shown, reused, credentials, timeout_s, url_guard)
        ):
            return reused
        with guarded_session() as session:
            fetch = _Fetcher(session, credentials, timeout_s, url_guard)
            meta = _transfer(fetch, url, shown, part, part_meta, retries, backoff_s)

        fingerprint: dict[str, object] = {
            "kind": "url",
            "source": shown,
            "size": part.stat().st_size,
            "etag": meta.get("etag"),
            "last_modified": meta.get("last_modified"),
        }
        parsed = parse_checksum(checksum)
        if parsed:
            algo, expected = parsed
            actual = file_digest(part, algo)
            if actual != expected:
                part.unlink(missing_ok=True)
                part_meta.unlink(missing_ok=True)
                raise SourceError(
                    f"{final}: {algo} mismatch: expected {expected}, got {actual} "
                    f"(downloaded from {shown}; the download was deleted)"
                )
            fingerprint["checksum"] = f"{algo}:{actual}"
        # The rename is the commit point: the final name only ever holds a complete, verified file.
        os.replace(part, final)
        fsync_dir(downloads_dir)
        if parsed:
            remember_digest(downloads_dir, final, final.stat(), parsed[0], parsed[1])
        atomic_write_json(sidecar, fingerprint)
        part_meta.unlink(missing_ok=True)
        log.info("%s: saved as %s (%.1f MB)", shown, final, final.stat().st_size / 1e6)
        return Fetched(final, fingerprint)


def _changed_on_server(
    url: str,
    shown: str,
    reused: Fetched,
    credentials: HttpCredentials | None,
    timeout_s: float,
    url_guard: UrlGuard | None = None,
) -> bool:
    """Whether the file behind ``url`` differs from the earlier download, by size, ETag and
    Last-Modified from a HEAD request; this is how a scheduled run notices a new release behind the
    same URL. A pinned checksum makes the check unnecessary. When the server cannot be asked, the
    earlier download is kept (a rerun works offline)."""
    try:
        with guarded_session() as session:
            answer = _Fetcher(session, credentials, timeout_s, url_guard).request("HEAD", url, shown)
            answer.close()
    except requests.RequestException as exc:
        log.warning(
            "%s: cannot check for a newer file (%s); keeping the earlier download", shown, type(exc).__name__
        )
        return False
    if not answer.ok:
        log.warning("%s: HEAD answered %d; keeping the earlier download", shown, answer.status_code)
        return False
    fp = reused.fingerprint
    now = {
        "size": int(answer.headers["Content-Length"])
        if answer.headers.get("Content-Length", "").isdigit()
        else None,
        "etag": answer.headers.get("ETag"),
        "last_modified": answer.headers.get("Last-Modified"),
    }
    changed = [k for k, v in now.items() if v is not None and fp.get(k) is not None and v != fp.get(k)]
    if changed:
        log.info("%s: changed on the server (%s); downloading the new file", shown, ", ".join(changed))
    return bool(changed)


def _read_json(path: Path) -> dict | None:
    data = read_json(path)
    return data if isinstance(data, dict) else None


def _reuse(
    final: Path, sidecar: Path, part_meta: Path, shown: str, checksum: str | None, downloads_dir: Path
) -> Fetched | None:
    """The finished download of ``shown`` from an earlier run, or ``None`` when there is none."""
    if not final.is_file():
        return None
    size = final.stat().st_size
    side = _read_json(sidecar)
    adopted = False
    if side is None:
        # A run that stopped between the rename and the sidecar: its .part.json still describes the file.
        meta = _read_json(part_meta)
        if meta and meta.get("source") == shown and meta.get("size") == size:
            side = {"kind": "url", "source": shown, "size": size}
            side.update({k: meta.get(k) for k in ("etag", "last_modified")})
            adopted = True
    if side is None or side.get("source") != shown or side.get("size") != size:
        log.info("%s: exists but is not a finished download of %s; downloading again", final, shown)
        return None
    try:
        verified = verify_file(final, checksum, cache_dir=downloads_dir)
    except SourceError as exc:
        raise SourceError(
            f"{exc} ({final.name} was downloaded from {shown} by an earlier run; "
            f"delete {final} to download it again)"
        ) from None
    fingerprint: dict[str, object] = {
        "kind": "url",
        "source": shown,
        "size": size,
        "etag": side.get("etag"),
        "last_modified": side.get("last_modified"),
    }
    if verified:
        fingerprint["checksum"] = verified
    if adopted:
        atomic_write_json(sidecar, fingerprint)
        part_meta.unlink(missing_ok=True)
    log.info("%s: reusing %s from an earlier run (%.1f MB), no download", shown, final, size / 1e6)
    return Fetched(final, fingerprint)


class _Fetcher:
    """HTTP requests that follow redirects one hop at a time, each hop carrying the credentials only
    when it stays on their origin (a redirect to a CDN or a mirror gets none, and https to http, another
    origin, gets none either)."""

    def __init__(
        self,
        session: requests.Session,
        credentials: HttpCredentials | None,
        timeout_s: float,
        url_guard: UrlGuard | None = None,
    ):
        self.session, self.credentials, self.timeout_s = session, credentials, timeout_s
        self.url_guard = url_guard

    def request(
        self, method: str, url: str, shown: str, headers: dict[str, str] | None = None, stream: bool = False
    ) -> requests.Response:
        for _ in range(MAX_REDIRECTS + 1):
            auth, secret_headers = self.credentials.for_url(url) if self.credentials else (None, {})
            resp = self.session.request(
                method,
                url,
                headers={**(headers or {}), **secret_headers},
                auth=auth,
                stream=stream,
                timeout=(self.timeout_s, self.timeout_s),
                allow_redirects=False,
            )
            if not resp.is_redirect:
                return resp
            location = resp.headers["Location"]
            resp.close()
            # The raw header first: urljoin would smooth a backslash or a space over.
            problem = hop_problem(location) if "://" in location else _relative_problem(location)
            if problem:
                raise SourceError(f"{shown}: redirected to {mask_url(location)}, refused: {problem}")
            url = urljoin(url, location)
            _check_hop(url, shown, self.url_guard, redirect=True)
        raise SourceError(f"{shown}: more than {MAX_REDIRECTS} redirects")


def _reason(status: int) -> str:
    """The standard phrase of an HTTP status: the server's own reason phrase is its text, not shown."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _relative_problem(location: str) -> str | None:
    """:func:`hop_problem` for a relative ``Location`` (a path on the same server)."""
    return hop_problem("http://relative.invalid" + ("" if location.startswith("/") else "/") + location)


def _check_hop(url: str, shown: str, url_guard: UrlGuard | None, redirect: bool = False) -> None:
    """Refuse a URL (the source, or a redirect hop) before any request to it; see the module doc."""
    problem = hop_problem(url)
    where = f"{shown}: redirected to {mask_url(url)}" if redirect else shown
    if problem:
        raise SourceError(f"{where}, refused: {problem}")
    if url_guard is not None:
        url_guard(url)


def _transfer(
    fetch: _Fetcher,
    url: str,
    shown: str,
    part: Path,
    part_meta: Path,
    retries: int,
    backoff_s: float,
) -> dict:
    """Fill ``part`` with the whole body of ``url``; return the server's validators (see module doc)."""
    meta = _read_json(part_meta) or {}
    if meta.get("source") != shown or not meta.get("resumable", False):
        meta = {}
    if part.exists() and not meta:
        log.info("%s: no record of where it came from; starting over", part)
        part.unlink()
    failures = 0
    best = part.stat().st_size if part.exists() else 0
    while True:
        try:
            if _attempt(fetch, url, shown, part, part_meta, meta):
                return meta
            reason = "restarting from the first byte"
        except _Retry as exc:
            reason = str(exc)
        except requests.exceptions.SSLError as exc:
            raise SourceError(f"{shown}: TLS error: {_scrub(exc, url, shown)}") from None
        except (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,
        ) as exc:
            reason = f"{type(exc).__name__}: {_scrub(exc, url, shown)}"
        have = part.stat().st_size if part.exists() else 0
        if have > best:
            best, failures = have, 0
        else:
            failures += 1
        if failures > retries:
            raise SourceError(
                f"{shown}: download failed, {failures} attempts in a row brought no new bytes; last error: "
                f"{reason}. {have:,} bytes are kept in {part}; a rerun resumes from there"
            )
        if meta and not meta.get("resumable", False) and part.exists():
            part.unlink()
        delay = min(backoff_s * 2 ** max(failures - 1, 0), MAX_BACKOFF_S)
        log.warning("%s: %s; retrying in %.1fs (%s bytes so far)", shown, reason, delay, f"{have:,}")
        time.sleep(delay)


def _attempt(fetch: _Fetcher, url: str, shown: str, part: Path, part_meta: Path, meta: dict) -> bool:
    """One GET. True when ``part`` is complete; False to restart at once; raises :class:`_Retry`."""
    offset = part.stat().st_size if part.exists() else 0
    # identity: the byte counts (Content-Length, Range) must be those of the file we save.
    req_headers = {"Accept-Encoding": "identity"}
    if offset:
        req_headers["Range"] = f"bytes={offset}-"
        etag = meta.get("etag")
        validator = etag if etag and not etag.startswith("W/") else meta.get("last_modified")
        if validator:
            req_headers["If-Range"] = validator
        log.info("%s: resuming at byte %s", shown, f"{offset:,}")
    else:
        log.info("%s: downloading to %s", shown, part)
    with fetch.request("GET", url, shown, headers=req_headers, stream=True) as resp:
        status = resp.status_code
        if status == 416 and offset:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", "").strip())
            if m and m.group(3) == str(offset) and meta.get("size") == offset:
                return True  # the .part was already whole: an earlier run stopped just before the rename
            part.unlink()
            return False
        if status in (408, 429) or status >= 500:
            raise _Retry(f"HTTP {status} {_reason(status)}")
        if 400 <= status < 500:
            hint = " (check the credentials of http_conn_id)" if status in (401, 403) else ""
            raise SourceError(f"{shown}: HTTP {status} {_reason(status)}{hint}")
        if status not in (200, 206):
            raise SourceError(f"{shown}: unexpected HTTP {status} {_reason(status)}")

        encoded = resp.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
        length = resp.headers.get("Content-Length")
        body_len = int(length) if length and length.isdigit() and not encoded else None
        if status == 206:
            m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", "").strip())
            if not offset or not m or m.group(1) is None or int(m.group(1)) != offset:
                part.unlink(missing_ok=True)
                meta.clear()
                raise _Retry("server answered a different range than the one asked for")
            new_etag = resp.headers.get("ETag")
            if meta.get("etag") and new_etag and new_etag != meta["etag"]:
                part.unlink()
                meta.clear()
                raise _Retry("the file changed on the server since the partial download began")
            total = int(m.group(3)) if m.group(3) != "*" else meta.get("size")
            mode = "ab"
        else:
            if offset:
                log.info("%s: server sent the whole file, not the range asked for; starting over", shown)
            offset = 0
            total = body_len
            mode = "wb"
            meta.clear()
            meta.update(
                source=shown,
                etag=resp.headers.get("ETag"),
                last_modified=resp.headers.get("Last-Modified"),
                size=total,
                resumable=not encoded and total is not None,
            )
            # Recorded before the first byte lands, so a .part always has the validators to resume it.
            atomic_write_json(part_meta, meta)

        progress = ByteProgress(f"download {part.name[: -len(PART_SUFFIX)]}", total or 0, offset=offset)
        with disk_full_as_error(part), open(part, mode) as fh:
            try:
                for chunk in resp.iter_content(CHUNK_BYTES):
                    fh.write(chunk)
                    progress.advance(len(chunk))
                    failpoint("download-chunk")
            finally:
                fh.flush()
            os.fsync(fh.fileno())
    have = part.stat().st_size
    if total is not None and have < total:
        raise _Retry(f"the body ended early, at byte {have:,} of {total:,}")
    if total is not None and have > total:
        part.unlink()
        meta.clear()
        raise _Retry(f"received {have:,} bytes, more than the {total:,} announced")
    progress.finish()
    return True


def _scrub(exc: BaseException, url: str, shown: str) -> str:
    """The text of a requests error with every URL and query in it masked (:func:`mask_text`)."""
    return mask_text(str(exc))
