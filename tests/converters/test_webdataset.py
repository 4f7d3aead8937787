"""The ``webdataset`` converter end to end, read back by the real readers: the ``webdataset`` library
(every sample: key, label, bytes), NVIDIA DALI's ``readers.webdataset`` on the CPU with our index files,
DALI's own ``wds2idx`` (the same index bytes), and ``_info.json`` against what timm's ``ReaderWds`` reads
(timm itself is not installed: it brings PyTorch; its reader's fields are checked, see docs/formats.md).
Then the kill-and-rerun, the unit-by-unit path, the operator and a data_dir in a bucket.

One conversion of the sample set (module fixture) serves every read-only check.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from airflow_resnet_prep.catalog.model import SplitCatalog
from airflow_resnet_prep.converters import base, local
from airflow_resnet_prep.converters.tfrecord import TFRecordConverter
from airflow_resnet_prep.converters.webdataset import WebDatasetConverter
from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.failpoints import ENV as FAILPOINT_ENV
from airflow_resnet_prep.layout import DataDir, catalog_key
from tests.converters.test_tfrecord import output_bytes, prepare, source_images
from tests.support.buckets import missing

PARAMS: dict[str, Any] = {"train_shards": 4, "val_shards": 2, "dali_index": True}
SPLIT = {"train": "train", "val": "validation"}


def shard_names(split: str, shards: int) -> list[str]:
    return [f"imagenet1k-{SPLIT[split]}-{i:04d}.tar" for i in range(shards)]


@dataclass
class Converted:
    data_dir: Path
    out: Path
    summary: dict[str, Any]
    sources: dict[str, dict[str, tuple[str, bytes]]]
    files: dict[str, bytes]


@pytest.fixture(scope="module")
def converted(sample, tmp_path_factory: pytest.TempPathFactory) -> Converted:
    data_dir = prepare(tmp_path_factory.mktemp("wds"), sample.train_tar, sample.val_tar, sample.labels)
    summary = local.convert(WebDatasetConverter(**PARAMS), data_dir, workers=1)
    out = data_dir / "webdataset"
    return Converted(data_dir, out, summary, source_images(sample), output_bytes(out))


@pytest.fixture
def fresh(sample, tmp_path: Path) -> Path:
    return prepare(tmp_path / "data", sample.train_tar, sample.val_tar, sample.labels)


def iterate(urls: list[Path]) -> list[dict[str, Any]]:
    """Every sample as the ``webdataset`` library yields it, in file order."""
    import webdataset as wds

    return list(wds.WebDataset([str(u) for u in urls], shardshuffle=False))


# -- layout ---------------------------------------------------------------------------------------------
def test_shards_indexes_and_info_in_webdataset(converted: Converted) -> None:
    shards = shard_names("train", 4) + shard_names("val", 2)
    expected = shards + [f"{n}.idx" for n in shards] + ["_info.json"]
    assert sorted(converted.files) == sorted(expected)
    assert sorted(converted.summary["outputs"]) == sorted(f"webdataset/{n}" for n in expected)
    for name, stats in converted.summary["outputs"].items():
        assert stats["size"] == len(converted.files[name.split("/")[1]])


def test_info_json_is_what_timms_reader_reads(converted: Converted) -> None:
    """timm's ``ReaderWds`` (``timm/data/readers/reader_wds.py``): ``_load_info`` reads ``_info.json``
    from the root; ``_parse_split_info`` takes ``info["splits"][split]`` and builds its ``SplitInfo`` from
    ``num_samples``, ``filenames``, ``shard_lengths`` and ``name``; ``_lazy_init`` joins each file name to
    the root; with a brace-expanded split it maps file names to ``shard_lengths``. Then each shard is
    read by the webdataset library and ``_decode`` takes ``int(sample["cls"])`` as the target."""
    info = json.loads(converted.files["_info.json"])
    for split, shards in (("train", 4), ("val", 2)):
        split_info = info["splits"][SPLIT[split]]
        assert split_info["name"] == SPLIT[split]
        assert split_info["filenames"] == shard_names(split, shards)
        paths = [converted.out / f for f in split_info["filenames"]]  # os.path.join(root, f), as timm does
        counts = [len(iterate([p])) for p in paths]
        assert split_info["shard_lengths"] == counts
        assert split_info["num_samples"] == sum(counts) == len(converted.sources[split])
        by_file = dict(zip(split_info["filenames"], split_info["shard_lengths"], strict=True))
        assert sum(by_file.values()) == split_info["num_samples"]


@pytest.mark.parametrize("split", ["train", "val"])
def test_webdataset_library_reads_every_image_once_with_its_label_and_bytes(
    converted: Converted, sample, split: str
) -> None:
    samples = iterate([converted.out / n for n in shard_names(split, PARAMS[f"{split}_shards"])])
    classes = sorted(sample.synsets)
    reencoded = {x["name"]: x["reason"] for x in converted.summary["reencoded"]}
    sources = converted.sources[split]
    assert sorted(s["__key__"] for s in samples) == sorted(n.rsplit(".", 1)[0] for n in sources)
    assert len(samples) == len(sources)
    for s in samples:
        assert set(s) == {"__key__", "__url__", "__local_path__", "cls", "jpg", "json"} - (
            set() if "__local_path__" in s else {"__local_path__"}
        )
        meta = json.loads(s["json"])
        synset, data = sources[meta["filename"]]
        assert meta == {"wnid": synset, "filename": f"{s['__key__']}.JPEG"}
        assert int(s["cls"]) == classes.index(synset) and s["cls"] == str(classes.index(synset)).encode()
        if meta["filename"] in reencoded:
            image = Image.open(io.BytesIO(s["jpg"]))
            assert (image.format, image.mode) == ("JPEG", "RGB")
        else:
            assert s["jpg"] == data  # pass-through: the source file's bytes
    if split == "train":
        assert {"PNG image", "CMYK JPEG"} <= set(reencoded.values())


def test_order_and_shards_are_the_reference_plans(converted: Converted, sample) -> None:
    """Train in the reference converter's permutation (the same plan code), val in name order, shards
    contiguous and near-equal; tar headers as written (mtime 0, owner 0, mode 0644)."""
    catalog = {s: SplitCatalog.load(DataDir.of(converted.data_dir).store, catalog_key(s)) for s in SPLIT}
    classes = catalog["train"].synsets
    for split in SPLIT:
        units = TFRecordConverter(**PARAMS).plan_split(split, catalog[split], classes)
        planned = [item.name.rsplit(".", 1)[0] for unit in units for item in unit.items]
        lengths, keys = [], []
        for name in shard_names(split, PARAMS[f"{split}_shards"]):
            shard = iterate([converted.out / name])
            lengths.append(len(shard))
            keys += [s["__key__"] for s in shard]
            with tarfile.open(converted.out / name) as tar:
                assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in tar} == {
                    (0, 0, 0, "", "", 0o644)
                }
        assert keys == planned
        assert max(lengths) - min(lengths) <= 1
        if split == "val":
            assert keys == sorted(keys)
        else:
            refs = list(catalog["train"].images)
            random.Random(0).shuffle(refs)
            assert keys == [r.name.rsplit(".", 1)[0] for r in refs]


# -- DALI ----------------------------------------------------------------------------------------------
def require_dali() -> None:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as exc:
        missing(f"NVIDIA DALI is not installed (pip install nvidia-dali-cuda120): {exc}")


def test_dalis_wds2idx_writes_our_index_byte_for_byte(converted: Converted, tmp_path: Path) -> None:
    require_dali()
    wds2idx = Path(sys.executable).parent / "wds2idx"
    assert wds2idx.exists(), "nvidia-dali installs the wds2idx script beside python"
    for name in shard_names("train", 4) + shard_names("val", 2):
        theirs = tmp_path / f"{name}.idx"
        subprocess.run(
            [str(wds2idx), str(converted.out / name), str(theirs)], check=True, capture_output=True
        )
        assert theirs.read_bytes() == converted.files[f"{name}.idx"], name


def test_dali_reads_every_sample_with_our_index_files_on_the_cpu(converted: Converted, sample) -> None:
    require_dali()
    from nvidia.dali import fn, pipeline_def

    classes = sorted(sample.synsets)
    for split in SPLIT:
        tars = [str(converted.out / n) for n in shard_names(split, PARAMS[f"{split}_shards"])]
        n = len(converted.sources[split])

        @pipeline_def(batch_size=n, num_threads=1, device_id=None)
        def pipe(tars: list[str]):
            jpg, cls, meta = fn.readers.webdataset(
                paths=tars,
                index_paths=[t + ".idx" for t in tars],
                ext=["jpg", "cls", "json"],
                missing_component_behavior="error",
                name="reader",
            )
            return jpg, cls, meta

        p = pipe(tars)
        p.build()
        assert p.reader_meta("reader")["epoch_size"] == n
        jpgs, labels, metas = p.run()
        seen = set()
        for i in range(n):
            meta = json.loads(bytes(metas.at(i)))
            synset, data = converted.sources[split][meta["filename"]]
            assert meta["wnid"] == synset and int(bytes(labels.at(i))) == classes.index(synset)
            image = bytes(jpgs.at(i))
            if not any(x["name"] == meta["filename"] for x in converted.summary["reencoded"]):
                assert image == data
            seen.add(meta["filename"])
        assert seen == set(converted.sources[split])


# -- reruns, units, crashes ------------------------------------------------------------------------------
def test_same_bytes_unit_by_unit_with_two_workers(converted: Converted, fresh: Path) -> None:
    converter = WebDatasetConverter(**PARAMS)
    plan = base.plan(converter, fresh)
    local.run_units(converter, plan, workers=2)
    summary = base.finish(converter, plan)
    assert output_bytes(fresh / "webdataset") == converted.files
    assert summary["outputs"] == converted.summary["outputs"]  # sizes, records and CRC-32C


_KILLED_CHILD = """
import sys
from airflow_resnet_prep.converters import base
from airflow_resnet_prep.converters.webdataset import WebDatasetConverter
from airflow_resnet_prep.layout import DataDir
plan = base.Plan.load(DataDir.of(sys.argv[1]), "webdataset")
base.run_plan_unit(WebDatasetConverter(**eval(sys.argv[2])), plan, 0)
"""


def test_unit_killed_midway_leaves_no_shard_and_rerun_gives_the_same_bytes(
    converted: Converted, fresh: Path
) -> None:
    converter = WebDatasetConverter(**PARAMS)
    plan = base.plan(converter, fresh)
    assert plan.units[0].outputs == ["imagenet1k-train-0000.tar"]
    env = {**os.environ, FAILPOINT_ENV: "unit-half"}
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_CHILD, str(fresh), repr(PARAMS)],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    out = fresh / "webdataset"
    assert not (out / "imagenet1k-train-0000.tar").exists()
    assert not (out / "imagenet1k-train-0000.tar.idx").exists()
    assert not plan.unit_done_path(0).exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".imagenet1k-train-0000.tar.")]
    with pytest.raises(PrepError, match="not done"):
        base.finish(converter, plan)
    local.run_units(converter, plan, workers=1)
    base.finish(converter, plan)
    assert output_bytes(out) == converted.files  # and the killed run's temp file is gone


def test_a_stem_with_dots_gets_an_escaped_key_readers_do_not_split() -> None:
    from airflow_resnet_prep.converters.webdataset import sample_key
    from airflow_resnet_prep.formats.wdstar import split_name

    assert sample_key("n01440764_10026.JPEG", "x") == "n01440764_10026"
    keys = {name: sample_key(name, "x") for name in ("a.b.JPEG", "a%2Eb.JPEG", "a_b.JPEG", "train.rec.jpg")}
    assert keys == {
        "a.b.JPEG": "a%2Eb",
        "a%2Eb.JPEG": "a%252Eb",
        "a_b.JPEG": "a_b",
        "train.rec.jpg": "train%2Erec",
    }
    for key in keys.values():
        assert split_name(f"{key}.jpg") == (key, "jpg")  # as webdataset and DALI group the members


# -- the operator ----------------------------------------------------------------------------------------
class _TaskInstance:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def test_operator_renders_converts_and_pushes_webdataset_path(converted: Converted, fresh: Path) -> None:
    from airflow_resnet_prep.operators.webdataset import ConvertWebDatasetOperator

    op = ConvertWebDatasetOperator(
        task_id="webdataset_convert",
        data_dir="{{ params.data_dir }}",
        train_shards="{{ params.train_shards }}",
        val_shards="{{ params.val_shards }}",
        dali_index="{{ params.dali_index }}",
        workers=1,
    )
    ti = _TaskInstance()
    ctx: dict[str, Any] = {"ti": ti, "params": {"data_dir": str(fresh), **PARAMS}}
    op.render_template_fields(ctx)
    summary = op.execute(ctx)
    assert ti.pushed == {"webdataset_path": str(fresh / "webdataset")}
    assert summary["implementation"] == "webdataset"
    assert output_bytes(fresh / "webdataset") == converted.files


# -- a data_dir in a bucket --------------------------------------------------------------------------------
def test_data_dir_in_a_bucket_gives_the_same_bytes_and_verifies(
    converted: Converted, sample, s3_prefix: str
) -> None:
    """Sources read from the local files, every shard streamed to S3 (one multipart upload per shard,
    completed when whole), ``_info.json`` and indexes beside them; ``verify`` of the bucket passes."""
    from airflow_resnet_prep.pipeline import run
    from airflow_resnet_prep.storage import store_for
    from airflow_resnet_prep.verify import verify

    result = run(
        {
            "data_dir": s3_prefix,
            "train_source": str(sample.train_tar),
            "val_source": str(sample.val_tar),
            "labels_source": str(sample.labels),
            "implementation": "webdataset",
            "workers": 1,
            **PARAMS,
        }
    )
    assert result["webdataset_path"].endswith("/webdataset") and "@" not in result["webdataset_path"]
    store = store_for(s3_prefix)
    remote = {o.key.rpartition("/")[2]: store.read_bytes(o.key) for o in store.list("webdataset")}
    assert remote == converted.files
    assert store.list_uploads() == []
    report = verify(s3_prefix)
    assert report.ok, report.lines()
    assert report.records == 36
