"""Assemblies: one object built from numbered pieces written in any order by any process, on a local
disk (piece files joined in the kernel), S3 (a multipart upload on SeaweedFS) and GCS (piece objects
joined by a tree of ``compose`` calls on fake-gcs-server). The key appears only when ``complete``
succeeds; a failed piece, a bad complete and an abort leave nothing behind."""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest

from airflow_resnet_prep.storage import (
    Assembly,
    LocalStore,
    Part,
    StorageError,
    Store,
    store_for,
)

MIB = 1 << 20
KEY = "recordio/train.rec"
SCRATCH = "recordio/.pieces"


def kind(store: Store) -> str:
    if isinstance(store, LocalStore):
        return "local"
    return "s3" if store.url.startswith("s3://") else "gcs"


def sizes_for(store: Store, count: int = 3) -> dict[int, int]:
    """Piece sizes the store allows: on S3 every piece but the last is at least 5 MiB."""
    if kind(store) == "s3":
        return {n: (5 * MIB + n if n < count else 1234) for n in range(1, count + 1)}
    return {n: 1000 * n + 7 for n in range(1, count + 1)}


def piece_bytes(number: int, size: int) -> bytes:
    """Deterministic content of piece ``number``, so the parent can check the assembled object."""
    block = bytes([number % 251]) * 4093 + number.to_bytes(4, "little")
    return (block * (size // len(block) + 1))[:size]


def write_piece(asm: Assembly, number: int, size: int) -> tuple[Part, int]:
    """Runs in another process, which gets the assembly by pickle only."""
    data = piece_bytes(number, size)
    with asm.piece_writer(number) as sink:
        sink.write(data[: size // 3])
        sink.writelines([data[size // 3 : size // 2], memoryview(data)[size // 2 :]])
    return sink.part, os.getpid()


def write_piece_by_token(uri: str, key: str, scratch: str, token: str, number: int, size: int) -> Part:
    """Runs in a spawned process that knows the assembly by plain strings only (a done record)."""
    asm = store_for(uri).resume_assembly(key, scratch, token)
    return write_piece(asm, number, size)[0]


def leftovers(store: Store, asm: Assembly) -> list[str]:
    """What the assembly still holds: open uploads on S3, anything under the scratch prefix elsewhere."""
    if kind(store) == "s3":
        return [u.upload_id for u in store.list_uploads()]
    return [o.key for o in store.list(asm.scratch)]


def test_pieces_from_other_processes_in_any_order_give_the_concatenation(store: Store) -> None:
    asm = store.begin_assembly(KEY, SCRATCH)
    sizes = sizes_for(store)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(write_piece, asm, n, sizes[n]) for n in (3, 1, 2)]
        results = [f.result() for f in futures]
    assert {pid for _, pid in results} - {os.getpid()}  # really other processes
    parts = [part for part, _ in results]
    assert sorted(p.size for p in parts) == sorted(sizes.values())
    assert not store.exists(KEY)  # nothing under the key before complete
    # The parts travel as JSON (a done record, XCom) and come back as lists.
    parts = json.loads(json.dumps(parts))
    store.stats.reset()
    asm.complete(parts)
    expected = b"".join(piece_bytes(n, sizes[n]) for n in (1, 2, 3))
    assert store.size(KEY) == len(expected)
    assert store.read_bytes(KEY) == expected
    assert leftovers(store, asm) == []
    requests = store.stats.requests
    if kind(store) == "s3":  # one ListParts (sizes), one CompleteMultipartUpload
        assert requests["ListParts"] == 1 and requests["CompleteMultipartUpload"] == 1
    if kind(store) == "gcs":  # one compose: 3 pieces fit in one call
        assert requests["ComposeObject"] == 1


def test_resume_by_token_in_a_spawned_process(store: Store) -> None:
    asm = store.begin_assembly(KEY, SCRATCH)
    sizes = sizes_for(store, 2)
    uri = store.url if kind(store) == "local" else _uri_with_conn(store)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        child = pool.submit(write_piece_by_token, uri, KEY, SCRATCH, asm.token, 2, sizes[2])
        first, _ = write_piece(asm, 1, sizes[1])
        second = child.result()
    assert second == Part(*second) and second.number == 2
    again = store.resume_assembly(KEY, SCRATCH, asm.token)
    again.complete([second, first])  # any order
    assert store.read_bytes(KEY) == piece_bytes(1, sizes[1]) + piece_bytes(2, sizes[2])
    assert leftovers(store, asm) == []


def _uri_with_conn(store: Store) -> str:
    scheme, rest = store.url.split("://", 1)
    return f"{scheme}://{store.conn_id}@{rest}"


def test_an_exception_in_the_block_stores_nothing_and_a_rewrite_replaces(store: Store) -> None:
    asm = store.begin_assembly(KEY, SCRATCH)
    sizes = sizes_for(store, 2)
    first, _ = write_piece(asm, 1, sizes[1])
    with pytest.raises(RuntimeError, match="worker died"):
        with asm.piece_writer(2) as sink:
            sink.write(piece_bytes(2, sizes[2]))
            raise RuntimeError("worker died")
    with pytest.raises(StorageError, match="not stored yet"):
        _ = sink.part
    if kind(store) == "s3":
        assert [p.number for p in store.list_parts(KEY, asm.token)] == [1]
    else:
        assert [o.key for o in store.list(SCRATCH)] == [asm.piece_key(1)]  # no temporary file either
    lost = Part(2, "", sizes[2])
    with pytest.raises(StorageError, match=rf"{KEY}.*piece 2 is missing"):
        asm.complete([first, lost])
    assert not store.exists(KEY)
    # Writing piece 1 again (a retried unit) replaces it.
    redo = piece_bytes(9, sizes[1])
    with asm.piece_writer(1) as sink:
        sink.write(redo)
    second, _ = write_piece(asm, 2, sizes[2])
    asm.complete([sink.part, second])
    assert store.read_bytes(KEY) == redo + piece_bytes(2, sizes[2])
    assert leftovers(store, asm) == []


def test_complete_refuses_a_missing_piece_or_a_wrong_size(store: Store) -> None:
    asm = store.begin_assembly(KEY, SCRATCH)
    sizes = sizes_for(store, 3)
    parts = [write_piece(asm, n, sizes[n])[0] for n in (1, 3)]
    with pytest.raises(StorageError, match=rf"{store.uri(KEY)}.*piece 2 is missing"):
        asm.complete([*parts, Part(2, "", sizes[2])])
    assert not store.exists(KEY)
    wrong = Part(3, parts[1].etag, parts[1].size + 1)
    with pytest.raises(StorageError, match=rf"{store.uri(KEY)}.*piece 3 holds {sizes[3]} bytes"):
        asm.complete([parts[0], wrong])
    with pytest.raises(StorageError, match=rf"{store.uri(KEY)}.*no pieces"):
        asm.complete([])
    assert not store.exists(KEY)
    # The failures kept the pieces: the right parts still complete.
    asm.complete(parts)
    assert store.read_bytes(KEY) == piece_bytes(1, sizes[1]) + piece_bytes(3, sizes[3])
    assert leftovers(store, asm) == []


def test_abort_frees_everything(store: Store) -> None:
    asm = store.begin_assembly(KEY, SCRATCH)
    sizes = sizes_for(store, 2)
    for n in (1, 2):
        write_piece(asm, n, sizes[n])
    assert leftovers(store, asm)
    asm.abort()
    asm.abort()  # gone already: no error
    assert leftovers(store, asm) == []
    assert not store.exists(KEY)
    if kind(store) == "local":
        assert not store.local_path(SCRATCH).joinpath(asm.token).exists()


def test_abort_assemblies_frees_all_but_the_kept_of_that_key_only(store: Store) -> None:
    sizes = sizes_for(store, 1)  # one piece, the last: any size goes
    kept, *stale = [store.begin_assembly(KEY, SCRATCH) for _ in range(3)]
    other = store.begin_assembly("recordio/val.rec", SCRATCH)  # same scratch, another key
    similar = store.begin_assembly(KEY + ".old", SCRATCH)  # a key KEY is a prefix of
    parts = {asm.token: write_piece(asm, 1, sizes[1])[0] for asm in (kept, *stale, other, similar)}
    assert store.abort_assemblies(KEY, SCRATCH, keep=[kept.token]) == 2
    assert store.abort_assemblies(KEY, SCRATCH, keep=[kept.token]) == 0
    for asm in stale:
        with pytest.raises(StorageError, match=KEY):
            asm.complete([parts[asm.token]])
    for asm in (kept, other, similar):
        asm.complete([parts[asm.token]])
        assert store.read_bytes(asm.key) == piece_bytes(1, sizes[1])
    if kind(store) == "s3":
        assert store.list_uploads() == []
    else:
        assert store.list(SCRATCH) == []


def test_piece_numbers_outside_the_range_are_refused(store: Store) -> None:
    asm = store.begin_assembly(KEY, SCRATCH)
    for bad in (0, asm.max_pieces + 1):
        with pytest.raises(ValueError, match="outside"):
            with asm.piece_writer(bad):
                pass
    with pytest.raises(StorageError, match="given twice"):
        asm.complete([Part(1, "", 1), Part(1, "", 1)])
    asm.abort()


# -- store-specific -------------------------------------------------------------------------------------------
def test_local_pieces_are_files_in_the_scratch_folder(tmp_path: Path) -> None:
    store = store_for(str(tmp_path / "data"))
    asm = store.begin_assembly(KEY, SCRATCH)
    assert asm.min_piece == 0
    with asm.piece_writer(2) as sink:
        sink.write(b"world")
        # in place, under a temporary name until the block ends
        assert not (tmp_path / "data" / SCRATCH / asm.token / "00002").exists()
    assert (tmp_path / "data" / SCRATCH / asm.token / "00002").read_bytes() == b"world"
    assert sink.part == Part(2, "", 5)
    with asm.piece_writer(1) as first:
        first.write(b"hello ")
    asm.complete([first.part, sink.part])
    assert (tmp_path / "data" / KEY).read_bytes() == b"hello world"
    assert not (tmp_path / "data" / SCRATCH / asm.token).exists()
    assert sorted(p.name for p in (tmp_path / "data" / "recordio").iterdir()) == [".pieces", "train.rec"]


def test_s3_spools_pieces_to_tmpdir_and_keeps_the_min_piece_rule(
    s3_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_for(s3_prefix)
    asm = store.begin_assembly(KEY, SCRATCH)
    assert (asm.min_piece, asm.max_pieces) == (5 * MIB, 10_000)
    assert [u.upload_id for u in store.list_uploads()] == [asm.token]  # the token is the UploadId
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # what TMPDIR sets
    store.stats.reset()
    with asm.piece_writer(1) as sink:
        sink.write(b"a" * 100)
        # an anonymous file in the spool folder (gone with the process whatever happens), not memory
        target = os.readlink(f"/proc/self/fd/{sink._fh.fileno()}")
        assert target.startswith(str(spool))
    assert store.stats.requests["UploadPart"] == 1  # one request per piece
    assert list(spool.iterdir()) == []
    second, _ = write_piece(asm, 2, 100)
    with pytest.raises(StorageError, match=rf"{store.uri(KEY)}.*pieces \[1\] are below 5 MiB"):
        asm.complete([sink.part, second])
    assert not store.exists(KEY)
    assert store.abort_assemblies(KEY, SCRATCH) == 1
    assert store.list_uploads() == []


def test_s3_a_retried_piece_upload_sends_the_whole_piece_again(s3_prefix: str) -> None:
    """s3fs retries a failed call with the same arguments, the spooled file by then read to its end: the
    store rewinds it before every attempt."""

    store = store_for(s3_prefix)
    asm = store.begin_assembly(KEY, SCRATCH)
    failures: list[str] = []

    def fail_once(**_: object) -> None:
        if not failures:
            failures.append("timed out")
            raise TimeoutError("timed out after the body was sent")

    events = store.fs.s3.meta.events
    events.register("after-call.s3.UploadPart", fail_once, unique_id="test-fail-once")
    try:
        first, _ = write_piece(asm, 1, 5 * MIB)
    finally:
        events.unregister("after-call.s3.UploadPart", unique_id="test-fail-once")
    assert failures and store.stats.requests["UploadPart"] == 2
    second, _ = write_piece(asm, 2, 10)
    asm.complete([first, second])
    assert store.read_bytes(KEY) == piece_bytes(1, 5 * MIB) + piece_bytes(2, 10)


def test_gcs_compose_tree_of_70_pieces_leaves_no_intermediate(gcs_prefix: str) -> None:
    store = store_for(gcs_prefix)
    asm = store.begin_assembly(KEY, SCRATCH)
    sizes = {n: 50 + (n * 37) % 200 for n in range(1, 71)}
    with ThreadPoolExecutor(8) as pool:
        parts = list(pool.map(lambda n: write_piece(asm, n, sizes[n])[0], reversed(sizes)))
    assert len(store.list(SCRATCH)) == 70
    store.stats.reset()
    asm.complete(parts)
    # 70 pieces: 3 intermediate objects (32 + 32 + 6), then the final compose of those 3
    assert store.stats.requests["ComposeObject"] == 4
    assert store.read_bytes(KEY) == b"".join(piece_bytes(n, sizes[n]) for n in sorted(sizes))
    assert store.list(SCRATCH) == []
    assert [o.key for o in store.list()] == [KEY]
