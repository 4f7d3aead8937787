"""Extraction (``catalog/extract.py``): the optional ``raw/<split>/<synset>/<image>`` folder tree."""

from __future__ import annotations

from airflow_resnet_prep.catalog.fetch import fetch
from airflow_resnet_prep.catalog.model import SplitCatalog
from airflow_resnet_prep.catalog.relabel import relabel
from airflow_resnet_prep.layout import DataDir, catalog_key
from airflow_resnet_prep.sample_copies import write_copy


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


def test_a_rerun_on_the_zip_keeps_whole_images_and_redoes_a_truncated_one(sample, tmp_path):
    """A zip member's catalog size is its span in the archive, not the image's: whole images must still be
    recognised (no file replaced: same inode), and a truncated one redone."""
    zip_path = str(write_copy(sample, "kaggle-zip"))
    fetch(tmp_path, zip_path, zip_path, extract=True)
    raw = tmp_path / "raw"
    files = sorted(raw.rglob("*.JPEG"))
    assert len(files) == sample.train_count + sample.val_count
    before = {p: (p.stat().st_ino, p.read_bytes()) for p in files}
    fetch(tmp_path, zip_path, zip_path, extract=True)
    assert {p: p.stat().st_ino for p in files} == {p: ino for p, (ino, _) in before.items()}
    cut = files[len(files) // 2]
    with open(cut, "r+b") as fh:
        fh.truncate(len(before[cut][1]) // 2)
    fetch(tmp_path, zip_path, zip_path, extract=True)
    assert cut.read_bytes() == before[cut][1]
    assert cut.stat().st_ino != before[cut][0]  # written again
    assert all(p.stat().st_ino == before[p][0] for p in files if p != cut)
