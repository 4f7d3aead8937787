"""The catalog model (``catalog/model.py``): a split's catalog round-trips through its file."""

from __future__ import annotations

from airflow_resnet_prep.catalog.build import build_split_catalog
from airflow_resnet_prep.catalog.model import SplitCatalog
from airflow_resnet_prep.storage import LocalStore


def test_catalog_round_trips_through_its_file(sample, tmp_path):
    catalog = build_split_catalog("train", sample.train_tar)
    catalog.save(LocalStore(tmp_path), "train.tsv")
    assert SplitCatalog.load(LocalStore(tmp_path), "train.tsv") == catalog
