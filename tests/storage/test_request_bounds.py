"""Requests and bytes fetched from a bucket (SeaweedFS S3 on 127.0.0.1), with asserted bounds.

Sources in a bucket are request-bound (each request costs milliseconds of client and server CPU), so:

- indexing a tar of small members reads blocks of the tar holding many headers each: about
  ``tar size / _MAX_AHEAD`` requests plus a few, never more bytes than the tar (plus 512 per request);
  the old one-GET-per-header walk fails these bounds;
- a tar of large members still costs one 512-byte GET per header (its data is skipped);
- a nested tar is not read through by the outer walk (its own indexing reads it): the train layout
  fetches each byte at most once;
- a unit's images are coalesced with bounded waste: fetched bytes <= (1 + MAX_WASTE) x image bytes
  (plus FREE_GAP per image), with fewer requests than images; without the waste bound the same shuffled
  unit fetches more than that bound allows.
"""

from __future__ import annotations

import io
import random
import tarfile

import pytest

from airflow_resnet_prep.catalog.build import build_split_catalog
from airflow_resnet_prep.catalog.model import ImageReader
from airflow_resnet_prep.sources import tarindex
from airflow_resnet_prep.sources.tarindex import iter_tar
from airflow_resnet_prep.storage import store_for
from airflow_resnet_prep.storage.base import FREE_GAP, MAX_WASTE


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _images(
    n: int, low: int, high: int, seed: int = 0, prefix: str = "ILSVRC2012_val_"
) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    return [(f"{prefix}{i + 1:08d}.JPEG", rng.randbytes(rng.randrange(low, high))) for i in range(n)]


def _local_index(blob: bytes) -> list[tuple[str, int, int]]:
    return [tuple(m) for m in iter_tar(io.BytesIO(blob), "local", 0, len(blob))]  # type: ignore[arg-type]


def _remote_index(store, key: str, size: int) -> list[tuple[str, int, int]]:
    with store.open_read(key) as fh:  # block_size=0: every read is one ranged GET
        return [tuple(m) for m in iter_tar(fh, key, 0, size)]


def test_indexing_a_tar_of_small_members_reads_blocks_not_headers(s3_prefix: str) -> None:
    """3,000 members of 4-12 KB (24 MB): the old walk sent 3,001 GETs; now ~tar/4 MiB plus the ramp."""
    store = store_for(s3_prefix)
    blob = _tar(_images(3000, 4_000, 12_000))
    store.write_bytes("small.tar", blob)
    store.stats.reset()
    assert _remote_index(store, "small.tar", len(blob)) == _local_index(blob)
    snap = store.stats.snapshot()
    gets = snap["requests"]["GetObject"]
    print(f"small members: 3,000 members, {len(blob):,} byte tar: {snap}")
    ramp = 5  # 64 KiB, then at least 4 members' worth, growing 4x at a time up to _MAX_AHEAD
    assert gets <= len(blob) / tarindex._MAX_AHEAD + ramp, snap
    assert gets < 3000 / 50, snap  # one GET per header would be 3,001
    assert snap["bytes_read"] <= len(blob) + 512 * gets, snap


def test_indexing_a_tar_of_large_members_reads_headers_only(s3_prefix: str) -> None:
    """Members larger than _SMALL_MEMBER are skipped: one 512-byte GET per header, plus the first read."""
    store = store_for(s3_prefix)
    members = _images(6, 2_000_000, 3_000_000, seed=1)
    blob = _tar(members)
    store.write_bytes("large.tar", blob)
    store.stats.reset()
    assert _remote_index(store, "large.tar", len(blob)) == _local_index(blob)
    snap = store.stats.snapshot()
    gets = snap["requests"]["GetObject"]
    print(f"large members: 6 members, {len(blob):,} byte tar: {snap}")
    assert gets <= len(members) + 1, snap  # every header after the first, and the end marker
    assert snap["bytes_read"] <= tarindex._FIRST_READ + 512 * len(members), snap
    assert snap["bytes_read"] < len(blob) / 100, snap


def test_indexing_nested_tars_reads_each_byte_once_at_most(s3_prefix: str, tmp_path) -> None:
    """A train tar of 8 small class tars (< _SMALL_MEMBER each): the outer walk skips their data, each
    class tar's own indexing reads it in a block or two."""
    classes = [f"n{i:08d}" for i in range(8)]
    blob = _tar(
        [
            (f"{synset}.tar", _tar(_images(40, 8_000, 16_000, seed=i, prefix=f"{synset}_")))
            for i, synset in enumerate(classes)
        ]
    )
    store_for(s3_prefix).write_bytes("train.tar", blob)
    (tmp_path / "train.tar").write_bytes(blob)
    local = build_split_catalog("train", tmp_path / "train.tar")
    store = store_for(f"{s3_prefix}/train.tar")
    catalog = build_split_catalog("train", f"{s3_prefix}/train.tar", store=store)
    assert [(r.member, r.offset, r.size) for r in catalog.images] == [
        (r.member, r.offset, r.size) for r in local.images
    ]
    snap = store.stats.snapshot()
    print(f"nested: 8 class tars of 40 images, {len(blob):,} byte tar: {snap}")
    gets = snap["requests"].get("GetObject", 0)
    headers = len(catalog) + 2 * len(classes) + 1  # the old walk: one GET per header and end marker
    assert gets <= len(classes) + 2 + 3 * len(classes), snap  # outer headers, then <= 3 per class tar
    # (64 KiB, then 4 x a member's size, then 4 x that: a class tar of 40 images of 8-16 KB)
    assert gets < headers / 8, snap
    assert snap["bytes_read"] <= len(blob), snap


@pytest.fixture(scope="module")
def val_in_bucket(s3_server):
    """A flat val-like tar of 600 images of 20-60 KB (24 MB) in the bucket, and its catalog."""
    import secrets

    members = _images(600, 20_000, 60_000, seed=2)
    blob = _tar(members)
    uri = f"s3://{s3_server.conn_id}@{s3_server.bucket}/t/bounds-{secrets.token_hex(3)}/val.tar"
    store_for(uri).write_bytes("", blob)
    catalog = build_split_catalog("val", uri)
    assert len(catalog) == 600
    return blob, catalog


@pytest.mark.parametrize("order", ["tar order", "shuffled"])
def test_converting_a_unit_fetches_bounded_bytes_with_few_requests(val_in_bucket, order: str) -> None:
    """A unit of 150 of the 600 images, as a converter reads it: in tar order (val shards) or drawn at
    random (train shards, a quarter of the tar: gaps of ~3 images between neighbours)."""
    blob, catalog = val_in_bucket
    refs = list(catalog.images)
    unit = refs[100:250] if order == "tar order" else random.Random(5).sample(refs, 150)
    wanted = sum(r.size for r in unit)
    with ImageReader(catalog.sources) as reader:
        got = [data for _, data in reader.iter_read(unit)]
        stats = reader.stats()
    assert got == [blob[r.offset : r.offset + r.size] for r in unit]
    print(f"{order}: {len(unit)} images, {wanted:,} bytes: {stats}")
    assert stats["bytes_read"] <= (1 + MAX_WASTE) * wanted + FREE_GAP * len(unit), stats
    if order == "tar order":  # headers between neighbours only: a few large requests
        assert stats["requests"] <= 4, stats
        assert stats["bytes_read"] <= wanted + 1023 * len(unit), stats
    else:
        assert stats["requests"] <= 0.75 * len(unit), stats
        assert stats["bytes_read"] <= 1.6 * wanted, stats


def test_the_waste_bound_is_what_keeps_a_shuffled_unit_small(val_in_bucket) -> None:
    """The same shuffled unit read with gaps bounded by MAX_GAP alone (the old coalescing): more than
    the bound of the test above, so that bound can fail."""
    blob, catalog = val_in_bucket
    unit = random.Random(5).sample(list(catalog.images), 150)
    wanted = sum(r.size for r in unit)
    store = store_for(catalog.sources[0].path)
    store.stats.reset()
    got = store.read_ranges("", [(r.offset, r.size) for r in unit], max_waste=None)
    assert got == [blob[r.offset : r.offset + r.size] for r in unit]
    snap = store.stats.snapshot()
    print(f"shuffled, MAX_GAP only: {len(unit)} images, {wanted:,} bytes: {snap}")
    assert snap["bytes_read"] > 1.6 * wanted, snap
