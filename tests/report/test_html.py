"""The dataset report (``report/index.html``) for both implementations, checked against the outputs.

Every claim of the page is re-derived here independently: image counts from the manifest, each
thumbnail's class and label by re-reading its record (TensorFlow's own reader for TFRecords, the
package's RecordIO reader plus the ``.lst`` for RecordIO), and each thumbnail's pixels against the
image stored in that record.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import subprocess
import sys
import tarfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageStat

from airflow_resnet_prep import pipeline
from airflow_resnet_prep.catalog.fetch import fetch
from airflow_resnet_prep.catalog.relabel import relabel
from airflow_resnet_prep.converters import local
from airflow_resnet_prep.formats.recordio import iter_records, unpack_header
from airflow_resnet_prep.params import resolved
from airflow_resnet_prep.publish import publish_outputs
from airflow_resnet_prep.report import build as report_build
from airflow_resnet_prep.report import report_path, summary, write_report

REPO = Path(__file__).resolve().parents[2]
IMPLEMENTATIONS = ("reference", "nvidia", "webdataset")
EXTERNAL = ("http:", "https:", "//", "ftp:", "file:")


# -- reading the page back ---------------------------------------------------------------------------
class Page(HTMLParser):
    """Every element with its attributes, the text inside SVG ``<title>``s, and the page's text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.titles: list[str] = []
        self.text: list[str] = []
        self._in_title = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))
        self._in_title = tag == "title"

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_title:
            self.titles.append(data)

    def tags(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [
            a for t, a in self.elements if t == tag and (cls is None or cls in a.get("class", "").split())
        ]

    @property
    def all_text(self) -> str:
        return "".join(self.text)


def read_page(data_dir: Path) -> tuple[str, Page]:
    text = report_path(data_dir).read_text(encoding="utf-8")
    return text, Page(text)


def decode_uri(uri: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix), uri[:40]
    img = Image.open(io.BytesIO(base64.b64decode(uri[len(prefix) :], validate=True)))
    img.load()
    return img


def thumbnails(page: Page, split: str | None = None) -> list[dict[str, str]]:
    """The sample figures, each with the ``src`` of its image."""
    out = []
    current: dict[str, str] | None = None
    for tag, attrs in page.elements:
        if tag == "figure" and "data-position" in attrs:
            current = dict(attrs)
            out.append(current)
        elif tag == "img" and current is not None and "src" not in current:
            current["src"] = attrs["src"]
        elif tag == "figure":
            current = None
    return [t for t in out if split is None or t["data-split"] == split]


# -- making outputs ------------------------------------------------------------------------------------
def jpeg(seed: int, size: tuple[int, int] = (40, 30), fmt: str = "JPEG") -> bytes:
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def run(
    implementation: str, data_dir: Path, train: Path, val: Path, labels: Path | None = None, **params: Any
):
    values = {
        "data_dir": str(data_dir),
        "train_source": str(train),
        "val_source": str(val),
        "implementation": implementation,
        "workers": 1,
        "train_shards": 3,
        "val_shards": 2,
        **params,
    }
    if labels is not None:
        values["labels_source"] = str(labels)
    return pipeline.run(values)


@pytest.fixture(scope="module", params=IMPLEMENTATIONS)
def converted(request, sample, tmp_path_factory) -> tuple[str, Path]:
    """The sample set converted by the pipeline (no report yet), then its report written."""
    implementation = request.param
    data_dir = tmp_path_factory.mktemp(implementation) / "data"
    run(implementation, data_dir, sample.train_tar, sample.val_tar, sample.labels)
    assert not report_path(data_dir).exists()  # the pipeline CLI does not write it: --html does
    write_report(data_dir)
    return implementation, data_dir


def manifest_of(data_dir: Path) -> dict[str, Any]:
    return json.loads((data_dir / "manifest.json").read_text())


# -- the page ------------------------------------------------------------------------------------------
def test_self_contained(converted) -> None:
    _, data_dir = converted
    text, page = read_page(data_dir)
    assert page.tags("script") == [] and "<script" not in text.lower()
    assert page.tags("link") == [] and page.tags("iframe") == [] and page.tags("object") == []
    assert "@import" not in text and "url(" not in text
    refs = [(t, k, a[k]) for t, a in page.elements for k in ("src", "href", "srcset", "action") if k in a]
    assert refs, "the page links nothing at all: the parser saw no thumbnail"
    for tag, attr, value in refs:
        assert not value.strip().lower().startswith(EXTERNAL), (tag, attr, value[:80])
        if attr == "href":
            assert value.startswith("#"), value
        if tag == "img":
            assert value.startswith("data:image/"), value[:40]
    # No handler attribute anywhere (the page needs no script).
    assert not [a for _, a in page.elements if any(k.startswith("on") for k in a)]


def test_counts_equal_the_manifest(converted) -> None:
    _, data_dir = converted
    manifest = manifest_of(data_dir)
    _, page = read_page(data_dir)
    cards = {a["data-key"]: None for a in page.tags("div", "value")}
    assert {"train images", "validation images", "classes", "re-encoded", "left out"} <= set(cards)
    text = report_path(data_dir).read_text()
    for key, value in (
        ("train images", manifest["images"]["train"]),
        ("validation images", manifest["images"]["val"]),
        ("classes", len(manifest["classes"]["train"])),
        ("re-encoded", len(manifest["reencoded"])),
        ("left out", len(manifest["skipped"])),
        ("output files", len(manifest["outputs"])),
    ):
        assert f'data-key="{key}">{value:,}<' in text, key
    # Each class's bar says its count, for both splits, with the label the output stores (im2rec counts
    # from 0, the reference TFRecords from 1).
    titles = set(page.titles)
    first = 1 if manifest["implementation"] == "reference" else 0
    for split in ("train", "val"):
        for label, (synset, count) in enumerate(sorted(manifest["classes"][split].items()), start=first):
            assert f"{synset} (label {label}): {count:,} {split} images" in titles


def _record_image(implementation: str, data_dir: Path, thumb: dict[str, str]) -> tuple[str, str, str, bytes]:
    """``(synset, label, filename, image bytes)`` of the record a thumbnail names, read independently."""
    path = data_dir / thumb["data-file"]
    position = int(thumb["data-position"])
    if implementation == "reference":
        import tensorflow as tf

        spec = {
            "image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/class/synset": tf.io.FixedLenFeature([], tf.string),
            "image/class/label": tf.io.FixedLenFeature([], tf.int64),
            "image/filename": tf.io.FixedLenFeature([], tf.string),
        }
        record = next(iter(tf.data.TFRecordDataset(str(path)).skip(position).take(1)))
        ex = tf.io.parse_single_example(record, spec)
        return (
            ex["image/class/synset"].numpy().decode(),
            str(int(ex["image/class/label"].numpy())),
            ex["image/filename"].numpy().decode(),
            ex["image/encoded"].numpy(),
        )
    if implementation == "webdataset":  # the sample at that position, read with tarfile
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()
        sample = list(members.values())[position]
        meta = json.loads(sample["json"])
        return meta["wnid"], sample["cls"].decode(), meta["filename"], sample["jpg"]
    records = [payload for _, payload in iter_records(path)]
    _flag, label, record_id, _id2, image = unpack_header(records[position])
    lst = {}
    for line in path.with_suffix(".lst").read_text().splitlines():
        index, lst_label, rel = line.split("\t")
        lst[int(index)] = (float(lst_label), rel)
    lst_label, rel = lst[record_id]
    assert lst_label == label
    synset, _, name = rel.partition("/")
    return synset, str(int(label)), name, image


def _small(img: Image.Image) -> Image.Image:
    return img.convert("RGB").resize((12, 12), Image.Resampling.BOX)


def test_thumbnails_decode_and_match_their_records(converted) -> None:
    implementation, data_dir = converted
    manifest = manifest_of(data_dir)
    _, page = read_page(data_dir)
    thumbs = thumbnails(page)
    train, val = thumbnails(page, "train"), thumbnails(page, "val")
    assert len(train) == min(24, manifest["images"]["train"]) and len(val) == min(
        12, manifest["images"]["val"]
    )
    # Spread over files and positions: several shards for reference, and never one position twice.
    assert len({(t["data-file"], t["data-position"]) for t in thumbs}) == len(thumbs)
    if implementation in ("reference", "webdataset"):
        assert len({t["data-file"] for t in train}) == 3 and len({t["data-file"] for t in val}) == 2
    else:
        assert {t["data-file"] for t in thumbs} == {"recordio/train.rec", "recordio/val.rec"}
    previous = None
    for t in thumbs:
        shown = decode_uri(t["src"])
        assert max(shown.size) <= 160 and shown.mode == "RGB"
        synset, label, filename, image = _record_image(implementation, data_dir, t)
        assert (t["data-synset"], t["data-label"]) == (synset, label), (
            t["data-file"] + "#" + t["data-position"]
        )
        # ... and the class chart gives that class the same label.
        assert any(title.startswith(f"{synset} (label {label}): ") for title in page.titles)
        assert filename in report_path(data_dir).read_text()
        stored = Image.open(io.BytesIO(image))
        # The thumbnail is that record's image: close to it, far from another record's.
        own = ImageStat.Stat(ImageChops.difference(_small(shown), _small(stored))).mean
        assert max(own) < 12, (t["data-file"], t["data-position"], own)
        if previous is not None:
            other = ImageStat.Stat(ImageChops.difference(_small(shown), _small(previous))).mean
            assert sum(other) > sum(own)
        previous = stored


def test_reencoded_images_are_listed_with_reason_and_preview(converted) -> None:
    implementation, data_dir = converted
    manifest = manifest_of(data_dir)
    text, page = read_page(data_dir)
    listed = page.tags("figure", "listed")
    assert len(listed) == len(manifest["reencoded"]) + len(manifest["skipped"])
    if implementation in ("reference", "webdataset"):
        assert {e["reason"] for e in manifest["reencoded"]} >= {"PNG image", "CMYK JPEG"}
    for entry in manifest["reencoded"]:
        assert f'<span class="fn" title="{entry["name"]}">' in text and entry["name"] in page.all_text
        assert f'<span class="reason">{entry["reason"]}</span>' in text
    previews = [
        a["src"]
        for t, a in page.elements
        if t == "img" and a.get("alt") in {e["name"] for e in manifest["reencoded"]}
    ]
    assert len(previews) == len(manifest["reencoded"])
    for uri in previews:
        decode_uri(uri)
    # reference: each is also shown as stored, read back from the shard and record the figure names.
    stored = [a for a in listed if "data-stored-file" in a]
    assert len(stored) == (len(manifest["reencoded"]) if implementation != "nvidia" else 0)
    names = {e["name"] for e in manifest["reencoded"]}
    for figure in stored:
        thumb = {"data-file": figure["data-stored-file"], "data-position": figure["data-stored-position"]}
        synset, _label, filename, image = _record_image(implementation, data_dir, thumb)
        assert filename in names and (synset, filename) in {
            (e["synset"], e["name"]) for e in manifest["reencoded"]
        }
        [uri] = [a["src"] for t, a in page.elements if t == "img" and a.get("alt") == f"{filename} as stored"]
        own = ImageStat.Stat(
            ImageChops.difference(_small(decode_uri(uri)), _small(Image.open(io.BytesIO(image))))
        )
        assert max(own.mean) < 12


# -- skewed classes, hostile names, bad images -------------------------------------------------------
HOSTILE_FILE = "<img src=x onerror=alert(1)>.JPEG"
HOSTILE_BAD = "\"'><svg onload=alert(2)>&amp;.jpg"  # no "/": it is one file name
HOSTILE_CLASS = "n9<b onmouseover=alert(3)>"


@pytest.fixture(scope="module")
def skewed(tmp_path_factory) -> Path:
    """nvidia output of a tree whose class n00000005 has far fewer images, with hostile names and bad images."""
    root = tmp_path_factory.mktemp("skewed")
    files = {}
    # Four images in every class (counting the bad and hostile ones: the counts are the catalog's) but
    # n00000005, with one: mean 3.5, so 4 is +14% (within 25%) and 1 is -71% (far).
    for c in range(1, 5):
        for i in range(4 if c == 4 else 3):
            files[f"n0000000{c}/n0000000{c}_{i}.JPEG"] = jpeg(c * 10 + i)
    files["n00000005/n00000005_0.JPEG"] = jpeg(99)
    files[f"n00000001/{HOSTILE_FILE}"] = jpeg(7)
    files[f"{HOSTILE_CLASS}/a.JPEG"] = jpeg(8)
    files[f"{HOSTILE_CLASS}/b.JPEG"] = jpeg(9)
    files[f"{HOSTILE_CLASS}/c.JPEG"] = jpeg(10)
    files[f"{HOSTILE_CLASS}/d.JPEG"] = jpeg(11)
    files[f"n00000002/{HOSTILE_BAD}"] = b"this is not an image"
    files["n00000003/empty.JPEG"] = b""
    train = write_tree(root / "train", files)
    val = write_tree(
        root / "val",
        {f"{s}/v{s[-1]}.JPEG": jpeg(i) for i, s in enumerate(sorted({k.split("/")[0] for k in files}))},
    )
    data_dir = root / "data"
    run("nvidia", data_dir, train, val, on_bad_image="skip")
    write_report(data_dir)
    return data_dir


def test_classes_far_from_the_mean_are_flagged_and_listed(skewed: Path) -> None:
    manifest = manifest_of(skewed)
    counts = manifest["classes"]["train"]
    assert counts["n00000005"] == 1 and set(counts.values()) == {1, 4}
    text, page = read_page(skewed)
    far_bars = [t for t in page.titles if "from the mean" in t and "train images" in t]
    assert len(far_bars) == 1 and far_bars[0].startswith("n00000005 (label 4): 1 train images, -")
    assert len(page.tags("rect", "far")) == 1
    assert "1 class far from the mean" in page.all_text
    assert "more than 25% above or below" in page.all_text
    # The table lists the far class, and only it.
    assert "<code>n00000005</code>" in text
    assert not any(f"<code>n0000000{c}</code>" in text for c in range(1, 5))


def test_even_classes_have_no_outlier(converted) -> None:
    _, data_dir = converted
    _, page = read_page(data_dir)
    assert page.tags("rect", "far") == []
    assert "No class is far from its split's mean." in page.all_text


def test_hostile_names_are_escaped(skewed: Path) -> None:
    text, page = read_page(skewed)
    for raw in (HOSTILE_FILE, HOSTILE_BAD, HOSTILE_CLASS, "<svg onload", "<b onmouseover", "<img src=x"):
        assert raw not in text
    assert page.tags("script") == [] and page.tags("b") == [] and len(page.tags("svg")) == 4  # the charts
    assert [a for _, a in page.elements if any(k.startswith("on") for k in a)] == []
    # The names are there, as text: the parser gives them back unchanged.
    assert HOSTILE_CLASS in page.all_text and HOSTILE_BAD in page.all_text
    assert HOSTILE_CLASS in "".join(page.titles)


def test_skipped_images_are_listed_with_reason(skewed: Path) -> None:
    manifest = manifest_of(skewed)
    assert {s["name"] for s in manifest["skipped"]} == {HOSTILE_BAD, "empty.JPEG"}
    _, page = read_page(skewed)
    text = page.all_text
    assert "Left out (2)" in text and "left out" in text
    for entry in manifest["skipped"]:
        assert entry["name"] in text and entry["reason"] in text
    # Neither can be previewed: the page says why instead of showing an image.
    assert "no preview: empty (0 bytes)" in text
    assert "no preview: not an image format Pillow can read" in text
    assert [a for t, a in page.elements if t == "img" and a.get("alt") in (HOSTILE_BAD, "empty.JPEG")] == []


# -- writing: CLI, publish, atomicity, imports -----------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run(
        [sys.executable, "-m", "airflow_resnet_prep.report", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def test_cli_html_writes_the_report_of_a_cli_output(sample, tmp_path: Path) -> None:
    data_dir = tmp_path / "cli data"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "airflow_resnet_prep.pipeline",
            "--data-dir",
            str(data_dir),
            "--train-source",
            str(sample.train_tar),
            "--val-source",
            str(sample.val_tar),
            "--labels-source",
            str(sample.labels),
            "--implementation",
            "nvidia",
            "--param",
            "workers=1",
        ],
        check=True,
        capture_output=True,
        cwd=REPO,
        timeout=300,
    )
    report = data_dir / "report" / "index.html"
    plain = _cli(str(data_dir))
    assert plain.returncode == 0 and "  manifest: " in plain.stdout and "report:" not in plain.stdout
    assert not report.exists()
    written = _cli(str(data_dir), "--html")
    assert written.returncode == 0, written.stderr
    assert f"  report: {report}" in written.stdout.splitlines()
    assert report.is_file() and os.listdir(report.parent) == ["index.html"]
    first = report.read_text()
    assert "nvidia" in first and len(thumbnails(Page(first))) == 36
    # Without --html the summary now names the report; --html again rewrites it in place.
    assert f"  report: {report}" in _cli(str(data_dir)).stdout.splitlines()
    report.write_text("stale")
    assert _cli(str(data_dir), "--html").returncode == 0
    assert report.read_text() == first  # the same output gives the same page
    assert summary(str(data_dir)).endswith(f"report: {report}")


def test_cli_html_without_a_manifest_fails(tmp_path: Path) -> None:
    result = _cli(str(tmp_path), "--html")
    assert result.returncode == 1
    assert "no manifest" in result.stderr and not (tmp_path / "report").exists()


def test_a_failed_rewrite_keeps_the_previous_report(skewed: Path, monkeypatch) -> None:
    before = report_path(skewed).read_text()

    def broken(page):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(report_build, "render", broken)
    with pytest.raises(RuntimeError):
        write_report(skewed)
    assert report_path(skewed).read_text() == before
    assert os.listdir(report_path(skewed).parent) == ["index.html"]


def test_publish_writes_the_report_and_returns_its_path(sample, tmp_path: Path, caplog) -> None:
    data_dir = tmp_path / "data"
    p = resolved(
        {
            "data_dir": str(data_dir),
            "train_source": str(sample.train_tar),
            "val_source": str(sample.val_tar),
            "labels_source": str(sample.labels),
            "implementation": "nvidia",
            "workers": 1,
        }
    )
    fetched = fetch(p["data_dir"], p["train_source"], p["val_source"]).to_dict()
    relabelled = relabel(p["data_dir"], p["labels_source"]).to_dict()
    conversion = local.convert(pipeline.make_converter("nvidia", p), p["data_dir"], workers=1)
    out = publish_outputs(p, fetched=fetched, relabelled=relabelled, summary=conversion)
    report = data_dir / "report" / "index.html"
    assert out["report"] == str(report) and out["cached"] is False
    assert report.is_file() and (data_dir / "manifest.json").is_file()
    assert len(thumbnails(Page(report.read_text()))) == 36
    assert "reused this output" not in report.read_text()
    # A reused output's report is rewritten saying so on top, with the settings that did not matter ...
    report.write_text("stale")
    quality_80 = {**p, "quality": 80}  # unused with resize=0: no reason to convert
    again = publish_outputs(quality_80, fetched=fetched, relabelled=relabelled, summary=None)
    assert again["report"] == str(report) and again["cached"] is True
    assert "quality=80 (written with 95)" in again["reused"]
    page = report.read_text()
    assert "The latest run reused this output" in page and "quality=80 (written with 95)" in page
    assert "Sample records" in page
    # ... and gets one when it has none.
    report.unlink()
    assert publish_outputs(p, fetched=fetched, relabelled=relabelled, summary=None)["report"] == str(report)
    assert "Sample records" in report.read_text()


def test_importing_the_report_loads_neither_tensorflow_nor_pillow() -> None:
    code = (
        "import sys, airflow_resnet_prep.report, airflow_resnet_prep.publish; "
        "print(sorted(m for m in ('tensorflow', 'PIL') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_report_needs_no_tensorflow(converted, tmp_path: Path) -> None:
    """Both implementations' reports are written with TensorFlow made unimportable."""
    _, data_dir = converted
    before = report_path(data_dir).read_text()
    code = (
        "import sys; sys.modules['tensorflow'] = None; "
        "from airflow_resnet_prep.report import write_report; "
        f"write_report({str(data_dir)!r})"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.returncode == 0, result.stderr
    after = report_path(data_dir).read_text()
    # Same page but for nothing: samples, classes and sizes are all made without TensorFlow.
    assert len(thumbnails(Page(after))) == len(thumbnails(Page(before))) == 36


def test_samples_read_only_the_records_they_show(converted, monkeypatch) -> None:
    """Bounded I/O: a few hundred bytes per record walked past, plus the records shown (never a whole file)."""
    from airflow_resnet_prep.formats import tfrecord as tfrecord_module
    from airflow_resnet_prep.report import samples as samples_module
    from airflow_resnet_prep.report.stats import data_files

    implementation, data_dir = converted
    files = data_files(manifest_of(data_dir))
    read = {"bytes": 0}
    real_pread = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        data = real_pread(fd, n, offset)
        read["bytes"] += len(data)
        return data

    # Every read of an output goes through the store, i.e. one os.pread each on a local disk.
    monkeypatch.setattr(tfrecord_module.os, "pread", pread)
    # The sample set has as many train images as the page shows: ask for fewer, so most are not read.
    monkeypatch.setattr(samples_module, "SAMPLES", {"train": 4, "val": 2})
    from airflow_resnet_prep.storage import LocalStore

    # Read through the data_dir's store, as write_report does: locally every read is one pread.
    shown = samples_module.output_samples(LocalStore(data_dir), implementation, files)
    assert len(shown) == 6 and all(s.thumb.uri for s in shown)
    records = sum(r for split in files.values() for _, _, r in split)
    output_bytes = sum(size for split in files.values() for _, size, _ in split)
    # Heads walked past (12 bytes each, reference; three 512-byte tar headers, webdataset) and each shown
    # record with its framing and features (its .cls and .json members).
    walked, framing = (3 * 512, 3 * 512 + 512) if implementation == "webdataset" else (12, 512)
    assert 0 < read["bytes"] <= sum(s.size + framing for s in shown) + walked * records
    assert read["bytes"] < output_bytes / 3


def test_the_same_output_gives_the_same_page(skewed: Path) -> None:
    """Deterministic: same samples, no timestamps of its own, no object addresses in error texts."""
    before = report_path(skewed).read_bytes()
    write_report(skewed)
    assert report_path(skewed).read_bytes() == before


def test_a_report_that_fails_does_not_fail_publish(sample, tmp_path: Path, monkeypatch, caplog) -> None:
    """The output is complete when the report is written: a broken report is logged, publish succeeds."""
    from airflow_resnet_prep import publish

    data_dir = tmp_path / "data"
    run("nvidia", data_dir, sample.train_tar, sample.val_tar, sample.labels)
    p = resolved(
        {
            "data_dir": str(data_dir),
            "train_source": str(sample.train_tar),
            "val_source": str(sample.val_tar),
            "implementation": "nvidia",
        }
    )

    def broken(data_dir, **kwargs):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(publish, "write_report", broken)
    out = publish_outputs(p, fetched={"imagenet_path": str(sample.train_tar)}, relabelled={}, summary=None)
    assert out["report"] is None and out["cached"] is True
    assert "could not write the dataset report" in caplog.text and "renderer broke" in caplog.text
    assert not report_path(data_dir).exists()


def test_example_parser_reads_the_writer_and_survives_damaged_records() -> None:
    """Record bytes are untrusted: a damaged Example raises the package's error or parses, nothing else."""
    from airflow_resnet_prep.formats.tfexample import ExampleParseError, encode_example, parse_example

    image = jpeg(3, (64, 48))
    record = encode_example(
        encoded=image, filename="n01_1.JPEG", label=1000, synset="n01", height=48, width=64
    )
    features = parse_example(record)
    assert features["image/encoded"] == [image] and features["image/filename"] == [b"n01_1.JPEG"]
    assert features["image/class/label"] == [1000] and features["image/class/synset"] == [b"n01"]
    assert features["image/height"] == [48] and features["image/width"] == [64]
    assert features["image/format"] == [b"JPEG"] and features["image/channels"] == [3]
    rng = random.Random(0)
    outcomes = set()
    for _ in range(400):
        # Cut anywhere, or flip a few bytes among the first 400 (where the keys and lengths are).
        data = bytearray(record[: rng.randrange(len(record))] if rng.random() < 0.5 else record)
        for _ in range(rng.randrange(1, 6)):
            if data:
                data[rng.randrange(min(len(data), 400))] = rng.randrange(256)
        try:
            parse_example(bytes(data))
            outcomes.add("parsed")
        except ExampleParseError:
            outcomes.add("error")
    assert outcomes == {"parsed", "error"}
