"""``verify`` of ``webdataset`` output: an intact copy passes (command line, and ``--decode``); each way a
copy goes wrong is named by file, and by sample or line where there is one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_resnet_prep.formats import wdstar
from airflow_resnet_prep.pipeline import run
from airflow_resnet_prep.verify import verify

SHARD = "webdataset/imagenet1k-train-0001.tar"


@pytest.fixture(scope="module")
def output(sample, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished webdataset data_dir (never modified: tests damage copies)."""
    data_dir = tmp_path_factory.mktemp("verify-wds")
    run(
        {
            "data_dir": str(data_dir),
            "train_source": str(sample.train_tar),
            "val_source": str(sample.val_tar),
            "labels_source": str(sample.labels),
            "implementation": "webdataset",
            "workers": 1,
            "train_shards": 4,
            "val_shards": 2,
            "dali_index": True,
        }
    )
    return data_dir


@pytest.fixture
def copy(output: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy"
    shutil.copytree(output / "webdataset", dest / "webdataset")
    shutil.copy(output / "manifest.json", dest / "manifest.json")
    return dest


def problems(data_dir: Path, **kwargs) -> list[str]:
    return [str(p) for p in verify(data_dir, workers=1, **kwargs).problems]


def test_an_intact_copy_passes_through_the_command_line_and_decodes(copy: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "airflow_resnet_prep.verify", str(copy), "--json", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads(done.stdout)
    assert done.returncode == 0 and result["ok"] is True, done.stdout + done.stderr
    assert result["implementation"] == "webdataset" and result["records"] == 36 and result["files"] == 13
    decoded = verify(copy, decode=True, workers=1)
    assert decoded.ok and decoded.decoded == 36, decoded.lines()


def _member(path: Path, name_suffix: str, sample: int) -> wdstar.Entry:
    with path.open("rb") as fh:
        entries = [e for e, _ in wdstar.iter_entries(fh, str(path)) if e.name.endswith(name_suffix)]
    return entries[sample]


def test_a_flipped_byte_in_an_image_is_named(copy: Path) -> None:
    target = copy / SHARD
    jpg = _member(target, ".jpg", 2)
    data = bytearray(target.read_bytes())
    data[jpg.data_offset + jpg.size // 2] ^= 0x10
    target.write_bytes(bytes(data))
    assert problems(copy) == [f"{SHARD}: CRC-32C {_crc(data)}, " + _said(copy, SHARD)]


def test_a_wrong_label_with_its_header_fixed_is_named_with_its_sample(copy: Path) -> None:
    """A .cls rewritten (a valid tar, other content): the sample, its offset and its image are named."""
    target = copy / SHARD
    cls = _member(target, ".cls", 1)
    data = bytearray(target.read_bytes())
    label = data[cls.data_offset : cls.data_offset + cls.size]
    other = b"1" if label != b"1" else b"2"
    data[cls.offset : cls.offset + 512] = wdstar.header(cls.name, 1)
    data[cls.data_offset : cls.data_offset + cls.size] = other.ljust(cls.size, b"0")[: cls.size]
    target.write_bytes(bytes(data))
    found = problems(copy)
    assert any(
        f"{SHARD} (record 1, offset {cls.offset:,}," in p and ".cls" in p and "expected" in p for p in found
    ), found
    assert any(p.startswith(f"{SHARD}: CRC-32C ") for p in found)  # classes are counted by the .json's wnid


def test_a_deleted_index_line_and_a_changed_info_are_named(copy: Path) -> None:
    idx = copy / "webdataset/imagenet1k-validation-0000.tar.idx"
    lines = idx.read_text().splitlines(keepends=True)
    idx.write_text("".join(lines[:2] + lines[3:]))
    info_path = copy / "webdataset/_info.json"
    info = json.loads(info_path.read_text())
    info["splits"]["validation"]["num_samples"] += 1
    info_path.write_text(json.dumps(info))
    found = problems(copy)
    key = idx.relative_to(copy)
    assert f"{key}: first line 'v1.2 6'; the shard needs 'v1.2 6'" not in found
    assert f"{key}: 5 lines, the data file has 6 records" in found, found
    assert any(p.startswith(f"{key} (record 1): line 3 is ") for p in found), found
    assert any(
        p.startswith("webdataset/_info.json: splits.validation.num_samples is 13; the shards say 12")
        for p in found
    )


def test_a_stray_shard_and_a_shard_cut_short_are_named(copy: Path) -> None:
    shutil.copy(copy / SHARD, copy / "webdataset/imagenet1k-train-0009.tar")
    target = copy / "webdataset/imagenet1k-train-0002.tar"
    target.write_bytes(target.read_bytes()[:-2048])
    found = problems(copy)
    assert "webdataset/imagenet1k-train-0009.tar: not in the manifest, but named like an output" in found[
        -1
    ] or any(p.startswith("webdataset/imagenet1k-train-0009.tar: not in the manifest") for p in found)
    assert any(p.startswith("webdataset/imagenet1k-train-0002.tar: ") and "cut short" in p for p in found), (
        found
    )


def _crc(data: bytes | bytearray) -> str:
    import google_crc32c

    return f"{google_crc32c.value(bytes(data)):08x}"


def _said(copy: Path, key: str) -> str:
    recorded = json.loads((copy / "manifest.json").read_text())["outputs"][key]["crc32c"]
    return f"the manifest says {recorded}: its bytes changed since it was written"
