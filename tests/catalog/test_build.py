"""Catalog building (``catalog/build.py``): tars read in place, folders, and every bad or hostile archive's error."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from airflow_resnet_prep.catalog.build import build_split_catalog
from airflow_resnet_prep.catalog.fetch import fetch
from airflow_resnet_prep.catalog.model import ImageReader
from airflow_resnet_prep.errors import SourceError, UnsafeArchiveError
from tests.support.tars import add_file as _file
from tests.support.tars import add_link as _link
from tests.support.tars import tar_with as _tar_with


def test_tar_catalog_reads_every_image_in_place(sample, extracted):
    train = build_split_catalog("train", sample.train_tar)
    assert len(train) == sample.train_count
    assert train.synsets == sample.synsets
    with ImageReader(train.sources) as reader:
        for ref in train.images:
            assert reader.read(ref) == (extracted / "train" / ref.synset / ref.name).read_bytes()
    val = build_split_catalog("val", sample.val_tar)
    assert len(val) == sample.val_count and not val.labelled
    assert [r.name for r in val.images] == sorted(p.name for p in (extracted / "val").iterdir())


def test_tar_and_folder_catalogs_agree(sample, extracted):
    from_tar = build_split_catalog("train", sample.train_tar)
    from_dir = build_split_catalog("train", extracted / "train")
    assert [(r.synset, r.name, r.size) for r in from_tar.images] == [
        (r.synset, r.name, r.size) for r in from_dir.images
    ]
    with ImageReader(from_tar.sources) as a, ImageReader(from_dir.sources) as b:
        for x, y in zip(from_tar.images, from_dir.images, strict=True):
            assert a.read(x) == b.read(y)


# -- bad and hostile archives ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda t: _file(t, "/etc/evil.JPEG"), "absolute path"),
        (lambda t: _file(t, "n01/../../evil.JPEG"), r"outside the archive \('..'\)"),
        (lambda t: _link(t, "n01/x.JPEG", "/etc/passwd", tarfile.SYMTYPE), "symbolic link"),
        (lambda t: _link(t, "n01/x.JPEG", "../../outside", tarfile.LNKTYPE), "hard link"),
        (lambda t: _link(t, "n01/dev.JPEG", "", tarfile.CHRTYPE), "device or FIFO"),
    ],
)
def test_hostile_members_are_refused_and_nothing_is_written(tmp_path, build, message):
    archive = _tar_with(tmp_path / "evil.tar", build)
    data_dir = tmp_path / "data"
    with pytest.raises(UnsafeArchiveError, match=message) as info:
        fetch(data_dir, str(archive), str(archive), extract=True)
    assert str(archive) in str(info.value)
    written = {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()}
    assert written <= {Path("evil.tar"), Path("data/.lock")}


def test_hostile_member_inside_a_nested_tar_is_refused(tmp_path):
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as tar:
        _link(tar, "x.JPEG", "/etc/shadow", tarfile.SYMTYPE)
    archive = _tar_with(tmp_path / "train.tar", lambda t: _file(t, "n01440764.tar", inner.getvalue()))
    with pytest.raises(UnsafeArchiveError, match=r"n01440764.tar.*symbolic link"):
        build_split_catalog("train", archive)


@pytest.mark.parametrize("fraction", [0.013, 0.31, 0.5, 0.77, 0.999])
def test_truncated_archives_fail_naming_the_file(sample, tmp_path, fraction):
    data = sample.train_tar.read_bytes()
    content = len(data.rstrip(b"\0"))  # a cut in the end-of-archive padding loses nothing
    cut = tmp_path / "train.tar"
    cut.write_bytes(data[: int(content * fraction)])
    with pytest.raises(SourceError, match=r"truncated|corrupt|not a readable tar") as info:
        build_split_catalog("train", cut)
    assert str(cut) in str(info.value)


def test_not_a_tar_and_empty_sources(tmp_path):
    text = tmp_path / "notes.tar"
    text.write_text("this is not an archive\n" * 100)
    with pytest.raises(SourceError, match=r"not a readable tar|corrupt"):
        build_split_catalog("train", text)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(SourceError, match="holds no images"):
        build_split_catalog("val", empty_dir)
    with pytest.raises(SourceError, match="does not exist"):
        build_split_catalog("train", tmp_path / "missing.tar")


def test_duplicate_images_and_flat_train_are_errors(tmp_path):
    dup = _tar_with(tmp_path / "dup.tar", lambda t: (_file(t, "n01/a.JPEG"), _file(t, "n01/a.JPEG")))
    with pytest.raises(SourceError, match=r"duplicate image n01/a\.JPEG"):
        build_split_catalog("train", dup)
    flat = _tar_with(tmp_path / "flat.tar", lambda t: _file(t, "a.JPEG"))
    with pytest.raises(SourceError, match="grouped by class"):
        build_split_catalog("train", flat)
