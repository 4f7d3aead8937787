"""resolve_source against a real HTTP server on 127.0.0.1: resume, retries, faults, checksums, credentials."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import time
from pathlib import Path

import pytest

from airflow_resnet_prep.errors import SourceError
from airflow_resnet_prep.sources.credentials import HttpCredentials
from airflow_resnet_prep.sources.download import Fetched, resolve_source
from airflow_resnet_prep.urls import mask_url
from tests.support.httpserver import FileServer

MiB = 1024 * 1024
# Bigger than a few download chunks, so that a cut connection leaves whole chunks on disk to resume from.
DATA = random.Random(0).randbytes(5 * MiB + 12345)
MD5 = hashlib.md5(DATA).hexdigest()
SHA256 = hashlib.sha256(DATA).hexdigest()
FAST = {"backoff_s": 0.01, "timeout_s": 2.0}


@pytest.fixture
def server():
    with FileServer(files={"train.tar": DATA}) as srv:
        yield srv


@pytest.fixture
def dl(tmp_path: Path) -> Path:
    return tmp_path / "downloads"


def _sidecar(dl: Path, name: str = "train.tar") -> dict:
    return json.loads((dl / f"{name}.json").read_text())


def _assert_finished(fetched: Fetched, dl: Path) -> None:
    assert fetched.path == dl / "train.tar"
    assert fetched.path.read_bytes() == DATA
    assert not (dl / "train.tar.part").exists()
    assert not (dl / "train.tar.part.json").exists()


@pytest.mark.parametrize(("spec", "algo"), [(f"md5:{MD5}", "md5"), (f"sha256:{SHA256.upper()}", "sha256")])
def test_full_download_with_checksum(server: FileServer, dl: Path, spec: str, algo: str) -> None:
    fetched = resolve_source(server.url("train.tar"), dl, checksum=spec, **FAST)
    _assert_finished(fetched, dl)
    digest = MD5 if algo == "md5" else SHA256
    fp = fetched.fingerprint
    assert fp["kind"] == "url" and fp["source"] == server.url("train.tar")
    assert fp["size"] == len(DATA) and fp["checksum"] == f"{algo}:{digest}"
    assert fp["etag"] and fp["last_modified"]
    assert _sidecar(dl) == fp
    assert len(server.gets()) == 1 and "Range" not in server.gets()[0].headers


def test_rerun_reuses_download_without_network(server: FileServer, dl: Path) -> None:
    first = resolve_source(server.url("train.tar"), dl, checksum=f"md5:{MD5}", **FAST)
    seen = len(server.requests)
    server.stop()  # any network access now fails
    t0 = time.monotonic()
    again = resolve_source(server.url("train.tar"), dl, checksum=f"md5:{MD5}", **FAST)
    assert again == first
    assert len(server.requests) == seen
    # answered from the verify cache (verified.json), written when the download was verified
    cache = json.loads((dl / "verified.json").read_text())
    assert cache[str(first.path)]["digests"]["md5"] == MD5
    assert time.monotonic() - t0 < 1.0
    # without a checksum the fingerprint says nothing about one
    assert "checksum" not in resolve_source(server.url("train.tar"), dl, **FAST).fingerprint


def test_rerun_with_a_checksum_the_file_does_not_have_fails_without_network(
    server: FileServer, dl: Path
) -> None:
    resolve_source(server.url("train.tar"), dl, checksum=f"md5:{MD5}", **FAST)
    server.stop()
    with pytest.raises(SourceError) as err:
        resolve_source(server.url("train.tar"), dl, checksum=f"md5:{'0' * 32}", **FAST)
    msg = str(err.value)
    assert f"{dl / 'train.tar'}: md5 mismatch: expected {'0' * 32}, got {MD5}" in msg
    assert "delete" in msg


def test_resume_after_connection_cut(server: FileServer, dl: Path) -> None:
    server.fault("cut", after=3 * MiB + 100)
    fetched = resolve_source(server.url("train.tar"), dl, checksum=f"md5:{MD5}", **FAST)
    _assert_finished(fetched, dl)
    first, second = server.gets()
    assert "Range" not in first.headers
    assert second.headers["Range"].startswith("bytes=")
    offset = int(second.headers["Range"][len("bytes=") : -1])
    assert 0 < offset <= 3 * MiB + 100
    etag = fetched.fingerprint["etag"]
    assert second.headers["If-Range"] == etag


def test_resume_across_runs_from_a_kept_part(server: FileServer, dl: Path) -> None:
    server.fault("stall", after=2 * MiB + 5, seconds=3.0)  # some bytes, then silence
    server.fault("status", status=503, times=-1)  # then the mirror goes down for good
    with pytest.raises(SourceError) as err:
        resolve_source(server.url("train.tar"), dl, retries=1, backoff_s=0.01, timeout_s=0.3)
    assert "a rerun resumes" in str(err.value) and "HTTP 503" in str(err.value)
    kept = (dl / "train.tar.part").stat().st_size
    assert kept > 0 and (dl / "train.tar.part.json").exists()
    server.faults.clear()
    n = len(server.gets())
    fetched = resolve_source(server.url("train.tar"), dl, checksum=f"sha256:{SHA256}", **FAST)
    _assert_finished(fetched, dl)
    (resumed,) = server.gets()[n:]
    assert resumed.headers["Range"] == f"bytes={kept}-"


def test_server_ignoring_range_restarts_from_zero(dl: Path) -> None:
    with FileServer(files={"train.tar": DATA}, ranges=False) as srv:
        srv.fault("cut", after=3 * MiB)
        # No stall here: a long read timeout, so that a loaded machine adds no retry of its own.
        fetched = resolve_source(
            srv.url("train.tar"), dl, checksum=f"md5:{MD5}", backoff_s=0.01, timeout_s=30.0
        )
        _assert_finished(fetched, dl)  # the checksum holds: the whole file was not appended to the part
        first, second = srv.gets()  # a checksum failure and another attempt would show a third
        # We asked to resume, got the whole file (200), and started over.
        assert "Range" not in first.headers and "Range" in second.headers


def test_file_changed_on_server_between_attempts_restarts(server: FileServer, dl: Path) -> None:
    server.fault("stall", after=2 * MiB + 5, seconds=3.0)
    server.fault("status", status=503, times=-1)
    with pytest.raises(SourceError):
        resolve_source(server.url("train.tar"), dl, retries=0, backoff_s=0.01, timeout_s=0.3)
    assert (dl / "train.tar.part").stat().st_size > 0
    server.faults.clear()
    new = DATA[::-1]
    server.put("train.tar", new)  # new ETag: If-Range no longer matches, so the server sends it all
    n = len(server.gets())
    fetched = resolve_source(
        server.url("train.tar"), dl, checksum=f"md5:{hashlib.md5(new).hexdigest()}", **FAST
    )
    assert fetched.path.read_bytes() == new
    (req,) = server.gets()[n:]
    assert "If-Range" in req.headers


def test_404_fails_at_once_naming_the_url(server: FileServer, dl: Path) -> None:
    url = server.url("missing.tar")
    with pytest.raises(SourceError) as err:
        resolve_source(url, dl, retries=5, backoff_s=10.0)  # a retry would make this test slow
    assert url in str(err.value) and "404" in str(err.value)
    assert len(server.gets()) == 1
    assert not list(dl.glob("missing.tar*"))


def test_500_then_success(server: FileServer, dl: Path) -> None:
    server.fault("status", status=500, times=2)
    fetched = resolve_source(server.url("train.tar"), dl, checksum=f"md5:{MD5}", **FAST)
    _assert_finished(fetched, dl)
    assert len(server.gets()) == 3


def test_persistent_500_gives_up_after_retries(server: FileServer, dl: Path) -> None:
    server.fault("status", status=503, times=-1)
    with pytest.raises(SourceError) as err:
        resolve_source(server.url("train.tar"), dl, retries=2, backoff_s=0.01)
    assert server.url("train.tar") in str(err.value) and "HTTP 503" in str(err.value)
    assert len(server.gets()) == 3


def test_stall_is_retried(server: FileServer, dl: Path) -> None:
    server.fault("stall", after=0, seconds=5.0)
    t0 = time.monotonic()
    fetched = resolve_source(
        server.url("train.tar"), dl, checksum=f"md5:{MD5}", backoff_s=0.01, timeout_s=0.3
    )
    _assert_finished(fetched, dl)
    assert len(server.gets()) == 2
    assert time.monotonic() - t0 < 3.0  # the read timeout, not the stall, decided


def test_endless_stall_fails_clearly(server: FileServer, dl: Path) -> None:
    server.fault("stall", after=0, seconds=5.0, times=-1)
    with pytest.raises(SourceError) as err:
        resolve_source(server.url("train.tar"), dl, retries=1, backoff_s=0.01, timeout_s=0.2)
    msg = str(err.value)
    assert server.url("train.tar") in msg and "timed out" in msg.lower() and "2 attempts" in msg
    assert not (dl / "train.tar").exists()


def test_garbage_body_fails_checksum_naming_the_file(server: FileServer, dl: Path) -> None:
    server.fault("garbage")
    with pytest.raises(SourceError) as err:
        resolve_source(server.url("train.tar"), dl, checksum=f"md5:{MD5}", **FAST)
    msg = str(err.value)
    assert msg.startswith(f"{dl / 'train.tar'}: md5 mismatch: expected {MD5}, got ")
    assert server.url("train.tar") in msg
    assert not list(dl.glob("train.tar*"))  # the .part is deleted, nothing carries the final name
    # the next run downloads cleanly
    _assert_finished(resolve_source(server.url("train.tar"), dl, checksum=f"md5:{MD5}", **FAST), dl)


def test_short_body_is_resumed(server: FileServer, dl: Path) -> None:
    server.fault("short", after=2 * MiB + 7)
    fetched = resolve_source(server.url("train.tar"), dl, checksum=f"md5:{MD5}", **FAST)
    _assert_finished(fetched, dl)
    _, second = server.gets()
    # Resumed from the last whole chunk written (the chunk being read when the body ended is lost).
    assert second.headers["Range"] == f"bytes={2 * MiB}-"


def test_stray_part_is_never_taken_for_a_finished_file(server: FileServer, dl: Path) -> None:
    dl.mkdir()
    (dl / "train.tar.part").write_bytes(DATA)  # complete bytes, but no record of where they came from
    (dl / "train.tar").write_bytes(b"not it")  # a final name without a sidecar is not trusted either
    fetched = resolve_source(server.url("train.tar"), dl, **FAST)
    _assert_finished(fetched, dl)
    (req,) = server.gets()
    assert "Range" not in req.headers


def test_complete_part_from_a_run_that_stopped_before_the_rename(server: FileServer, dl: Path) -> None:
    first = resolve_source(server.url("train.tar"), dl, **FAST)
    # Recreate the state of a run killed after the last byte but before the rename.
    os.rename(dl / "train.tar", dl / "train.tar.part")
    (dl / "train.tar.json").unlink()
    meta = {k: first.fingerprint[k] for k in ("source", "etag", "last_modified", "size")} | {
        "resumable": True
    }
    (dl / "train.tar.part.json").write_text(json.dumps(meta))
    fetched = resolve_source(server.url("train.tar"), dl, checksum=f"md5:{MD5}", **FAST)
    _assert_finished(fetched, dl)
    assert server.gets()[-1].headers["Range"] == f"bytes={len(DATA)}-"  # answered 416: nothing missing


def test_run_that_stopped_before_the_sidecar_is_adopted_without_network(server: FileServer, dl: Path) -> None:
    first = resolve_source(server.url("train.tar"), dl, **FAST)
    # Recreate the state between the rename and the sidecar write.
    (dl / "train.tar.json").unlink()
    meta = {k: first.fingerprint[k] for k in ("source", "etag", "last_modified", "size")} | {
        "resumable": True
    }
    (dl / "train.tar.part.json").write_text(json.dumps(meta))
    n = len(server.gets())
    again = resolve_source(server.url("train.tar"), dl, **FAST)
    assert again == first and len(server.gets()) == n  # at most a HEAD to check for a newer file
    assert _sidecar(dl) == first.fingerprint and not (dl / "train.tar.part.json").exists()


def test_rerun_downloads_again_only_when_the_file_changed_on_the_server(server: FileServer, dl: Path) -> None:
    first = resolve_source(server.url("train.tar"), dl, **FAST)
    n = len(server.gets())
    assert resolve_source(server.url("train.tar"), dl, **FAST) == first
    assert len(server.gets()) == n
    assert any(r.method == "HEAD" for r in server.requests)
    server.put("train.tar", DATA[::-1])  # a new release behind the same URL
    newer = resolve_source(server.url("train.tar"), dl, **FAST)
    assert newer.path.read_bytes() == DATA[::-1] and newer.fingerprint["etag"] != first.fingerprint["etag"]
    assert len(server.gets()) == n + 1
    server.stop()  # the server gone: the earlier download is kept
    assert resolve_source(server.url("train.tar"), dl, **FAST) == newer


def test_same_name_from_another_url_is_downloaded_again(server: FileServer, dl: Path, tmp_path: Path) -> None:
    resolve_source(server.url("train.tar"), dl, **FAST)
    with FileServer(files={"train.tar": b"other"}) as other:
        fetched = resolve_source(other.url("train.tar"), dl, **FAST)
        assert fetched.path.read_bytes() == b"other" and len(other.gets()) == 1


def _no_secret_anywhere(
    secret: str, dl: Path, fetched: Fetched | None, caplog: pytest.LogCaptureFixture
) -> None:
    for record in caplog.records:
        assert secret not in record.getMessage()
        assert secret not in str(record.args)
    for f in dl.rglob("*"):
        if f.is_file() and f.name != "train.tar":
            assert secret.encode() not in f.read_bytes(), f
    if fetched is not None:
        assert secret not in json.dumps(fetched.fingerprint)


@pytest.fixture
def airflow_sdk():
    """Import the Task SDK before the test runs: its first import replaces the root log handlers,
    which would otherwise detach caplog's handler halfway through the test."""
    import airflow.sdk

    return airflow.sdk


def test_basic_auth_through_airflow_connection(
    airflow_sdk, dl: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow_resnet_prep.operators.connections import http_credentials_from_connection

    secret = "pa:ss/w@rd-0x5ecre7"
    conn = {
        "conn_type": "http",
        "login": "alice",
        "password": secret,
        "extra": {"headers": {"X-Mirror": "eu"}},
    }
    caplog.set_level(logging.DEBUG)
    with FileServer(
        files={"train.tar": DATA}, auth=("alice", secret), required_headers={"X-Mirror": "eu"}
    ) as srv:
        monkeypatch.setenv(
            "AIRFLOW_CONN_IMAGENET_MIRROR", json.dumps({**conn, "host": "127.0.0.1", "port": srv.port})
        )
        credentials = http_credentials_from_connection("imagenet_mirror")
        srv.fault("cut", after=3 * MiB)
        fetched = resolve_source(
            srv.url("train.tar"), dl, checksum=f"md5:{MD5}", credentials=credentials, **FAST
        )
        _assert_finished(fetched, dl)
        assert all(r.headers.get("Authorization", "").startswith("Basic ") for r in srv.gets())
        assert any("train.tar" in r.getMessage() for r in caplog.records)  # the log was captured at all
        _no_secret_anywhere(secret, dl, fetched, caplog)

        # Wrong password: fails at once, naming the URL, without the secret in the message.
        with pytest.raises(SourceError) as err:
            wrong = HttpCredentials(credentials.origin, ("alice", "wrong-" + secret))
            resolve_source(srv.url("other.tar"), dl, credentials=wrong, **FAST)
        assert "401" in str(err.value) and srv.url("other.tar") in str(err.value)
        assert secret not in str(err.value)


def test_credentials_in_the_url_are_used_and_never_shown(dl: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = "s3cret-pw"
    caplog.set_level(logging.DEBUG)
    with FileServer(files={"train.tar": DATA}, auth=("bob", secret)) as srv:
        url = srv.url("train.tar", userinfo=f"bob:{secret}")
        srv.fault("status", status=502)
        fetched = resolve_source(url, dl, **FAST)
        _assert_finished(fetched, dl)
        assert fetched.fingerprint["source"] == srv.url("train.tar")
        with pytest.raises(SourceError) as err:
            resolve_source(srv.url("gone.tar", userinfo=f"bob:{secret}"), dl, **FAST)
        assert srv.url("gone.tar") in str(err.value) and secret not in str(err.value)
        assert secret not in repr(err.value.__cause__) and secret not in repr(err.value.__context__)
    _no_secret_anywhere(secret, dl, fetched, caplog)


def test_mask_url() -> None:
    assert mask_url("https://u:p@host:8443/a/b.tar?version=1") == "https://host:8443/a/b.tar?version=1"
    assert (
        mask_url("https://host/b.tar?X-Amz-Signature=abc&x=1#t=2")
        == "https://host/b.tar?X-Amz-Signature=***&x=***"
    )
    assert mask_url("http://[::1]:80/f") == "http://[::1]:80/f"


# -- local sources ----------------------------------------------------------------------------------


def test_local_file_used_in_place_with_checksum(tmp_path: Path, dl: Path) -> None:
    src = tmp_path / "val.tar"
    src.write_bytes(DATA)
    before = src.stat()
    fetched = resolve_source(str(src), dl, checksum=f"md5:{MD5}")
    assert fetched.path == src
    assert fetched.fingerprint == {
        "kind": "file",
        "source": str(src),
        "size": len(DATA),
        "mtime_ns": before.st_mtime_ns,
        "checksum": f"md5:{MD5}",
    }
    assert src.stat().st_mtime_ns == before.st_mtime_ns and src.read_bytes() == DATA
    assert json.loads((dl / "verified.json").read_text())[str(src)]["digests"]["md5"] == MD5
    with pytest.raises(SourceError, match=re.escape(f"{src}: md5 mismatch")):
        resolve_source(str(src), dl, checksum=f"md5:{'1' * 32}")


def test_file_url(tmp_path: Path, dl: Path) -> None:
    src = tmp_path / "with space.txt"
    src.write_bytes(b"n01440764\n")
    fetched = resolve_source(src.as_uri(), dl)
    assert fetched.path == src and fetched.fingerprint["kind"] == "file"
    assert fetched.fingerprint["source"] == str(src)
    assert not dl.exists()  # nothing written for a local source without a checksum


def test_relative_path_is_made_absolute(tmp_path: Path, dl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "labels.txt").write_text("n01440764\n")
    monkeypatch.chdir(tmp_path)
    assert resolve_source("labels.txt", dl).fingerprint["source"] == str(tmp_path / "labels.txt")


def test_local_folder_fingerprint(tmp_path: Path, dl: Path) -> None:
    root = tmp_path / "val"
    (root / "n01").mkdir(parents=True)
    (root / "n02").mkdir()
    (root / "n01" / "a.JPEG").write_bytes(b"a" * 10)
    (root / "n01" / "b.JPEG").write_bytes(b"b" * 20)
    (root / "n02" / "c.JPEG").write_bytes(b"c" * 30)
    old = time.time_ns() - 1000 * 10**9
    for p in [*root.rglob("*"), root]:
        os.utime(p, ns=(old, old))
    fetched = resolve_source(str(root), dl, checksum=f"md5:{MD5}")  # a checksum means nothing for a folder
    fp = fetched.fingerprint
    assert fetched.path == root
    assert fp == {"kind": "dir", "source": str(root), "files": 3, "size": 60, "mtime_ns": old}
    # Moving a file between class folders changes no file's mtime, but it changes the fingerprint.
    os.rename(root / "n01" / "b.JPEG", root / "n02" / "b.JPEG")
    moved = resolve_source(str(root), dl).fingerprint
    assert moved["files"] == 3 and moved["size"] == 60 and moved["mtime_ns"] > fp["mtime_ns"]


def test_missing_local_path_names_it(tmp_path: Path, dl: Path) -> None:
    missing = tmp_path / "nowhere" / "ILSVRC2012_img_val.tar"
    with pytest.raises(SourceError, match=re.escape(f"{missing}: no such file or folder")):
        resolve_source(str(missing), dl)
    with pytest.raises(SourceError, match=re.escape(f"{missing}: no such file or folder")):
        resolve_source(missing.as_uri(), dl)


def test_bad_inputs(tmp_path: Path, dl: Path) -> None:
    with pytest.raises(SourceError, match="md5:<32 hex digits>"):
        resolve_source(str(tmp_path), dl, checksum="md5:xyz")
    with pytest.raises(SourceError, match="unsupported URL scheme 'ftp'"):
        resolve_source("ftp://host/file.tar", dl)
    with pytest.raises(SourceError, match="does not end in a file name"):
        resolve_source("http://127.0.0.1:9/", dl)
    with pytest.raises(SourceError, match="empty"):
        resolve_source("  ", dl)
