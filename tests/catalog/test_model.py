"""The catalog model (``catalog/model.py``): a split's catalog round-trips through its file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from airflow_resnet_prep.catalog import model
from airflow_resnet_prep.catalog.build import build_split_catalog
from airflow_resnet_prep.catalog.model import SplitCatalog
from airflow_resnet_prep.errors import SourceError
from airflow_resnet_prep.storage import LocalStore


def test_catalog_round_trips_through_its_file(sample, tmp_path):
    catalog = build_split_catalog("train", sample.train_tar)
    catalog.save(LocalStore(tmp_path), "train.tsv")
    assert SplitCatalog.load(LocalStore(tmp_path), "train.tsv") == catalog


def _saved(tmp_path, catalog: SplitCatalog) -> Path:
    catalog.save(LocalStore(tmp_path), "train.tsv")
    return tmp_path / "train.tsv"


def test_catalog_file_is_the_documented_text(sample, tmp_path):
    """A JSON header line, then one tab-separated line per image, the ImageRef's fields in order."""
    catalog = build_split_catalog("train", sample.train_tar)
    lines = _saved(tmp_path, catalog).read_text(encoding="utf-8").split("\n")
    assert json.loads(lines[0][2:]) == {
        "images": len(catalog),
        "sources": [{"kind": "tar", "path": catalog.sources[0].path}],
        "split": "train",
        "version": 1,
    }
    assert lines[1:] == [
        f"{r.synset}\t{r.name}\t{r.src}\t{r.offset}\t{r.size}\t{r.member}" for r in catalog.images
    ] + [""]


def test_catalog_load_reads_in_pieces_and_digests_the_file(sample, tmp_path, monkeypatch):
    """Read a few lines at a time (lines cut across reads), a catalog loads whole; its sha256 is the
    file's, and its classes without loading it are those of the loaded catalog."""
    catalog = build_split_catalog("train", sample.train_tar)
    path = _saved(tmp_path, catalog)
    monkeypatch.setattr(model, "_LOAD_BLOCK", 100)
    loaded = SplitCatalog.load(LocalStore(tmp_path), "train.tsv")
    assert loaded == catalog and loaded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert SplitCatalog.load_classes(LocalStore(tmp_path), "train.tsv") == catalog.synsets
    counts = SplitCatalog.load_class_counts(LocalStore(tmp_path), "train.tsv")
    assert counts == catalog.class_counts() and list(counts) == catalog.synsets
    path.write_bytes(path.read_bytes()[:-1])  # the last line without its line feed
    assert SplitCatalog.load(LocalStore(tmp_path), "train.tsv") == catalog


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda fields: fields[:5], "not enough values to unpack"),
        (lambda fields: [*fields, "x"], "too many values to unpack"),
        (lambda fields: [*fields[:3], "12a", *fields[4:]], "invalid literal for int()"),
        (lambda fields: [*fields[:2], "7", *fields[3:]], "out of range"),
        (lambda fields: [*fields[:4], "-1", *fields[5:]], "out of range"),
    ],
)
@pytest.mark.parametrize("block", [100, 1 << 20])
def test_damaged_catalog_line_is_named(sample, tmp_path, monkeypatch, damage, problem, block):
    """Whichever field of whichever line is damaged, the error names the catalog and that line."""
    monkeypatch.setattr(model, "_LOAD_BLOCK", block)
    catalog = build_split_catalog("train", sample.train_tar)
    path = _saved(tmp_path, catalog)
    lines = path.read_text(encoding="utf-8").split("\n")
    bad = len(lines) // 2  # 0-based: line bad + 1 of the file
    lines[bad] = "\t".join(damage(lines[bad].split("\t")))
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(SourceError) as err:
        SplitCatalog.load(LocalStore(tmp_path), "train.tsv")
    assert str(err.value).startswith(f"{path}: damaged catalog (line {bad + 1}: ")
    assert problem in str(err.value)


def test_catalog_with_a_byte_that_is_not_utf8_names_its_line(sample, tmp_path):
    catalog = build_split_catalog("train", sample.train_tar)
    path = _saved(tmp_path, catalog)
    data = path.read_bytes()
    at = data.index(b"\n", len(data) // 2) + 3  # inside the line that starts there
    path.write_bytes(data[:at] + b"\xff" + data[at + 1 :])
    line = data.count(b"\n", 0, at) + 1
    for load in (SplitCatalog.load, SplitCatalog.load_classes, SplitCatalog.load_class_counts):
        with pytest.raises(SourceError, match=rf"damaged catalog \(line {line}: 'utf-8' codec"):
            load(LocalStore(tmp_path), "train.tsv")


def test_catalog_missing_lines_is_refused(sample, tmp_path):
    catalog = build_split_catalog("train", sample.train_tar)
    path = _saved(tmp_path, catalog)
    path.write_text("\n".join(path.read_text(encoding="utf-8").split("\n")[:-2]) + "\n", encoding="utf-8")
    for load in (SplitCatalog.load, SplitCatalog.load_classes, SplitCatalog.load_class_counts):
        with pytest.raises(
            SourceError, match=rf"holds {len(catalog) - 1} images, its header says {len(catalog)}"
        ):
            load(LocalStore(tmp_path), "train.tsv")
