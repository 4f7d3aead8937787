"""Relabelling (``catalog/relabel.py``): classes from the labels file, and every labels-file defect named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from airflow_resnet_prep.catalog.build import build_split_catalog
from airflow_resnet_prep.catalog.fetch import fetch
from airflow_resnet_prep.catalog.model import SplitCatalog
from airflow_resnet_prep.catalog.relabel import assign_labels, read_labels, relabel
from airflow_resnet_prep.errors import LabelsError
from airflow_resnet_prep.layout import DataDir, catalog_key
from tests.support.httpserver import FileServer


def test_relabel_assigns_classes_from_the_labels_file(sample, tmp_path):
    fetch(tmp_path, str(sample.train_tar), str(sample.val_tar))
    result = relabel(tmp_path, str(sample.labels))
    val = SplitCatalog.load(DataDir.of(tmp_path).store, catalog_key("val"))
    labels = sample.labels.read_text().split()
    assert result.images == len(val) == len(labels)
    for ref in val.images:
        number = int(ref.name.split("_")[-1].split(".")[0])
        assert ref.synset == labels[number - 1]
    # idempotent: a second relabel changes nothing
    before = DataDir.of(tmp_path).catalog_file("val").read_bytes()
    relabel(tmp_path, str(sample.labels))
    assert DataDir.of(tmp_path).catalog_file("val").read_bytes() == before


def test_folder_sources_need_no_labels_file(sample, extracted, tmp_path):
    labelled_val = tmp_path / "val"
    fetch(tmp_path / "a", str(sample.train_tar), str(sample.val_tar))
    relabel(tmp_path / "a", str(sample.labels), extract=False)
    val = SplitCatalog.load(DataDir.of(tmp_path / "a").store, catalog_key("val"))
    for ref in val.images:
        (labelled_val / ref.synset).mkdir(parents=True, exist_ok=True)
        shutil.copy(extracted / "val" / ref.name, labelled_val / ref.synset / ref.name)
    fetch(tmp_path / "b", str(extracted / "train"), str(labelled_val))
    result = relabel(tmp_path / "b", "https://unreachable.invalid/labels.txt")
    assert result.labels_path is None and result.images == sample.val_count


# -- the labels file ---------------------------------------------------------------------------------
@pytest.fixture
def val_and_train(sample):
    return build_split_catalog("val", sample.val_tar), sample.synsets


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "labels.txt"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_labels_file_tolerates_crlf_and_trailing_blank_lines(sample, tmp_path, val_and_train):
    lines = sample.labels.read_text().split()
    for text in ("\r\n".join(lines) + "\r\n", "\n".join(lines) + "\n\n\n", "\n".join(lines)):
        assert read_labels(_write(tmp_path, text)) == lines


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda lines: lines[:-1], "has 11 lines but the validation set has 12 images"),
        (lambda lines: [*lines, lines[0]], "has 13 lines but the validation set has 12 images"),
        (lambda lines: [lines[0], "", *lines[2:]], "line 2 is blank"),
        (lambda lines: [*lines[:3], "n99999999", *lines[4:]], "line 4 names class n99999999"),
        (lambda lines: [*lines[:2], "cat", *lines[3:]], "line 3 is not a synset id"),
    ],
)
def test_bad_labels_files_name_the_line(sample, tmp_path, val_and_train, mutate, message):
    val, train_synsets = val_and_train
    path = _write(tmp_path, "\n".join(mutate(sample.labels.read_text().split())) + "\n")
    with pytest.raises(LabelsError, match=message) as info:
        assign_labels(val, read_labels(path), train_synsets, str(path))
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"AccessKeyId":"ASIAEXAMPLE","SecretAccessKey":"s3cr3t-value"}\n', "line 1 is not a synset id"),
        ("n01440764\npassword=s3cr3t-value\n", "line 2 is not a synset id"),
        (
            "n01440764\n\u00e9s3cr3t-value\n".encode().decode("latin-1"),
            "line 2 holds a byte that is not ASCII",
        ),
    ],
)
def test_a_file_that_is_not_a_labels_file_is_named_never_quoted(tmp_path, text, message):
    """A labels_source pointed at a secret (a metadata answer, a credentials file) fails naming the
    file and the line, and no byte of it reaches the error."""
    path = tmp_path / "secret.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(LabelsError, match=message) as info:
        read_labels(path)
    assert str(path) in str(info.value)
    for secret in ("s3cr3t", "ASIA", "AccessKeyId", "password", "0xc3", "0xe9"):
        assert secret not in str(info.value)


def test_a_bad_labels_file_changes_nothing(sample, tmp_path):
    data_dir = tmp_path / "data"
    fetch(data_dir, str(sample.train_tar), str(sample.val_tar), extract=True)
    before = DataDir.of(data_dir).catalog_file("val").read_bytes()
    flat_before = sorted(p.name for p in (data_dir / "raw" / "val").iterdir())
    bad = _write(tmp_path, "\n".join(sample.labels.read_text().split()[:-1]) + "\n")
    with pytest.raises(LabelsError):
        relabel(data_dir, str(bad), extract=True)
    assert DataDir.of(data_dir).catalog_file("val").read_bytes() == before
    assert sorted(p.name for p in (data_dir / "raw" / "val").iterdir()) == flat_before


def test_a_refused_labels_download_is_not_kept_and_a_good_one_is_reused(sample, tmp_path):
    """A labels URL that answers with something else (here an internal service's JSON) is refused and
    nothing of the answer stays in downloads/; a local file the user named is refused but never removed;
    a good answer is kept and reused without a second GET."""
    data_dir = tmp_path / "data"
    downloads = data_dir / "downloads"
    fetch(data_dir, str(sample.train_tar), str(sample.val_tar))
    answer = b'{"instance": "i-0abc", "token": "internal-service-answer"}\n'
    with FileServer(files={"labels.txt": answer}) as server:
        with pytest.raises(LabelsError, match="not a synset id"):
            relabel(data_dir, server.url("labels.txt"))
        assert server.gets("labels.txt"), "the URL was never asked"
        assert not [p.name for p in downloads.iterdir() if "labels.txt" in p.name], "the refused answer stays"

        mine = downloads / "mine.txt"  # a source the user named, even inside downloads/, is only read
        mine.write_bytes(answer)
        with pytest.raises(LabelsError):
            relabel(data_dir, str(mine))
        assert mine.read_bytes() == answer

        server.put("labels.txt", sample.labels.read_bytes())
        result = relabel(data_dir, server.url("labels.txt"))
        assert result.images == sample.val_count
        assert (downloads / "labels.txt").read_bytes() == sample.labels.read_bytes()
        gets = len(server.gets("labels.txt"))
        relabel(data_dir, server.url("labels.txt"))
        assert len(server.gets("labels.txt")) == gets, "a kept download was fetched again"
        assert (downloads / "labels.txt").read_bytes() == sample.labels.read_bytes()
