"""The copies people hold (``catalog/copies.py``), built by the sample generator from the sample's own
images: each layout is recognised by content and gives the catalog of the official tars (same classes,
ILSVRC names, image bytes); what a split needs and a copy lacks is refused before any conversion."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from airflow_resnet_prep.catalog.build import build_split_catalog
from airflow_resnet_prep.catalog.model import ImageReader, SplitCatalog
from airflow_resnet_prep.catalog.relabel import assign_labels, read_labels, relabel
from airflow_resnet_prep.errors import LabelsError, SourceError
from airflow_resnet_prep.layout import DataDir, catalog_key
from airflow_resnet_prep.params import DEFAULT_LABELS_URL
from airflow_resnet_prep.sample_copies import write_copy

COPIES = ("kaggle", "kaggle-zip", "huggingface")


@pytest.fixture(scope="module")
def official(sample) -> dict[str, SplitCatalog]:
    train = build_split_catalog("train", sample.train_tar)
    val = build_split_catalog("val", sample.val_tar)
    val = assign_labels(val, read_labels(sample.labels), train.synsets, str(sample.labels))
    return {"train": train, "val": val}


def contents(catalog: SplitCatalog) -> list[tuple[str, str, bytes]]:
    with ImageReader(catalog.sources) as reader:
        return [(ref.synset, ref.name, data) for ref, data in reader.iter_read(catalog.images)]


@pytest.mark.parametrize("layout", COPIES)
def test_each_copy_gives_the_official_catalog(sample, official, layout):
    path = write_copy(sample, layout)
    for split in ("train", "val"):
        catalog = build_split_catalog(split, path)
        assert catalog.layout == layout
        assert catalog.labelled and bool(catalog.labels) == (split == "val")
        assert contents(catalog) == contents(official[split])
        one = catalog.images[len(catalog) // 2]  # one image on its own, as a retry reads it
        with ImageReader(catalog.sources) as reader:
            assert (
                reader.read(one)
                == dict(((s, n), d) for s, n, d in contents(official[split]))[(one.synset, one.name)]
            )
    assert not any("test" in ref.member for ref in build_split_catalog("val", path).images)


def test_huggingface_files_and_repository_root_are_accepted(sample):
    data = write_copy(sample, "huggingface")
    val = build_split_catalog("val", data / "val_images.tar.gz")
    assert val.layout == "huggingface" and len(val) == sample.val_count
    root = build_split_catalog("train", data.parent)  # the repository root holding data/
    assert len(root) == sample.train_count and len(root.sources) == 5


def test_catalog_of_a_copy_survives_save_and_load(sample, tmp_path):
    catalog = build_split_catalog("val", write_copy(sample, "kaggle-zip"))
    layout = DataDir.of(tmp_path).ensure()
    catalog.save(layout.store, catalog_key("val"))
    loaded = SplitCatalog.load(layout.store, catalog_key("val"))
    assert (loaded.layout, loaded.labels, loaded.images) == (catalog.layout, catalog.labels, catalog.images)


# -- what a copy lacks -----------------------------------------------------------------------------------
@pytest.fixture
def kaggle_tree(sample, tmp_path) -> Path:
    dest = tmp_path / "kaggle"
    shutil.copytree(write_copy(sample, "kaggle"), dest)
    return dest


def test_kaggle_without_val_labels_is_refused_naming_the_file(kaggle_tree):
    (kaggle_tree / "LOC_val_solution.csv").unlink()
    assert build_split_catalog("train", kaggle_tree).layout == "kaggle"  # train needs no labels
    with pytest.raises(LabelsError, match=r"LOC_val_solution\.csv: missing"):
        build_split_catalog("val", kaggle_tree)


def test_kaggle_with_a_val_image_missing_from_the_csv_is_refused(kaggle_tree):
    csv = kaggle_tree / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    dropped = lines.pop(3).split(",")[0]
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(LabelsError, match=rf"LOC_val_solution\.csv: has no row for {dropped}"):
        build_split_catalog("val", kaggle_tree)


def test_a_damaged_csv_line_is_named_not_quoted(kaggle_tree):
    csv = kaggle_tree / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    lines[2] = "ILSVRC2012_val_00000002,SECRET-CONTENT 1 2 3 4"
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(LabelsError, match=r"LOC_val_solution\.csv: line 3 ") as err:
        build_split_catalog("val", kaggle_tree)
    assert "SECRET" not in str(err.value)


def _retar(src: Path, dest: Path, rename) -> None:
    with tarfile.open(src) as tin, tarfile.open(dest, "w:gz") as tout:
        for member in tin.getmembers():
            data = tin.extractfile(member).read()
            member.name = rename(member.name)
            tout.addfile(member, io.BytesIO(data))


def test_a_huggingface_name_without_a_wnid_is_refused(sample, tmp_path):
    data = write_copy(sample, "huggingface")
    bad = tmp_path / "val_images.tar.gz"
    _retar(data / "val_images.tar.gz", bad, lambda n: n.rsplit("_", 1)[0] + ".JPEG")
    with pytest.raises(
        SourceError,
        match=r"val_images\.tar\.gz\[ILSVRC2012_val_\d{8}\.JPEG\]: the file name carries no class",
    ):
        build_split_catalog("val", bad)
    test = data / "test_images.tar.gz"  # test images carry no class: refused when named as a split
    with pytest.raises(SourceError, match="carries no class"):
        build_split_catalog("val", test)


def test_a_copy_with_a_missing_class_is_refused_by_relabel(sample, tmp_path):
    """Train lacks a class that val has: refused before conversion, whatever the labels source."""
    data = write_copy(sample, "kaggle")
    tree = tmp_path / "k"
    shutil.copytree(data, tree)
    gone = sample.synsets[0]
    shutil.rmtree(tree / "ILSVRC/Data/CLS-LOC/train" / gone)
    layout = DataDir.of(tmp_path / "dd").ensure()
    for split in ("train", "val"):
        build_split_catalog(split, tree).save(layout.store, catalog_key(split))
    with pytest.raises(LabelsError, match=f"validation class {gone} is not among the training classes"):
        relabel(tmp_path / "dd", DEFAULT_LABELS_URL)


@pytest.mark.parametrize("layout", COPIES)
def test_labels_source_default_empty_or_explicit(sample, tmp_path, layout):
    path = write_copy(sample, layout)
    dd = DataDir.of(tmp_path / "dd").ensure()
    for split in ("train", "val"):
        build_split_catalog(split, path).save(dd.store, catalog_key(split))
    for given in (DEFAULT_LABELS_URL, "", None):  # the copy's labels; nothing is downloaded
        result = relabel(tmp_path / "dd", given)
        assert result.labels_fingerprint is None and result.images == sample.val_count
    checked = relabel(tmp_path / "dd", str(sample.labels))  # explicit: checked against the copy's
    assert checked.labels_path == str(sample.labels) and checked.labels_fingerprint is not None
    wrong = tmp_path / "wrong.txt"
    lines = sample.labels.read_text().splitlines()
    lines[4] = next(s for s in sample.synsets if s != lines[4])
    wrong.write_text("\n".join(lines) + "\n")
    with pytest.raises(LabelsError, match=r"wrong\.txt: line 5 disagrees with the class the copy gives"):
        relabel(tmp_path / "dd", str(wrong))
