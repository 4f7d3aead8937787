"""``verify`` (issue 20): checksums in the manifest and a check of copies against it.

Real outputs of the sample set (both implementations, the CLI's pipeline), copied as a user would
(``shutil.copytree`` = ``cp -r``) and then damaged in the ways a copy goes wrong: a flipped byte, a file
cut short, a file missing, a line deleted from an index, a stray file. Each must be named by file (and
record or line where there is one); an intact copy must pass, through the real command line too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import google_crc32c
import pytest

from airflow_resnet_prep.converters import base, local
from airflow_resnet_prep.layout import DataDir
from airflow_resnet_prep.pipeline import make_converter, run
from airflow_resnet_prep.verify import verify

FOLDER = {"reference": "tfrecords", "nvidia": "recordio"}
EXTRA = {"reference": {"train_shards": 4, "val_shards": 2, "dali_index": True}, "nvidia": {}}


@pytest.fixture(scope="module")
def outputs(sample, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A finished data_dir per implementation (never modified: tests damage copies)."""
    made = {}
    for impl in ("reference", "nvidia"):
        data_dir = tmp_path_factory.mktemp(f"verify-{impl}")
        run(
            {
                "data_dir": str(data_dir),
                "train_source": str(sample.train_tar),
                "val_source": str(sample.val_tar),
                "labels_source": str(sample.labels),
                "implementation": impl,
                "workers": 2,
                **EXTRA[impl],
            }
        )
        made[impl] = data_dir
    return made


def copy_of(outputs: dict[str, Path], impl: str, tmp_path: Path) -> Path:
    """What lands on a training node: the output folder and the manifest, nothing else (no sources,
    no catalog, no work state)."""
    dest = tmp_path / f"copy-{impl}"
    shutil.copytree(outputs[impl] / FOLDER[impl], dest / FOLDER[impl])
    shutil.copy(outputs[impl] / "manifest.json", dest / "manifest.json")
    return dest


def problems(data_dir: Path, **kwargs) -> list[str]:
    return [str(p) for p in verify(data_dir, **kwargs).problems]


@pytest.mark.parametrize("impl", ["reference", "nvidia"])
def test_manifest_records_the_crc32c_of_every_file_as_written(outputs, impl: str) -> None:
    manifest = json.loads((outputs[impl] / "manifest.json").read_text())
    assert manifest["checks"] == {"crc32c": True, "decode_check": False, "decode_failures": 0}
    assert len(manifest["outputs"]) == (12 if impl == "reference" else 6)
    for key, stats in manifest["outputs"].items():
        data = (outputs[impl] / key).read_bytes()
        assert stats["crc32c"] == f"{google_crc32c.value(data):08x}", key
        assert stats["size"] == len(data)


def test_unit_by_unit_conversion_records_the_same_crc32c(
    outputs, sample, tmp_path: Path, monkeypatch
) -> None:
    """The path mapped Airflow tasks take (units write pieces, finish joins them and their CRCs) gives
    the CRCs the one-machine direct path gave; units of 5 records, so each .rec has several pieces."""
    from airflow_resnet_prep.converters import recordio

    monkeypatch.setattr(recordio, "UNIT_RECORDS", 5)
    data_dir = tmp_path / "units"
    run(
        {
            "data_dir": str(data_dir),
            "train_source": str(sample.train_tar),
            "val_source": str(sample.val_tar),
            "labels_source": str(sample.labels),
            "implementation": "nvidia",
            "workers": 1,
        }
    )
    converter = make_converter("nvidia", {})
    layout = DataDir.of(str(data_dir))
    plan = base.plan(converter, layout, force=True)
    assert len(plan.units) == 5 + 3  # 24 train, 12 val images
    local.run_units(converter, plan, workers=1)  # unit by unit: pieces of an assembly, then finish
    summary = base.finish(converter, plan)
    assert sum(1 for u in summary["outputs"]) == 6
    expected = json.loads((outputs["nvidia"] / "manifest.json").read_text())["outputs"]
    for key, stats in summary["outputs"].items():
        assert (
            stats["crc32c"]
            == expected[key]["crc32c"]
            == f"{google_crc32c.value((data_dir / key).read_bytes()):08x}"
        )


@pytest.mark.parametrize("impl", ["reference", "nvidia"])
def test_an_intact_copy_passes_through_the_command_line(outputs, impl: str, tmp_path: Path) -> None:
    copy = copy_of(outputs, impl, tmp_path)
    done = subprocess.run(  # a relative path, as a user types it next to the copy
        [sys.executable, "-m", "airflow_resnet_prep.verify", copy.name, "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=copy.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: everything matches the manifest" in done.stdout
    assert "36 records" in done.stdout
    assert "verify" in done.stderr and "MiB" in done.stderr  # the progress line: count, rate, ETA
    as_json = subprocess.run(
        [sys.executable, "-m", "airflow_resnet_prep.verify", str(copy), "--json", "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and result["ok"] is True and result["records"] == 36
    assert result["implementation"] == impl and result["problems"] == []


@pytest.mark.parametrize("impl", ["reference", "nvidia"])
def test_a_flipped_byte_is_named_and_fails_the_command(outputs, impl: str, tmp_path: Path) -> None:
    copy = copy_of(outputs, impl, tmp_path)
    name = "train.rec" if impl == "nvidia" else "train-00001-of-00004"
    target = copy / FOLDER[impl] / name
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside an image: the framing still parses
    target.write_bytes(bytes(data))
    done = subprocess.run(
        [sys.executable, "-m", "airflow_resnet_prep.verify", str(copy), "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    fails = [line for line in done.stdout.splitlines() if line.startswith("FAIL ")]
    assert fails, done.stdout
    # Every line names the file, or is the consequence for the class counts of records lost with it.
    assert all(f"{FOLDER[impl]}/{name}" in line or "records per class" in line for line in fails), fails
    assert any("CRC-32C" in line and "changed since it was written" in line for line in fails)
    if impl == "reference":  # TFRecord's own framing CRC places it: the record and its offset
        assert any("corrupt record at offset" in line for line in fails), fails


def test_a_truncated_shard_is_named_with_where_it_ends(outputs, tmp_path: Path) -> None:
    copy = copy_of(outputs, "reference", tmp_path)
    shard = copy / "tfrecords" / "validation-00001-of-00002"
    size = shard.stat().st_size
    with open(shard, "r+b") as fh:
        fh.truncate(size - 5000)
    found = problems(copy)
    key = "tfrecords/validation-00001-of-00002"
    assert f"{key}: {size - 5000:,} bytes, the manifest says {size:,} (cut short)" in found
    assert any(p.startswith(f"{key}: truncated record at offset") for p in found), found
    assert any(p.startswith(f"{key}.idx: ") and "lines, the data file has" in p for p in found), found


@pytest.mark.parametrize("impl", ["reference", "nvidia"])
def test_a_missing_file_is_named(outputs, impl: str, tmp_path: Path) -> None:
    copy = copy_of(outputs, impl, tmp_path)
    name = "val.idx" if impl == "nvidia" else "train-00002-of-00004"
    (copy / FOLDER[impl] / name).unlink()
    found = problems(copy)
    assert f"{FOLDER[impl]}/{name}: missing" in found


def test_a_deleted_idx_line_is_named(outputs, tmp_path: Path) -> None:
    copy = copy_of(outputs, "nvidia", tmp_path)
    idx = copy / "recordio" / "train.idx"
    lines = idx.read_text().splitlines(keepends=True)
    deleted = lines.pop(5)
    idx.write_text("".join(lines))
    found = problems(copy)
    assert "recordio/train.idx: 23 lines, the data file has 24 records" in found, found
    # The first line that no longer matches is the one after the deleted one, now at its place.
    assert any(
        p.startswith("recordio/train.idx (record 5): line 6 is ")
        and repr(deleted.rstrip("\n")) in p.split("says ")[1]
        for p in found
    ), found
    assert not any(p.startswith("recordio/train.rec") for p in found)  # the data file is fine


def test_a_changed_lst_label_and_a_stray_shard_are_named(outputs, tmp_path: Path) -> None:
    copy = copy_of(outputs, "nvidia", tmp_path)
    lst = copy / "recordio" / "val.lst"
    lines = lst.read_text().splitlines(keepends=True)
    index, label, path = lines[2].rstrip("\n").split("\t")
    lines[2] = f"{index}\t{(float(label) + 1) % 4:f}\t{path}\n"
    lst.write_text("".join(lines))
    (copy / "recordio" / "train.rec.bak").write_bytes(b"x")  # not output-like: ignored
    shutil.copy(copy / "recordio" / "val.rec", copy / "recordio" / "train.rec~")
    found = problems(copy)
    assert any(p.startswith(f"recordio/val.lst (record 2, {path}): label") for p in found), found
    assert any(p.startswith("recordio/val.lst: CRC-32C") for p in found), found
    assert not any("train.rec.bak" in p or "train.rec~" in p for p in found)
    ref = copy_of(outputs, "reference", tmp_path)
    shutil.copy(ref / "tfrecords" / "train-00000-of-00004", ref / "tfrecords" / "train-00000-of-00003")
    assert problems(ref) == [
        "tfrecords/train-00000-of-00003: not in the manifest, but named like an output: a reader listing the "
        "folder would read it"
    ]


def test_a_large_file_cut_into_segments_gives_the_same_verdicts(outputs, tmp_path: Path) -> None:
    """The .rec read by several processes, cut at .idx offsets: every byte still counted once (the CRC
    joins), and a damaged byte found in whichever segment holds it."""
    copy = copy_of(outputs, "nvidia", tmp_path)
    report = verify(copy, workers=2, segment_bytes=64 << 10)
    assert report.ok, report.problems
    assert report.records == 36
    rec = copy / "recordio" / "train.rec"
    data = bytearray(rec.read_bytes())
    data[-3000] ^= 0x01
    rec.write_bytes(bytes(data))
    assert [p for p in problems(copy, workers=2, segment_bytes=64 << 10) if "CRC-32C" in p] == [
        p for p in problems(copy, workers=1) if "CRC-32C" in p
    ]


def test_no_manifest_is_named(tmp_path: Path) -> None:
    found = problems(tmp_path)
    assert found == [
        "manifest.json: missing: not a finished output (it is written last), or not the data_dir's root"
    ]


class _TI:
    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


def test_operator_passes_an_intact_copy_and_fails_a_damaged_one_listing_it(outputs, tmp_path: Path) -> None:
    from airflow_resnet_prep.errors import PrepError
    from airflow_resnet_prep.operators.verify import VerifyOperator

    copy = copy_of(outputs, "reference", tmp_path)
    op = VerifyOperator(task_id="verify", data_dir="{{ params.data_dir }}", workers="{{ params.workers }}")
    context = {"params": {"data_dir": str(copy), "workers": 1}, "ti": _TI()}
    op.render_template_fields(context)
    result = op.execute(context)
    assert result["ok"] and result["records"] == 36 and result["problems"] == []
    assert context["ti"].pushed["verify"] == result
    (copy / "tfrecords" / "train-00003-of-00004").unlink()
    with pytest.raises(
        PrepError, match=r"verify found \d+ problems:\n  tfrecords/train-00003-of-00004: missing"
    ):
        op.execute(context)
    assert context["ti"].pushed["verify"]["ok"] is False


def test_decode_finds_size_features_that_disagree_with_the_image(outputs, tmp_path: Path) -> None:
    """A shard rewritten consistently (framing, size, CRC and index all updated in the manifest) but
    with a record whose image/height feature is wrong: only decoding can tell, and --decode does."""
    import io

    from airflow_resnet_prep.formats.tfexample import encode_example, parse_example
    from airflow_resnet_prep.formats.tfrecord import TFRecordWriter, read_records

    copy = copy_of(outputs, "reference", tmp_path)
    key = "tfrecords/validation-00000-of-00002"
    records = read_records(str(copy / key))
    f = parse_example(records[1])
    records[1] = encode_example(
        encoded=f["image/encoded"][0],
        filename=f["image/filename"][0].decode(),
        label=f["image/class/label"][0],
        synset=f["image/class/synset"][0].decode(),
        height=f["image/height"][0] + 1,
        width=f["image/width"][0],
    )
    out = io.BytesIO()
    writer = TFRecordWriter(out)
    for r in records:
        writer.write(r)
    (copy / key).write_bytes(out.getvalue())
    idx = "".join(f"{o} {s}\n" for o, s in zip(writer.offsets, writer.sizes, strict=True))
    (copy / f"{key}.idx").write_text(idx)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["outputs"][key].update(size=writer.position, crc32c=f"{writer.crc:08x}")
    manifest["outputs"][f"{key}.idx"].update(size=len(idx), crc32c=f"{google_crc32c.value(idx.encode()):08x}")
    (copy / "manifest.json").write_text(json.dumps(manifest))

    assert problems(copy) == []  # consistent bytes: nothing to see without decoding
    found = problems(copy, decode=True, workers=1)
    name = f["image/filename"][0].decode()
    h, w = f["image/height"][0], f["image/width"][0]
    assert found == [
        f"{key} (record 1, offset {writer.offsets[1]:,}, {name}): image/height, image/width say "
        f"{h + 1}x{w}, the image decodes to {h}x{w}"
    ]


def test_a_location_verify_cannot_read_exits_2_saying_why() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "airflow_resnet_prep.verify", "ftp://mirror/imagenet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "verify: data_dir 'ftp://mirror/imagenet': unsupported URI" in done.stderr
