"""The storage seam on a local folder and on a real S3 server alike: one set of tests, both stores.

Ranged reads are exact, coalescing keeps the number of requests (counted from the HTTP client's own
events on S3, from the reads on a local disk) and the bytes fetched within a bound when indexing a tar's
headers (with the package's tar indexer) and when reading a unit's images, and an object under a final
key is always complete, even when the writer's block raises.
"""

from __future__ import annotations

import gc
import math
import os
import random
from pathlib import Path

import pytest

from airflow_resnet_prep.catalog.build import build_split_catalog
from airflow_resnet_prep.sources.tarindex import iter_tar
from airflow_resnet_prep.storage import (
    LocalStore,
    Multipart,
    ObjectNotFoundError,
    StorageError,
    Store,
    coalesce,
    store_for,
)
from airflow_resnet_prep.storage.base import FREE_GAP, MAX_REQUEST, MAX_WASTE

GET = {"local": "pread", "s3": "GetObject"}  # one positioned read / one HTTP GET


def kind(store: Store) -> str:
    if isinstance(store, LocalStore):
        return "local"
    return "s3" if store.url.startswith("s3://") else "gcs"


def open_uploads(store: Store) -> list:
    """Open multipart uploads: only a store that has them (S3) can leave one."""
    return store.list_uploads() if isinstance(store, Multipart) else []


def reads(store: Store) -> int:
    """Requests that fetched bytes (GETs on S3; preads or reads on a local disk)."""
    r = store.stats.requests
    return r.get("GetObject", 0) + r.get("pread", 0) + r.get("read", 0)


# -- plain operations ----------------------------------------------------------------------------------------
def test_write_read_size_exists_list_delete(store: Store) -> None:
    data = os.urandom(100_000)
    store.write_bytes("a/b/blob.bin", data)
    store.write_bytes("a/other.txt", b"x")
    store.write_bytes("top.json", b"{}")
    assert store.read_bytes("a/b/blob.bin") == data
    assert store.size("a/b/blob.bin") == len(data)
    assert store.exists("a/b/blob.bin") and not store.exists("a/b/missing")
    assert [(o.key, o.size) for o in store.list()] == [
        ("a/b/blob.bin", len(data)),
        ("a/other.txt", 1),
        ("top.json", 2),
    ]
    assert [o.key for o in store.list("a")] == ["a/b/blob.bin", "a/other.txt"]
    store.delete("a/other.txt")
    store.delete("a/other.txt")  # absent: no error
    assert not store.exists("a/other.txt")
    with pytest.raises(ObjectNotFoundError, match="missing"):
        store.size("missing")
    with pytest.raises(FileNotFoundError):  # ObjectNotFoundError is one
        store.read_range("missing", 0, 10)
    assert store.uri("a/b") == store.url + "/a/b"
    assert "@" not in store.url  # the connection id is not part of the URL handed to XCom or logs


def test_keys_cannot_leave_the_root(store: Store) -> None:
    for bad in ("../x", "a/../../x", "/etc/passwd"):
        with pytest.raises(ValueError, match="invalid storage key"):
            store.write_bytes(bad, b"x")


def test_read_range_is_exact_and_one_request(store: Store) -> None:
    data = os.urandom(1 << 20)
    store.write_bytes("blob", data)
    store.stats.reset()
    assert store.read_range("blob", 12345, 512) == data[12345 : 12345 + 512]
    assert store.read_range("blob", 0, 1) == data[:1]
    assert store.read_range("blob", len(data) - 7, 7) == data[-7:]
    assert store.read_range("blob", 10, 0) == b""
    snap = store.stats.snapshot()
    assert reads(store) == 3, snap
    assert snap["bytes_read"] == 512 + 1 + 7, snap  # no read-ahead
    with pytest.raises(StorageError, match=r"wanted 100 bytes at offset .*1048526"):
        store.read_range("blob", len(data) - 50, 100)


def test_read_ranges_returns_ranges_in_the_order_given(store: Store) -> None:
    data = os.urandom(3 << 20)
    store.write_bytes("blob", data)
    rng = random.Random(1)
    ranges = [(rng.randrange(0, len(data) - 5000), rng.randrange(0, 5000)) for _ in range(300)]
    ranges += [(0, 0), (100, 50), (100, 50), (120, 10)]  # empty, duplicate, overlapping
    got = store.read_ranges("blob", ranges, window_bytes=200_000)
    assert got == [data[o : o + n] for o, n in ranges]


# -- coalescing ----------------------------------------------------------------------------------------------
def test_coalesce_groups_close_ranges_within_the_request_limit() -> None:
    ranges = [(1000, 100), (0, 100), (150, 50), (5000, 10), (1_000_000, 10)]
    reqs = coalesce(ranges, max_gap=1000, max_request=10_000)
    assert [(r.start, r.end, sorted(r.members)) for r in reqs] == [
        (0, 1100, [0, 1, 2]),
        (5000, 5010, [3]),
        (1_000_000, 1_000_010, [4]),
    ]
    assert len(coalesce(ranges, max_gap=10**9, max_request=10**9, max_waste=None)) == 1
    # with the waste bound, (1,000,000, 10) is too far from 5,010 bytes of ranges to share their request
    assert len(coalesce(ranges, max_gap=10**9, max_request=10**9)) == 2
    assert len(coalesce(ranges, max_gap=0, max_request=10**9)) == 5
    big = [(i * 100, 100) for i in range(100)]  # 10,000 contiguous bytes, at most 2,500 per request
    assert [(r.start, r.end) for r in coalesce(big, max_gap=0, max_request=2500)] == [
        (0, 2500),
        (2500, 5000),
        (5000, 7500),
        (7500, 10000),
    ]
    assert coalesce([(0, 50_000)], max_request=10) == coalesce([(0, 50_000)])  # a big range stays whole
    with pytest.raises(ValueError):
        coalesce([(-1, 5)])


def _index(store: Store, key: str) -> list[tuple[str, int, int]]:
    """The catalog builder's walk of a train tar (outer tar of per-class tars), through the seam."""
    out = []
    with store.open_read(key) as fh:
        size = fh.seek(0, os.SEEK_END)  # the reader knows the size (one HEAD on S3)
        for member in iter_tar(fh, key, 0, size):
            if member.path.endswith(".tar"):
                for image in iter_tar(fh, member.path, start=member.offset, size=member.size):
                    out.append((f"{member.path}/{image.path}", image.offset, image.size))
            else:
                out.append((member.path, member.offset, member.size))
    return out


def test_indexing_a_tar_reads_few_requests(store: Store, sample) -> None:
    """Locally one 512-byte read per tar header (plus each tar's end marker); from a bucket, the sample's
    small class tars are read in a few blocks each (never a byte twice) and the outer tar by headers."""
    store.write_bytes("ILSVRC2012_img_train.tar", sample.train_tar.read_bytes())
    local = _index(LocalStore(sample.train_tar.parent), sample.train_tar.name)
    store.stats.reset()
    assert _index(store, "ILSVRC2012_img_train.tar") == local
    classes = len(sample.synsets)
    headers = len(local) + classes  # every image and every inner tar has one header
    snap = store.stats.snapshot()
    if kind(store) == "local":
        assert reads(store) == headers + classes + 1, snap  # + the end marker of each tar
        assert snap["bytes_read"] == 512 * reads(store), snap
        assert snap["bytes_read"] < sample.train_tar.stat().st_size / 20
        return
    assert sum(snap["requests"].values()) <= 1 + classes + 2 + 3 * classes, snap
    assert snap["bytes_read"] <= sample.train_tar.stat().st_size, snap
    if kind(store) == "s3":
        assert snap["requests"] == {"HeadObject": 1, "GetObject": reads(store)}, snap


@pytest.mark.parametrize("order", ["tar", "shuffled"])
def test_reading_a_units_images_coalesces_close_ranges(store: Store, sample, order: str) -> None:
    """A unit's images read with few large requests: those lying close together share one."""
    store.write_bytes("val.tar", sample.val_tar.read_bytes())
    catalog = build_split_catalog("val", sample.val_tar)
    refs = list(catalog.images)
    if order == "shuffled":
        random.Random(0).shuffle(refs)
    ranges = [(r.offset, r.size) for r in refs]
    expected = [sample.val_tar.read_bytes()[o : o + n] for o, n in ranges]
    store.stats.reset()
    window = 1 << 20
    got = store.read_ranges("val.tar", ranges, window_bytes=window)
    assert got == expected
    snap = store.stats.snapshot()
    if kind(store) == "local":
        assert reads(store) == len(ranges)  # local disk: one pread per image, nothing extra
        assert snap["bytes_read"] == sum(n for _, n in ranges)
        return
    # Tar members are 512-byte headers apart: all of a window's images coalesce into one request per
    # MAX_REQUEST of span; windows cut the unit into about total / window pieces.
    total = sum(n for _, n in ranges)
    span = max(o + n for o, n in ranges) - min(o for o, _ in ranges)
    windows = math.ceil(total / window) + 1
    bound = windows * (math.ceil(span / MAX_REQUEST) + 1)
    assert reads(store) <= bound, (snap, bound)
    assert reads(store) < len(ranges) / 4, snap
    # in tar order the gaps are the members' headers and padding: at most 1,023 bytes each
    fetched_bound = total + 1023 * len(ranges) if order == "tar" else windows * span
    assert snap["bytes_read"] <= fetched_bound, snap


def _synthetic_tar(path: Path, members: int, seed: int = 0) -> list[tuple[int, int]]:
    """A flat tar of ``members`` random "images" of 20-60 kB (ImageNet's are ~110 kB); their ranges."""
    import io
    import tarfile

    rng = random.Random(seed)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for i in range(members):
            data = rng.randbytes(rng.randrange(20_000, 60_000))
            info = tarfile.TarInfo(f"ILSVRC2012_val_{i + 1:08d}.JPEG")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with open(path, "rb") as fh:
        return [(m.offset, m.size) for m in iter_tar(fh, str(path))]


def test_measured_requests_for_a_unit_in_tar_order_and_shuffled(s3_prefix: str, tmp_path: Path) -> None:
    """The numbers for the report: a 400-image tar (16 MB), a unit of 300 images in tar order (as
    validation shards are) and one of 100 images drawn at random (as train shards are)."""
    store = store_for(s3_prefix)
    tar = tmp_path / "val.tar"
    ranges = _synthetic_tar(tar, 400)
    blob = tar.read_bytes()
    store.write_bytes("val.tar", blob)
    units = {"tar order": ranges[50:350], "shuffled": random.Random(3).sample(ranges, 100)}
    for name, unit in units.items():
        store.stats.reset()
        got = store.read_ranges("val.tar", unit)
        assert got == [blob[o : o + n] for o, n in unit]
        snap = store.stats.snapshot()
        wanted = sum(n for _, n in unit)
        print(f"{name}: {len(unit)} images, {wanted:,} bytes wanted: {snap}")
        gets = snap["requests"]["GetObject"]
        if name == "tar order":  # contiguous: one request per window (64 MiB) or MAX_REQUEST (16 MiB)
            assert gets <= math.ceil(wanted / MAX_REQUEST) + 1
            assert snap["bytes_read"] <= wanted + 1023 * len(unit)
        else:  # 100 of 400 images: gaps average 3 images (~120 kB), bounded by MAX_WASTE: fewer
            # requests than images, at most (1 + MAX_WASTE) x the bytes wanted
            assert gets <= 0.75 * len(unit)
            assert snap["bytes_read"] <= (1 + MAX_WASTE) * wanted + FREE_GAP * len(unit)
    # with MAX_GAP alone (no waste bound), the shuffled unit is a request or two reading most of the tar
    store.stats.reset()
    store.read_ranges("val.tar", units["shuffled"], max_waste=None)
    assert store.stats.requests["GetObject"] <= math.ceil(len(blob) / MAX_REQUEST) + 1
    # with coalescing off, each image is its own request: what coalescing saves
    store.stats.reset()
    store.read_ranges("val.tar", units["shuffled"], max_gap=0)
    assert store.stats.requests["GetObject"] == 100


@pytest.mark.parametrize("where", ["s3", "gcs"])  # local reads are plain preads, one after the other
def test_unit_reads_keep_several_requests_in_flight(where: str, request: pytest.FixtureRequest) -> None:
    """Ranges far apart (no coalescing) still go out concurrently: the pool runs them in parallel."""
    store = store_for(request.getfixturevalue(f"{where}_prefix"))
    data = os.urandom(4 << 20)
    store.write_bytes("blob", data)
    import threading
    import time

    inflight = peak = 0
    lock = threading.Lock()
    original = store.read_range

    def slow(key: str, offset: int, size: int) -> bytes:
        nonlocal inflight, peak
        with lock:
            inflight += 1
            peak = max(peak, inflight)
        time.sleep(0.05)
        try:
            return original(key, offset, size)
        finally:
            with lock:
                inflight -= 1

    store.read_range = slow  # type: ignore[method-assign]
    ranges = [(i * (2 << 20) // 16, 100) for i in range(16)]
    assert store.read_ranges("blob", ranges, max_gap=0, concurrency=8) == [data[o : o + n] for o, n in ranges]
    assert peak >= 4


# -- atomic writes -------------------------------------------------------------------------------------------
class Boom(Exception):
    pass


@pytest.mark.parametrize("size", [1000, 12 << 20])  # below one part, and a multipart upload on S3
def test_writer_block_raising_leaves_nothing_under_the_key(store: Store, size: int, monkeypatch) -> None:
    from airflow_resnet_prep.storage import objectstore

    monkeypatch.setattr(objectstore, "WRITER_PART", 5 << 20)
    with pytest.raises(Boom), store.writer("out/shard") as fh:
        fh.write(os.urandom(size))
        raise Boom
    # gcsfs's file, discarded before its first block, would upload its buffer when collected: collect it.
    del fh
    gc.collect()
    assert not store.exists("out/shard")
    assert store.list("out") == []
    assert open_uploads(store) == []  # the multipart upload was aborted, not left open


def test_writer_block_raising_keeps_the_previous_object(store: Store) -> None:
    store.write_bytes("out/shard", b"complete old content")
    with pytest.raises(Boom), store.writer("out/shard") as fh:
        fh.write(b"half of the new")
        raise Boom
    assert store.read_bytes("out/shard") == b"complete old content"


@pytest.mark.parametrize("size", [0, 1000, 12 << 20 | 123])
def test_writer_commits_whole_objects(store: Store, size: int, monkeypatch) -> None:
    from airflow_resnet_prep.storage import objectstore

    monkeypatch.setattr(objectstore, "WRITER_PART", 5 << 20)
    data = os.urandom(size)
    with store.writer("out/shard") as fh:
        for start in range(0, size, 777_777):
            fh.write(data[start : start + 777_777])
        assert fh.tell() == size
    assert store.read_bytes("out/shard") == data
    assert open_uploads(store) == []
    if kind(store) == "s3" and size > 5 << 20:
        assert store.stats.requests["UploadPart"] == 3  # 5 + 5 + 2 MiB


def test_write_bytes_above_the_single_put_limit_streams(store: Store, monkeypatch) -> None:
    from airflow_resnet_prep.storage import objectstore

    monkeypatch.setattr(objectstore, "SINGLE_PUT_MAX", 1 << 20)
    monkeypatch.setattr(objectstore, "WRITER_PART", 5 << 20)
    data = os.urandom(11 << 20)
    store.write_bytes("big", data)
    assert store.read_bytes("big") == data


def test_local_store_exposes_the_path_for_fast_paths(tmp_path: Path, s3_prefix: str) -> None:
    local = store_for(str(tmp_path))
    assert local.local_path("a/b") == tmp_path / "a" / "b"
    assert store_for(s3_prefix).local_path("a/b") is None


def test_stores_of_one_connection_register_the_request_counters_once(s3_prefix: str) -> None:
    """Stores of one connection share fsspec's cached client; each new store used to add two more
    event handlers to it, so every request called them all. Counting still reaches every store."""
    stores = [store_for(s3_prefix) for _ in range(6)]
    for store in stores:
        store.write_bytes("counted", b"x")  # each store makes (or reuses) its client
    client = stores[0].fs.s3
    assert all(store.fs.s3 is client for store in stores)
    # botocore keeps handlers in a prefix trie (private): the ones for this event name, ours included.
    handlers = list(client.meta.events._emitter._handlers.prefix_search("before-send.s3.GetObject"))
    ours = [
        h for h in handlers if getattr(h, "func", None) is not None and h.func.__name__ == "_count_request"
    ]
    assert len(ours) == 1
    for store in stores:
        store.stats.reset()
    assert stores[-1].read_bytes("counted") == b"x"
    assert all(store.stats.requests["GetObject"] == 1 for store in stores)
