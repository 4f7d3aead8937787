"""A small HTTP file server on 127.0.0.1 for tests: real sockets, real ``requests``, scripted faults.

Usage::

    with FileServer(files={"a.tar": data}, auth=("user", "secret"), ranges=True) as srv:
        srv.fault("cut", after=1000)            # the next GET is cut after 1000 body bytes
        url = srv.url("a.tar")
        ...
        srv.requests                             # every request seen: method, path, headers

or as a fixture: ``server = pytest.fixture(file_server)`` in a test module, then ``server.put(...)``.

Files come from ``files`` (in memory) and/or ``folder`` (read at request time). Each file gets a strong
ETag (hash of its bytes) and a Last-Modified date, and ``Range``/``If-Range`` are honoured when
``ranges`` is true. Faults are one-shot by default and consumed in order by matching GET requests:

* ``cut``: send ``after`` body bytes, then drop the connection;
* ``short``: like ``cut`` but closes cleanly (the body is shorter than Content-Length);
* ``stall``: send ``after`` body bytes, then go silent for ``seconds`` and close;
* ``garbage``: send random bytes of the right length instead of the file;
* ``status``: answer with ``status`` (e.g. 404, 500) and a small body.

``redirects`` maps a file name to a URL answered with ``302 Location: <url>`` (once the request passed
the ``auth`` and ``required_headers`` checks). ``requests`` records every request with its headers, so a
test can check what reached which server.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Fault:
    kind: str  # cut | short | stall | garbage | status
    after: int = 0
    status: int = 500
    seconds: float = 5.0
    path: str | None = None  # only requests for this file name; None = any
    times: int = 1  # how many requests it applies to; -1 = for ever


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


class FileServer:
    """Serves in-memory files and/or a folder on ``127.0.0.1:<random port>``; see the module docstring."""

    def __init__(
        self,
        files: dict[str, bytes] | None = None,
        folder: Path | None = None,
        *,
        auth: tuple[str, str] | None = None,
        ranges: bool = True,
        required_headers: dict[str, str] | None = None,
        redirects: dict[str, str] | None = None,
    ) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.redirects: dict[str, str] = dict(redirects or {})
        self.folder = Path(folder) if folder is not None else None
        self.auth = auth
        self.ranges = ranges
        self.required_headers = dict(required_headers or {})
        self.requests: list[SeenRequest] = []
        self.faults: list[Fault] = []
        self.mtime = time.time() - 3600
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- set-up ---------------------------------------------------------------------------------

    def put(self, name: str, data: bytes) -> None:
        """Add or replace an in-memory file (a replaced file gets a new ETag and Last-Modified)."""
        with self._lock:
            self.files[name] = data
            self.mtime = time.time()

    def fault(self, kind: str, **kw: object) -> Fault:
        """Queue a fault for the next matching GET (see the module docstring)."""
        f = Fault(kind, **kw)  # type: ignore[arg-type]
        with self._lock:
            self.faults.append(f)
        return f

    def url(self, name: str, *, userinfo: str | None = None) -> str:
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return f"http://{netloc}/{quote(name)}"

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    def gets(self, name: str | None = None) -> list[SeenRequest]:
        """The GET requests seen so far (for one file name when given)."""
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and (name is None or r.path == name)]

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> FileServer:
        handler = type("Handler", (_Handler,), {"srv": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # a stalled handler must not hold up shutdown
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------------------------

    def _content(self, name: str) -> bytes | None:
        with self._lock:
            if name in self.files:
                return self.files[name]
        if self.folder is not None:
            p = (self.folder / name).resolve()
            if p.is_file() and p.is_relative_to(self.folder.resolve()):
                return p.read_bytes()
        return None

    def _take_fault(self, name: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if f.path is None or f.path == name:
                    if f.times > 0:
                        f.times -= 1
                        if f.times == 0:
                            self.faults.remove(f)
                    return f
        return None


def file_server(**kw: object) -> Iterator[FileServer]:
    """Generator for a pytest fixture: ``server = pytest.fixture(file_server)``."""
    with FileServer(**kw) as srv:  # type: ignore[arg-type]
        yield srv


class _Handler(BaseHTTPRequestHandler):
    srv: FileServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _plain(self, status: int, text: str, extra: dict[str, str] | None = None) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self, head: bool) -> None:
        srv = self.srv
        name = unquote(urlsplit(self.path).path.lstrip("/"))
        with srv._lock:
            srv.requests.append(SeenRequest(self.command, name, dict(self.headers.items())))
        if srv.auth is not None:
            want = "Basic " + base64.b64encode(f"{srv.auth[0]}:{srv.auth[1]}".encode()).decode()
            if self.headers.get("Authorization") != want:
                self._plain(401, "authentication required", {"WWW-Authenticate": 'Basic realm="test"'})
                return
        for k, v in srv.required_headers.items():
            if self.headers.get(k) != v:
                self._plain(403, f"missing header {k}")
                return
        if name in srv.redirects:  # after the credentials were checked, as a real mirror would
            self._plain(302, "moved", {"Location": srv.redirects[name]})
            return
        fault = None if head else srv._take_fault(name)
        if fault is not None and fault.kind == "status":
            self._plain(fault.status, f"scripted {fault.status}")
            return
        data = srv._content(name)
        if data is None:
            self._plain(404, "not found")
            return
        etag = '"' + hashlib.sha1(data).hexdigest()[:20] + '"'
        last_modified = formatdate(srv.mtime, usegmt=True)

        start, status = 0, 200
        rng = self.headers.get("Range")
        if srv.ranges and rng:
            m = _RANGE_RE.match(rng.strip())
            if_range = self.headers.get("If-Range")
            if m and (if_range is None or if_range in (etag, last_modified)):
                start = int(m.group(1))
                end = int(m.group(2)) + 1 if m.group(2) else len(data)
                if start >= len(data):
                    self._plain(416, "range not satisfiable", {"Content-Range": f"bytes */{len(data)}"})
                    return
                data = data[start:end]
                status = 206
        full_len = start + len(data) if status == 206 else len(data)

        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", last_modified)
        if srv.ranges:
            self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(data) - 1}/{full_len}")
        self.end_headers()
        if head:
            return

        if fault is None:
            self.wfile.write(data)
            return
        if fault.kind == "garbage":
            self.wfile.write(os.urandom(len(data)))
            return
        self.wfile.write(data[: fault.after])
        self.wfile.flush()
        if fault.kind == "stall":
            srv._stop.wait(fault.seconds)
        elif fault.kind == "cut":
            srv._stop.wait(0.1)  # let the client take what was sent before the reset discards it
            # RST rather than FIN: the client sees the connection die mid-body.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        self.close_connection = True
