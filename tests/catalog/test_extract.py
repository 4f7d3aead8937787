"""Extraction (``catalog/extract.py``): the optional ``raw/<split>/<synset>/<image>`` folder tree."""

from __future__ import annotations

from airflow_resnet_prep.catalog.fetch import fetch
from airflow_resnet_prep.catalog.model import SplitCatalog
from airflow_resnet_prep.catalog.relabel import relabel
from airflow_resnet_prep.layout import DataDir, catalog_key


def test_extract_lays_out_folders_and_relabel_moves_val(sample, extracted, tmp_path):
    result = fetch(tmp_path, str(sample.train_tar), str(sample.val_tar), extract=True)
    raw = DataDir.of(tmp_path).root / "raw"
    assert result.imagenet_path == str(raw / "train")
    for path in (extracted / "train").rglob("*.JPEG"):
        assert (raw / "train" / path.relative_to(extracted / "train")).read_bytes() == path.read_bytes()
    assert len(list((raw / "val").glob("*.JPEG"))) == sample.val_count
    moved = relabel(tmp_path, str(sample.labels), extract=True).moved
    assert moved == sample.val_count
    assert not list((raw / "val").glob("*.JPEG"))
    val = SplitCatalog.load(DataDir.of(tmp_path).store, catalog_key("val"))
    for ref in val.images:
        assert (raw / "val" / ref.synset / ref.name).is_file()
    assert not list(tmp_path.rglob(".*.tmp"))
