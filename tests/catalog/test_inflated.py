"""Working copies of Hugging Face's shards (``catalog/inflated.py``): each shard is inflated once, at fetch,
into a plain tar of the data_dir that every later step reads; a copy is reused only when whole and made
from the shard as it is now; a damaged shard leaves none; ``inflate_compressed_sources=false`` reads the
shards in place as before. Reads of the shards are counted on the real files (every read of a local
source goes through ``LocalStore.open_read``)."""

from __future__ import annotations

import gzip
import shutil
from collections import Counter
from pathlib import Path

import pytest

from airflow_resnet_prep.catalog.fetch import fetch
from airflow_resnet_prep.catalog.inflated import WorkingCopies
from airflow_resnet_prep.catalog.members import TGZ
from airflow_resnet_prep.catalog.model import TAR, SplitCatalog
from airflow_resnet_prep.errors import SourceError
from airflow_resnet_prep.layout import FETCH_RECORD, INFLATED, DataDir, catalog_key
from airflow_resnet_prep.pipeline import run
from airflow_resnet_prep.sample_copies import write_copy
from airflow_resnet_prep.storage import LocalStore

SHARD_NAMES = [f"train_images_{n}.tar.gz" for n in range(5)] + ["val_images.tar.gz"]


class ShardReads:
    """How many times each shard was opened, and how many bytes were read from it."""

    def __init__(self) -> None:
        self.opens: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()

    def clear(self) -> None:
        self.opens.clear()
        self.bytes.clear()


@pytest.fixture
def shard_reads(monkeypatch) -> ShardReads:
    reads = ShardReads()
    original = LocalStore.open_read

    class Counted:
        def __init__(self, fh, name):
            self._fh, self._name = fh, name

        def read(self, n=-1):
            data = self._fh.read(n)
            reads.bytes[self._name] += len(data)
            return data

        def close(self):
            self._fh.close()

    def open_read(self, key="", block_size=0):
        fh = original(self, key, block_size)
        name = self.local_path(key).name
        if not name.endswith(".tar.gz"):
            return fh
        reads.opens[name] += 1
        return Counted(fh, name)

    monkeypatch.setattr(LocalStore, "open_read", open_read)
    return reads


@pytest.fixture
def hf(sample, tmp_path) -> Path:
    """A Hugging Face copy of the sample, private to the test (some tests damage it)."""
    dest = tmp_path / "hf"
    shutil.copytree(write_copy(sample, "huggingface"), dest)
    return dest


def params(data_dir: Path, copy: Path, implementation: str) -> dict:
    return {
        "data_dir": str(data_dir),
        "train_source": str(copy),
        "val_source": str(copy),
        "implementation": implementation,
        "workers": 1,
        "train_shards": 4,
        "val_shards": 2,
    }


def outputs(data_dir: Path) -> dict[str, bytes]:
    return {
        p.relative_to(data_dir).as_posix(): p.read_bytes()
        for folder in ("recordio", "tfrecords")
        if (data_dir / folder).is_dir()
        for p in sorted((data_dir / folder).iterdir())
    }


def test_each_shard_is_inflated_once_and_another_implementation_inflates_none(hf, tmp_path, shard_reads):
    run(params(tmp_path / "dd", hf, "nvidia"))
    read = {name: (shard_reads.opens[name], shard_reads.bytes[name]) for name in SHARD_NAMES}
    assert read == {name: (1, (hf / name).stat().st_size) for name in SHARD_NAMES}
    inflated = tmp_path / "dd" / INFLATED
    for name in SHARD_NAMES:  # each copy is the shard's whole uncompressed content
        assert (inflated / name[: -len(".gz")]).read_bytes() == gzip.decompress((hf / name).read_bytes())
    catalog = SplitCatalog.load(DataDir.of(tmp_path / "dd").store, catalog_key("train"))
    assert {s.kind for s in catalog.sources} == {TAR}
    assert [Path(s.path).parent for s in catalog.sources] == [inflated] * 5

    shard_reads.clear()
    run(params(tmp_path / "dd", hf, "reference"))
    assert not shard_reads.opens  # the copies are read: no shard is opened again
    assert outputs(tmp_path / "dd").keys() >= {"recordio/train.rec", "tfrecords/train-00000-of-00004"}


def test_without_working_copies_every_read_call_inflates_again(hf, tmp_path, shard_reads, monkeypatch):
    """The counter above can tell: read in place, each shard is inflated by fetch and again by the
    conversion's read call, and the outputs are those of the working copies."""
    run(params(tmp_path / "on", hf, "nvidia"))
    shard_reads.clear()
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__INFLATE_COMPRESSED_SOURCES", "false")
    run(params(tmp_path / "off", hf, "nvidia"))
    assert all(shard_reads.opens[name] >= 2 for name in SHARD_NAMES), shard_reads.opens
    assert not (tmp_path / "off" / INFLATED).exists()
    catalog = SplitCatalog.load(DataDir.of(tmp_path / "off").store, catalog_key("val"))
    assert [s.kind for s in catalog.sources] == [TGZ]
    off, on = outputs(tmp_path / "off"), outputs(tmp_path / "on")
    assert off == on and off


def test_the_option_turns_copies_off_and_on(hf, tmp_path, monkeypatch, shard_reads):
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__INFLATE_COMPRESSED_SOURCES", "false")
    fetch(tmp_path, str(hf), str(hf))
    assert not (tmp_path / INFLATED).exists()
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__INFLATE_COMPRESSED_SOURCES", "true")
    result = fetch(tmp_path, str(hf), str(hf))
    assert not result.reused  # the saved catalogs read the shards in place: made again, with copies
    assert sorted(p.name for p in (tmp_path / INFLATED).glob("*.tar")) == [
        n[:-3] for n in sorted(SHARD_NAMES)
    ]
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__INFLATE_COMPRESSED_SOURCES", "false")
    assert not fetch(tmp_path, str(hf), str(hf)).reused
    assert not list((tmp_path / INFLATED).iterdir())  # their space is given back


def test_a_whole_copy_is_reused_and_a_damaged_or_missing_one_made_again(hf, tmp_path, shard_reads):
    first = fetch(tmp_path, str(hf), str(hf))
    train = SplitCatalog.load(DataDir.of(tmp_path).store, catalog_key("train"))
    inflated = tmp_path / INFLATED
    good = (inflated / "train_images_1.tar").read_bytes()
    with open(inflated / "train_images_1.tar", "r+b") as fh:
        fh.truncate(len(good) - 512)  # damaged: shorter than recorded
    (inflated / "train_images_3.tar").unlink()
    shard_reads.clear()
    again = fetch(tmp_path, str(hf), str(hf))
    assert not again.reused  # the saved catalogs read a copy that is no longer whole
    assert dict(shard_reads.opens) == {"train_images_1.tar.gz": 1, "train_images_3.tar.gz": 1}
    assert (inflated / "train_images_1.tar").read_bytes() == good
    assert SplitCatalog.load(DataDir.of(tmp_path).store, catalog_key("train")).images == train.images
    assert again.fingerprints == first.fingerprints  # the provenance is the shards'

    shard_reads.clear()
    (tmp_path / FETCH_RECORD).unlink()  # catalogs made again: from the copies, no shard inflated
    assert not fetch(tmp_path, str(hf), str(hf)).reused
    assert not shard_reads.opens

    (hf / "val_images.tar.gz").touch()  # a shard rewritten (same bytes, new mtime): its copy is not trusted
    shard_reads.clear()
    fetch(tmp_path, str(hf), str(hf))
    assert dict(shard_reads.opens) == {"val_images.tar.gz": 1}


def test_a_copy_without_its_record_is_never_reused(hf, tmp_path, shard_reads):
    fetch(tmp_path, str(hf), str(hf))
    copies = WorkingCopies(DataDir.of(tmp_path).store.child(INFLATED))
    assert copies.finished("val_images.tar")
    (tmp_path / INFLATED / "val_images.tar.json").unlink()  # as when killed between the copy and its record
    assert not copies.finished("val_images.tar")
    shard_reads.clear()
    fetch(tmp_path, str(hf), str(hf))
    assert dict(shard_reads.opens) == {"val_images.tar.gz": 1}
    assert copies.finished("val_images.tar")


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_shard_is_named_and_leaves_no_copy(hf, tmp_path, damage):
    shard = hf / "train_images_2.tar.gz"
    data = bytearray(shard.read_bytes())
    if damage == "truncated":
        data = data[: len(data) * 2 // 3]
    else:
        data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(SourceError, match=r"train_images_2\.tar\.gz: (truncated|damaged)"):
        fetch(tmp_path, str(hf), str(hf))
    inflated = tmp_path / INFLATED
    assert not [
        p.name for p in inflated.iterdir() if p.name.startswith(("train_images_2", ".train_images_2"))
    ]
    assert not (tmp_path / FETCH_RECORD).exists()
