"""The cache key: a rerun converts again exactly when a param that changes the output's bytes changed.

Per param and implementation, a changed value must (or must not) invalidate the output, against a table
written here independently of ``params.py``; then for real on the sample set: a rerun that changes only
other settings reuses the files untouched and says which settings did not matter, one that changes a
shaping param rewrites them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from airflow_resnet_prep import pipeline
from airflow_resnet_prep.manifest import cache_key, reuse_note
from airflow_resnet_prep.params import IMPLEMENTATIONS, PARAMS, defaults

# Another valid value for each param (its default is the first one).
OTHER: dict[str, Any] = {
    "implementation": "reference",
    "data_dir": "/elsewhere",
    "train_source": "/other/train.tar",
    "val_source": "/other/val.tar",
    "extract": True,
    "on_bad_image": "skip",
    "decode_check": True,
    "labels_source": "/other/labels.txt",
    "train_checksum": "md5:" + "0" * 32,
    "val_checksum": "md5:" + "1" * 32,
    "http_conn_id": "mirror",
    "storage_conn_id": "s3_prep",
    "download_sources": True,
    "train_shards": 64,
    "val_shards": 8,
    "shuffle_seed": 7,
    "dali_index": True,
    "resize": 256,
    "quality": 80,
    "mxnet_version": "24.04",
    "workers": 3,
    "fanout": 4,
    "force": True,
}
# What changes the bytes, per implementation (sources count through their fingerprints, not as params).
SHAPES = {
    "nvidia": {"on_bad_image", "decode_check", "resize"},  # quality only when resizing: see below
    "reference": {"on_bad_image", "decode_check", "train_shards", "val_shards", "shuffle_seed", "dali_index"},
    "webdataset": {
        "on_bad_image",
        "decode_check",
        "train_shards",
        "val_shards",
        "shuffle_seed",
        "dali_index",
    },
}
BASE = {**defaults(), "data_dir": "/d", "train_source": "/t.tar", "val_source": "/v.tar"}


def test_every_param_has_another_value_here_and_every_implementation_a_row():
    assert set(OTHER) == set(PARAMS)
    # A new implementation writes here, independently of params.py, which params change its bytes.
    assert set(SHAPES) == set(IMPLEMENTATIONS)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
# Another implementation is another output (the manifest's implementation), not a key change.
@pytest.mark.parametrize("name", sorted(set(PARAMS) - {"implementation"}))
def test_a_changed_param_invalidates_exactly_when_it_shapes_the_output(implementation, name):
    changed = {**BASE, name: OTHER[name]}
    invalidates = cache_key(implementation, changed) != cache_key(implementation, BASE)
    assert invalidates == (name in SHAPES[implementation]), (implementation, name)


@pytest.mark.parametrize(("resize", "invalidates"), [(0, False), (224, True)])
def test_quality_counts_only_when_resizing(resize, invalidates):
    before = {**BASE, "resize": resize}
    after = {**before, "quality": 80}
    assert (cache_key("nvidia", after) != cache_key("nvidia", before)) is invalidates
    assert cache_key("reference", after) == cache_key("reference", before)


def test_a_manifest_of_0_2_0_is_still_reused():
    """0.2.0 recorded quality and mxnet_version, and decode_check only when on: the same run today
    computes the same key from that record."""
    written_by_0_2 = {"resize": 0, "quality": 95, "on_bad_image": "fail", "mxnet_version": "22.04"}
    assert cache_key("nvidia", written_by_0_2) == cache_key("nvidia", BASE)
    assert cache_key("nvidia", {**written_by_0_2, "decode_check": True}) != cache_key("nvidia", BASE)


def test_the_reuse_note_names_what_differs_without_mattering():
    note = reuse_note("nvidia", {"resize": 0, "quality": 95, "mxnet_version": "22.04"}, {"quality": 80})
    assert "quality=80 (written with 95)" in note
    assert "resize=0" in note and "mxnet_version" not in note


# -- for real, on the sample set ---------------------------------------------------------------------------
def values(sample, data_dir: Path, implementation: str, **more: Any) -> dict[str, Any]:
    return {
        "implementation": implementation,
        "data_dir": str(data_dir),
        "train_source": str(sample.train_tar),
        "val_source": str(sample.val_tar),
        "labels_source": str(sample.labels),
        "train_shards": 4,
        "val_shards": 2,
        "workers": 1,
        **more,
    }


def stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def converted(sample, tmp_path_factory):
    """One nvidia output, converted once for the module."""
    data_dir = tmp_path_factory.mktemp("cache-key") / "data"
    result = pipeline.run(values(sample, data_dir, "nvidia"))
    assert result["cached"] is False
    return data_dir


@pytest.mark.parametrize(
    "change",
    [{"quality": 80}, {"mxnet_version": "24.04"}, {"workers": 2}, {"train_shards": 16, "shuffle_seed": 3}],
    ids=["quality-without-resize", "mxnet_version", "workers", "reference-only-params"],
)
def test_a_rerun_changing_only_other_settings_reuses_the_output_and_says_so(
    converted, sample, caplog, change
):
    before = stamps(converted / "recordio")
    manifest_before = (converted / "manifest.json").read_bytes()
    with caplog.at_level(logging.INFO, logger="airflow_resnet_prep.manifest"):
        result = pipeline.run(values(sample, converted, "nvidia", **change))
    assert result["cached"] is True
    assert stamps(converted / "recordio") == before, "a reused output was rewritten"
    assert (converted / "manifest.json").read_bytes() == manifest_before
    logged = [r.getMessage() for r in caplog.records if "reusing the nvidia output" in r.getMessage()]
    assert logged, [r.getMessage() for r in caplog.records]
    recorded = json.loads(manifest_before)["params"]
    for name, value in change.items():
        if name in recorded:  # the recorded params that differ are named, with the value they had
            assert f"{name}={value!r} (written with {recorded[name]!r})" in result["reused"], result["reused"]
            assert f"{name}={value!r}" in logged[-1]


def test_a_rerun_changing_a_shaping_param_converts_again(sample, tmp_path):
    data_dir = tmp_path / "data"
    first = pipeline.run(values(sample, data_dir, "reference"))
    assert first["cached"] is False
    before = {p.name for p in (data_dir / "tfrecords").iterdir()}
    again = pipeline.run(values(sample, data_dir, "reference", dali_index=True))
    assert again["cached"] is False
    after = {p.name for p in (data_dir / "tfrecords").iterdir()}
    assert after - before == {f"{name}.idx" for name in before}
    assert json.loads((data_dir / "manifest.json").read_text())["params"]["dali_index"] is True
