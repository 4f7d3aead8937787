"""PostgreSQL and Redis from the Debian packages, each a child process on 127.0.0.1 in a temp folder.

Nothing is installed as a system service: ``Postgres`` runs ``initdb`` on a folder of its own and starts
``postgres`` on a free port with its unix socket in that folder (as the ``postgres`` user when this
process is root, since PostgreSQL refuses to run as root); ``Redis`` runs ``redis-server`` with no
persistence. Both are stopped by ``stop()``, which is idempotent, and ``Redis`` can be stopped and
started again on the same port (the broker-restart test).

``missing_services()`` says which executables are absent, so the fixture can skip (or fail under CI).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DB_USER = "airflow"
DB_PASSWORD = "airflow"
DB_NAME = "airflow"


def postgres_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` (Debian), else the folder of ``initdb`` on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def missing_services() -> list[str]:
    """The server programs the cluster needs that are not installed."""
    missing = []
    if postgres_bindir() is None:
        missing.append("postgresql (initdb, postgres)")
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    return missing


def wait_port(port: int, timeout: float, process: subprocess.Popen, log: Path) -> None:
    """Wait until 127.0.0.1:``port`` accepts connections; fail with the log's end if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{tail(log)}")
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{process.args[0]}: port {port} not open after {timeout} s:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _stop(process: subprocess.Popen | None, sig: int, timeout: float = 20) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


class Postgres:
    """A throw-away PostgreSQL cluster under ``root`` (data and socket folders), on 127.0.0.1:``port``.

    Durability is off (``fsync``, ``synchronous_commit``, ``full_page_writes``): it is a test database.
    """

    def __init__(self, port: int, root: Path | None = None) -> None:
        # Its own folder directly under the temp dir by default: the `postgres` user must be able to
        # reach it, which it cannot under pytest's per-user (mode 0700) temp folders.
        self.owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="airflow-resnet-prep-pg-")) if root is None else Path(root)
        self.port = port
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log = self.root / "postgres.log"
        self.process: subprocess.Popen | None = None
        bindir = postgres_bindir()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = bindir
        # PostgreSQL refuses to run as root: as root, run its programs as the package's `postgres` user.
        self.user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the metadata database (psycopg2, as docker-compose.yaml uses)."""
        return f"postgresql+psycopg2://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{self.port}/{DB_NAME}"

    @property
    def result_backend(self) -> str:
        """Celery result backend URL on the same database."""
        return f"db+postgresql://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{self.port}/{DB_NAME}"

    def _run(self, *argv: str) -> None:
        result = subprocess.run(
            [str(self.bindir / argv[0]), *argv[1:]],
            user=self.user,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode:
            raise RuntimeError(
                f"{argv[0]} exited with {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )

    def start(self, timeout: float = 60) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            for path in (self.root, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            pwfile = self.root / "pwfile"
            pwfile.write_text(DB_PASSWORD + "\n")
            if self.user is not None:
                os.chown(pwfile, pwd.getpwnam(self.user).pw_uid, -1)
            self._run(
                "initdb", "-D", str(self.data), "-U", DB_USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
            )  # fmt: skip
        log = open(self.log, "ab")  # noqa: SIM115 (the child holds it; closed with the process)
        self.process = subprocess.Popen(
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.data),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(self.socket_dir),
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=64MB",
            ],
            user=self.user,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_port(self.port, timeout, self.process, self.log)
        deadline = time.monotonic() + timeout
        while True:  # the port opens before the server accepts logins
            probe = subprocess.run(
                [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-U", DB_USER],
                capture_output=True,
            )
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres not ready after {timeout} s:\n{tail(self.log)}")
            time.sleep(0.2)
        self.create_database()

    def create_database(self) -> None:
        import psycopg2

        with contextlib.closing(
            psycopg2.connect(
                host="127.0.0.1", port=self.port, user=DB_USER, password=DB_PASSWORD, dbname="postgres"
            )
        ) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{DB_NAME}"')

    def stop(self) -> None:
        """Fast shutdown (SIGINT: roll back, disconnect clients, stop), SIGKILL after 20 s; removes the
        folder it made. Idempotent."""
        _stop(self.process, signal.SIGINT)
        if self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)


class Redis:
    """``redis-server`` on 127.0.0.1:``port`` without persistence; ``stop()`` then ``start()`` restarts it
    on the same port with an empty data set, as a broker restart without persistence does."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = Path(root)
        self.port = port
        self.log = self.root / "redis.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                str(self.root),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_port(self.port, timeout, self.process, self.log)

    def stop(self) -> None:
        _stop(self.process, signal.SIGTERM)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None
