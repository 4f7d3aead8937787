"""The sample ImageNet generator: layout, determinism, quirks, realism, reuse, atomicity, CLI."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from airflow_resnet_prep import sample as sample_mod
from airflow_resnet_prep.formats.jpeg import REASON_CMYK, REASON_PNG, probe
from airflow_resnet_prep.sample import LABELS, SAMPLE_JSON, TRAIN_TAR, VAL_TAR, SampleSet, class_of, generate

SMALL = {"classes": 2, "train_per_class": 3, "val_per_class": 2}


def read_train(s: SampleSet) -> dict[str, dict[str, bytes]]:
    """synset -> {member name: bytes}, checking the outer tar's members on the way."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(s.train_tar) as outer:
        members = outer.getmembers()
        assert [m.name for m in members] == [f"{syn}.tar" for syn in s.synsets]
        for m in members:
            syn = m.name.removesuffix(".tar")
            with tarfile.open(fileobj=outer.extractfile(m)) as inner:
                out[syn] = {im.name: inner.extractfile(im).read() for im in inner.getmembers()}
    return out


def read_val(s: SampleSet) -> list[tuple[str, bytes]]:
    with tarfile.open(s.val_tar) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]


def all_images(s: SampleSet) -> dict[str, bytes]:
    images = {name: data for members in read_train(s).values() for name, data in members.items()}
    images.update(read_val(s))
    return images


def test_layout_matches_the_real_download(sample: SampleSet) -> None:
    assert sample.train_tar.name == "ILSVRC2012_img_train.tar"
    assert sample.val_tar.name == "ILSVRC2012_img_val.tar"
    assert sample.labels.name == "imagenet_2012_validation_synset_labels.txt"
    assert len(sample.synsets) == 4 and sample.synsets == sorted(set(sample.synsets))
    assert all(re.fullmatch(r"n\d{8}", syn) for syn in sample.synsets)
    assert (sample.train_count, sample.val_count) == (24, 12)

    train = read_train(sample)
    for syn, members in train.items():
        names = list(members)
        assert len(names) == 6
        assert names == sorted(names)
        assert all(re.fullmatch(rf"{syn}_\d+\.JPEG", n) for n in names), names
        # Every image names the class it was generated for.
        assert {class_of(d) for d in members.values()} == {syn}

    val = read_val(sample)
    assert [n for n, _ in val] == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 13)]
    text = sample.labels.read_text()
    assert text.endswith("\n") and "\r" not in text
    labels = text.splitlines()
    assert len(labels) == 12
    assert Counter(labels) == dict.fromkeys(sample.synsets, 3)
    # Line i is the class that generated val image i.
    assert [class_of(d) for _, d in val] == labels
    # Classes are interleaved, not in blocks.
    assert labels != sorted(labels)


def test_tar_headers_are_reproducible(sample: SampleSet) -> None:
    with tarfile.open(sample.train_tar) as outer:
        headers = list(outer.getmembers())
        with tarfile.open(fileobj=outer.extractfile(headers[0])) as inner:
            headers += inner.getmembers()
    with tarfile.open(sample.val_tar) as tf:
        headers += tf.getmembers()
    for m in headers:
        assert m.isreg()
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (sample_mod.MTIME, 0, 0, "", "", 0o644)


def test_same_arguments_give_identical_bytes_whatever_the_workers(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", seed=7, **SMALL)
    b = generate(tmp_path / "b", seed=7, workers=2, **SMALL)
    for name in (TRAIN_TAR, VAL_TAR, LABELS):
        assert (a.root / name).read_bytes() == (b.root / name).read_bytes(), name
    assert (a.synsets, a.quirks) == (b.synsets, b.quirks)

    c = generate(tmp_path / "c", seed=8, **SMALL)
    assert c.synsets != a.synsets
    assert c.train_tar.read_bytes() != a.train_tar.read_bytes()


def test_quirks_are_present_and_detected_by_content(tmp_path: Path) -> None:
    # The smallest set that must carry every quirk: 2 classes x 3 train images.
    s = generate(tmp_path / "q", seed=3, **SMALL)
    train_names = {n for members in read_train(s).values() for n in members}
    kinds = Counter(s.quirks.values())
    assert set(kinds) == {"png", "cmyk", "grayscale", "progressive"}
    assert any(s.quirks[n] == "grayscale" for n in s.quirks if n in train_names)
    assert any(s.quirks[n] == "grayscale" for n in s.quirks if n.startswith("ILSVRC2012_val_"))
    assert all(n in train_names for n, k in s.quirks.items() if k in ("png", "cmyk"))

    for name, data in all_images(s).items():
        info = probe(data, name)
        kind = s.quirks.get(name)
        progressive = info.format == "JPEG" and bool(Image.open(io.BytesIO(data)).info.get("progressive"))
        assert name.endswith(".JPEG")
        if kind == "png":
            assert (info.format, info.reencode_reason) == ("PNG", REASON_PNG)
        elif kind == "cmyk":
            assert (info.components, info.reencode_reason) == (4, REASON_CMYK)
            assert Image.open(io.BytesIO(data)).info["adobe_transform"] == 0
        elif kind == "grayscale":
            assert (info.components, info.reencode_reason) == (1, None)
        elif kind == "progressive":
            assert progressive and (info.components, info.reencode_reason) == (3, None)
        else:
            assert not progressive and (info.format, info.components, info.reencode_reason) == (
                "JPEG",
                3,
                None,
            )


def test_quirk_files_depend_on_the_seed(tmp_path: Path) -> None:
    positions = set()
    for seed in (1, 2, 4):
        s = generate(tmp_path / str(seed), seed=seed, **SMALL)
        assert sorted(s.quirks.values()) == ["cmyk", "grayscale", "grayscale", "png", "progressive"]
        # Names differ with the seed anyway: compare which positions (in tar order) carry which quirk.
        order = list(all_images(s))
        positions.add(tuple(sorted((order.index(n), k) for n, k in s.quirks.items())))
    assert len(positions) > 1


def test_images_are_realistic_and_distinct(sample: SampleSet) -> None:
    images = all_images(sample)
    assert len({hashlib.sha256(d).digest() for d in images.values()}) == len(images) == 36
    jpeg_sizes = []
    for name, data in images.items():
        info = probe(data, name)
        assert 200 <= min(info.width, info.height) <= 750, (name, info)
        assert max(info.width, info.height) <= 1000
        if name not in sample.quirks:
            jpeg_sizes.append(len(data))
    mean = sum(jpeg_sizes) / len(jpeg_sizes)
    assert 70_000 <= mean <= 160_000, mean
    assert min(jpeg_sizes) > 20_000


def test_complete_output_is_reused_and_changed_arguments_regenerate(tmp_path: Path) -> None:
    s = generate(tmp_path, seed=1, **SMALL)
    stat = {name: (s.root / name).stat() for name in (TRAIN_TAR, VAL_TAR, LABELS, SAMPLE_JSON)}
    again = generate(tmp_path, seed=1, **SMALL)
    assert again == s
    for name, st in stat.items():
        assert (s.root / name).stat().st_ino == st.st_ino, f"{name} was rewritten"

    other = generate(tmp_path, seed=2, **SMALL)
    assert other.synsets != s.synsets
    assert json.loads((tmp_path / SAMPLE_JSON).read_text())["args"]["seed"] == 2
    assert other.labels.read_text().splitlines()[0] in other.synsets

    # A damaged output (wrong size) is not trusted: the set is rebuilt.
    other.val_tar.write_bytes(b"partial")
    rebuilt = generate(tmp_path, seed=2, **SMALL)
    assert rebuilt.val_tar.stat().st_size > 100_000


def test_interrupted_run_leaves_no_final_name_on_a_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fault injection: the 4th image fails while the train tar is being written.
    real = sample_mod.render_image
    calls = {"n": 0}

    def failing(spec):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("disk went away")
        return real(spec)

    monkeypatch.setattr(sample_mod, "render_image", failing)
    with pytest.raises(OSError, match="disk went away"):
        generate(tmp_path, seed=1, **SMALL)
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != ".sample.lock")
    assert left == [], left

    monkeypatch.setattr(sample_mod, "render_image", real)
    s = generate(tmp_path, seed=1, **SMALL)
    assert s.train_count == 6 and s.train_tar.is_file()


def test_rejects_impossible_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="classes >= 1"):
        generate(tmp_path, classes=0)
    with pytest.raises(ValueError, match="train_per_class"):
        generate(tmp_path, train_per_class=0)


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "airflow_resnet_prep.sample", "--out", str(out), "--classes", "2"]
    cmd += ["--train-per-class", "3", "--val-per-class", "2", "--seed", "5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "6 images, 2 classes" in proc.stdout
    meta = json.loads((out / SAMPLE_JSON).read_text())
    assert meta["args"] == {"classes": 2, "train_per_class": 3, "val_per_class": 2, "seed": 5}
    assert len((out / LABELS).read_text().splitlines()) == 4
    # Same bytes as the library call.
    lib = generate(tmp_path / "lib", seed=5, **SMALL)
    assert (out / TRAIN_TAR).read_bytes() == lib.train_tar.read_bytes()

    bad = subprocess.run(
        [sys.executable, "-m", "airflow_resnet_prep.sample", "--out", str(out), "--classes", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "classes >= 1" in bad.stderr
