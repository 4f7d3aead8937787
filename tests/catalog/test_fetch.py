"""The fetch step (``catalog/fetch.py``): catalogs reused, sources never modified, bad data_dirs refused."""

from __future__ import annotations

import os

import pytest

from airflow_resnet_prep.catalog.fetch import fetch
from airflow_resnet_prep.catalog.relabel import relabel


def test_fetch_reuses_catalogs_when_sources_are_unchanged(sample, tmp_path):
    first = fetch(tmp_path, str(sample.train_tar), str(sample.val_tar))
    second = fetch(tmp_path, str(sample.train_tar), str(sample.val_tar))
    assert not first.reused and second.reused
    assert second.counts == {"train": sample.train_count, "val": sample.val_count}


def test_a_source_archive_is_never_modified(sample, tmp_path):
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (sample.train_tar, sample.val_tar)}
    fetch(tmp_path, str(sample.train_tar), str(sample.val_tar), extract=True)
    relabel(tmp_path, str(sample.labels), extract=True)
    for path, (mtime, data) in before.items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data
    assert os.access(sample.train_tar, os.R_OK)


def test_an_empty_data_dir_is_refused(sample):
    from airflow_resnet_prep.errors import PrepError

    with pytest.raises(PrepError, match="data_dir is empty"):
        fetch("", str(sample.train_tar), str(sample.val_tar))


@pytest.mark.parametrize(
    ("data_dir", "message"),
    [
        ("relative/data", "is a relative path: give an absolute path"),
        ("ftp://host/prefix", "unsupported URI; give an absolute local path"),
        ("s3://no_such_conn@bucket/prefix", "the Airflow connection 'no_such_conn' is not defined"),
    ],
)
def test_a_data_dir_every_worker_would_read_differently_is_refused(
    sample, tmp_path, monkeypatch, data_dir, message
):
    """Seen in a run: ``s3://...`` was taken for a relative path and made a folder ``s3:`` in the worker's
    current folder. What is neither an absolute path nor a reachable bucket is refused before anything
    is written."""
    from airflow_resnet_prep.errors import PrepError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(PrepError, match=message):
        fetch(data_dir, str(sample.train_tar), str(sample.val_tar))
    assert list(tmp_path.iterdir()) == []
