"""Object storage across processes: multipart parts from separate (spawned) processes, a killed writer's
upload aborted by a rerun, and every forked or spawned child with a client of its own."""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from airflow_resnet_prep.storage import Part, StorageError, store_for
from airflow_resnet_prep.storage.objectstore import S3Multipart, S3Store

MIB = 1 << 20


def part_bytes(number: int, size: int) -> bytes:
    """Deterministic content of part ``number``, so the parent can check the completed object."""
    block = bytes([number % 251]) * 4096 + number.to_bytes(4, "little")
    return (block * (size // len(block) + 1))[:size]


def _upload_part(upload: S3Multipart, number: int, size: int) -> tuple[Part, int]:
    """Runs in a spawned process: it gets the upload by pickle (store URI, key, UploadId) only."""
    part = upload.upload_part(number, part_bytes(number, size))
    return part, os.getpid()


def test_multipart_parts_from_two_spawned_processes(s3_prefix: str) -> None:
    store = store_for(s3_prefix)
    upload = store.create_multipart("recordio/train.rec")
    sizes = {1: 5 * MIB, 2: 5 * MIB + 3, 3: 1234}
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_upload_part, upload, n, sizes[n]) for n in (3, 1, 2)]  # any order
        results = [f.result() for f in futures]
    assert {pid for _, pid in results} - {os.getpid()}  # really other processes
    parts = [part for part, _ in results]
    assert not store.exists("recordio/train.rec")  # nothing visible before complete
    assert [u.upload_id for u in store.list_uploads("recordio")] == [upload.upload_id]
    # The parts' ETags and sizes travel as plain JSON (a done record or XCom) and back.
    parts = [Part(*p) for p in __import__("json").loads(__import__("json").dumps(parts))]
    store.resume_multipart("recordio/train.rec", upload.upload_id).complete(parts)
    expected = b"".join(part_bytes(n, sizes[n]) for n in (1, 2, 3))
    assert store.size("recordio/train.rec") == len(expected)
    assert store.read_bytes("recordio/train.rec") == expected
    assert store.list_uploads() == []


def test_complete_refuses_small_parts_before_the_last(s3_prefix: str) -> None:
    store = store_for(s3_prefix)
    upload = store.create_multipart("x")
    parts = [upload.upload_part(1, b"a" * 100), upload.upload_part(2, b"b" * 100)]
    with pytest.raises(StorageError, match=r"parts \[1\] are below 5 MiB"):
        upload.complete(parts)
    upload.abort()
    assert store.list_uploads() == []
    assert not store.exists("x")


def _killed_writer(store: S3Store, key: str) -> None:
    """Runs in a spawned process: dies (like a SIGKILL) in the middle of a multipart stream."""
    with store.writer(key) as fh:
        fh.write(os.urandom(17 * MIB))  # one 16 MiB part sent, the rest buffered
        os._exit(9)


def test_killed_writer_leaves_no_object_and_the_rerun_aborts_its_upload(s3_prefix: str) -> None:
    store = store_for(s3_prefix)
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_killed_writer, args=(store, "tfrecords/train-00000-of-00001"))
    child.start()
    child.join(120)
    assert child.exitcode == 9
    assert not store.exists("tfrecords/train-00000-of-00001")
    stale = store.list_uploads("tfrecords")
    assert [u.key for u in stale] == ["tfrecords/train-00000-of-00001"]
    # what a rerun does first: abort what a killed run left open (under its own prefix only)
    other = store.create_multipart("elsewhere/keep")
    assert store.abort_uploads("tfrecords") == 1
    assert [u.upload_id for u in store.list_uploads()] == [other.upload_id]


def test_abort_uploads_by_age_and_keep_list(s3_prefix: str) -> None:
    store = store_for(s3_prefix)
    old = [store.create_multipart(f"work/p{i}") for i in range(3)]
    time.sleep(2.1)
    fresh = store.create_multipart("work/fresh")
    # A recent upload may belong to a unit still running: age and an explicit keep-list protect it.
    assert store.abort_uploads("work", older_than_s=2.0, keep=[old[0].upload_id]) == 2
    left = {u.upload_id for u in store.list_uploads("work")}
    assert left == {old[0].upload_id, fresh.upload_id}
    assert store.abort_uploads("work") == 2
    assert store.list_uploads() == []


# -- a client per process ----------------------------------------------------------------------------------
def _use_store(store: S3Store, key: str) -> tuple[int, int, bytes]:
    fs = store.fs
    return os.getpid(), fs._pid, store.read_range(key, 1, 4)


_INHERITED: list = []  # the parent's fsspec file system, inherited by a forked child (not picklable)


def _use_inherited_fs(path: str) -> str:
    try:
        _INHERITED[0].cat_file(path, start=0, end=1)
    except RuntimeError as exc:
        return str(exc)
    return "worked"


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_each_child_process_gets_its_own_client(s3_prefix: str, method: str) -> None:
    store = store_for(s3_prefix)
    store.write_bytes("obj", b"0123456789")
    parent_fs = store.fs
    assert store.read_range("obj", 0, 2) == b"01"  # the parent's client is live when the child starts
    ctx = multiprocessing.get_context(method)
    _INHERITED[:] = [parent_fs]
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        pid, fs_pid, data = pool.submit(_use_store, store, "obj").result()
        assert pid != os.getpid() and fs_pid == pid
        assert data == b"1234"
        if method == "fork":
            # Why the store re-creates it: the inherited fsspec file system itself refuses to work.
            message = pool.submit(_use_inherited_fs, f"{store.bucket}/{store._key('obj')}").result()
            assert "fork-safe" in message
    assert store.fs is parent_fs  # the parent keeps its own
    assert store.read_range("obj", 8, 2) == b"89"


def test_a_worker_without_the_connection_gets_it_from_connection_env(s3_prefix: str, s3_server) -> None:
    """A process that cannot ask Airflow for the connection (a worker of a task) reaches the bucket with
    the environment the task process hands it, and fails clearly without."""
    import subprocess
    import sys

    store = store_for(s3_prefix)
    store.write_bytes("obj", b"payload")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")}
    code = "import sys; from airflow_resnet_prep.storage import store_for; print(store_for(sys.argv[1]).read_bytes('obj'))"
    without = subprocess.run([sys.executable, "-c", code, s3_prefix], env=env, capture_output=True, text=True)
    assert without.returncode != 0
    assert f"the Airflow connection {s3_server.conn_id!r} is not defined here" in without.stderr
    assert "amazonaws.com" not in without.stderr  # no quiet fallback to AWS and default credentials
    extra = store.connection_env()
    assert list(extra) == [f"AIRFLOW_CONN_{s3_server.conn_id.upper()}"]
    with_env = subprocess.run(
        [sys.executable, "-c", code, s3_prefix], env=env | extra, capture_output=True, text=True
    )
    assert with_env.returncode == 0, with_env.stderr[-2000:]
    assert with_env.stdout.strip().endswith("b'payload'")
    assert s3_server.secret_key not in with_env.stdout + with_env.stderr  # never printed
