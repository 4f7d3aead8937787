"""The ``nvidia`` converter (SPEC §4): ``recordio/{train,val}.{lst,rec,idx}`` as im2rec writes them.

What is expected is derived here from the spec, independently of the package: a small ``.rec`` reader
(magic, length words, continuation flags, padding), im2rec's walk-and-shuffle listing, and a golden
``.rec`` built by hand for a tiny tree whose images carry the RecordIO magic at aligned and unaligned
offsets. Then the same outputs are checked against the real im2rec and read back by MXNet 1.9.1
(``.venv-mxnet``; these tests fail with a hint, never skip, when it is missing).
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from airflow_resnet_prep import pipeline
from airflow_resnet_prep.catalog.fetch import fetch
from airflow_resnet_prep.catalog.relabel import relabel
from airflow_resnet_prep.converters import base, local, recordio
from airflow_resnet_prep.converters.recordio import RecordIOConverter
from airflow_resnet_prep.errors import BadImageError, PrepError, SourceError
from airflow_resnet_prep.formats.recordio import iter_records, unpack_header
from tests.support.mxnet_tools import read_with_mxnet, require_mxnet, run_im2rec

M = struct.pack("<I", 0xCED7230A)  # the RecordIO magic as it sits in the file
LEN_MASK = (1 << 29) - 1
EXTS = (".jpeg", ".jpg", ".png")
SPLITS = ("train", "val")
OUTPUTS = [f"{split}.{ext}" for split in SPLITS for ext in ("lst", "rec", "idx")]


# -- the spec, written out independently of the package -------------------------------------------
def spec_frame(payload: bytes) -> bytes:
    """One record framed as SPEC §4 says (dmlc-core's writer): split at every aligned magic."""
    out = bytearray()
    start = 0
    for i in range(0, len(payload) // 4 * 4, 4):
        if payload[i : i + 4] == M:
            cflag = 1 if start == 0 else 2
            out += M + struct.pack("<I", cflag << 29 | (i - start)) + payload[start:i]
            start = i + 4
    cflag = 3 if start else 0
    out += M + struct.pack("<I", cflag << 29 | (len(payload) - start)) + payload[start:]
    out += b"\0" * (-len(payload) % 4)
    return bytes(out)


def spec_records(path: Path) -> list[tuple[int, list[tuple[int, int]], bytes]]:
    """``(offset, [(cflag, length) per part], payload)`` for each record of ``path``, checking the framing."""
    data = path.read_bytes()
    records = []
    pos = 0
    while pos < len(data):
        start, parts, chunks = pos, [], []
        while True:
            assert data[pos : pos + 4] == M, f"{path}: no magic at offset {pos}"
            (lrec,) = struct.unpack_from("<I", data, pos + 4)
            cflag, length = lrec >> 29, lrec & LEN_MASK
            # A record starts with cflag 0 (whole) or 1 (first of a split); 2 and 3 only continue one.
            assert (cflag in (2, 3)) == bool(parts), f"{path}: cflag {cflag} out of sequence at {pos}"
            body = data[pos + 8 : pos + 8 + length]
            assert len(body) == length, f"{path}: part at {pos} runs past the end"
            parts.append((cflag, length))
            pos += 8 + length
            chunks.append(body)
            if cflag in (1, 2):
                assert length % 4 == 0, f"{path}: a split part at {start} is not 4-aligned"
                chunks.append(M)  # dropped by the writer, put back by the reader
                continue
            pad = -length % 4
            assert data[pos : pos + pad] == b"\0" * pad, f"{path}: padding at {pos} is not zeros"
            pos += pad
            break
        payload = b"".join(chunks)
        # The writer escapes every aligned magic and nothing else: the splits are exactly those.
        aligned = [i for i in range(0, len(payload) // 4 * 4, 4) if payload[i : i + 4] == M]
        assert len(aligned) == len(parts) - 1, f"{path}: record at {start} has unescaped aligned magics"
        records.append((start, parts, payload))
    return records


def spec_listing(root: Path) -> list[tuple[int, str, int]]:
    """im2rec ``--list --recursive``: sorted walk, index in walk order, label per folder holding images,
    then ``random.seed(100); random.shuffle``."""
    items: list[tuple[int, str, int]] = []
    folders: dict[str, int] = {}
    for path, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        files.sort()
        for name in files:
            if os.path.splitext(name)[1].lower() in EXTS:
                label = folders.setdefault(path, len(folders))
                items.append((len(items), os.path.relpath(os.path.join(path, name), root), label))
    state = random.getstate()
    try:
        random.seed(100)
        random.shuffle(items)
    finally:
        random.setstate(state)
    return items


def lst_text(listing: list[tuple[int, str, int]]) -> str:
    # im2rec's write_list: "%d\t" index, "%f\t" label, "%s\n" path.
    return "".join("%d\t%f\t%s\n" % (index, label, rel) for index, rel, label in listing)  # noqa: UP031


def read_idx(path: Path) -> list[tuple[int, int]]:
    return [(int(k), int(v)) for k, v in (line.split("\t") for line in path.read_text().splitlines())]


def read_lst(path: Path) -> list[tuple[int, str, float]]:
    rows = []
    for line in path.read_text().splitlines():
        index, label, rel = line.split("\t")
        rows.append((int(index), rel, float(label)))
    return rows


def check_split(
    out_dir: Path,
    split: str,
    root: Path,
    *,
    skipped: frozenset[str] = frozenset(),
    image_check: Callable[[bytes, bytes], None] | None = None,
) -> list[bytes]:
    """Every record of ``split`` against its ``.lst`` line, its ``.idx`` line and the source file under
    ``root``; the ``.lst`` against im2rec's rule for that tree minus ``skipped``. Returns the images."""
    listing = [x for x in spec_listing(root) if x[1] not in skipped]
    lst_path = out_dir / f"{split}.lst"
    assert lst_path.read_text() == lst_text(listing)
    lst = read_lst(lst_path)
    idx = read_idx(out_dir / f"{split}.idx")
    records = spec_records(out_dir / f"{split}.rec")
    assert len(lst) == len(idx) == len(records) == len(listing)
    # The package's reader agrees with ours on offsets and payloads.
    assert [(o, p) for o, _, p in records] == list(iter_records(out_dir / f"{split}.rec"))
    images = []
    for (index, rel, label), (key, offset), (rec_offset, _, payload) in zip(lst, idx, records, strict=True):
        assert key == index and offset == rec_offset, rel
        assert payload[:24] == struct.pack("<IfQQ", 0, label, index, 0), rel
        flag, got_label, got_id, id2, image = unpack_header(payload)
        assert (flag, got_label, got_id, id2) == (0, label, index, 0)
        source = (root / rel).read_bytes()
        if image_check is None:
            assert image == source, f"{rel}: stored bytes differ from the source file"
        else:
            image_check(image, source)
        images.append(image)
    return images


def outputs_of(data_dir: Path) -> dict[str, bytes]:
    return {name: (data_dir / "recordio" / name).read_bytes() for name in OUTPUTS}


def tmp_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.tmp"))


# -- building small inputs ----------------------------------------------------------------------------
def small_jpeg(seed: int, size: tuple[int, int] = (24, 16)) -> bytes:
    rng = random.Random(seed)
    img = Image.frombytes("RGB", size, bytes(rng.randrange(256) for _ in range(size[0] * size[1] * 3)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def with_comment(jpeg: bytes, comment: bytes) -> bytes:
    """``jpeg`` with a COM segment right after SOI: the comment's first byte is at image offset 6."""
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def run_nvidia(data_dir: Path, train: Path | str, val: Path | str, labels: Path | str = "", **params):
    values = {
        "data_dir": str(data_dir),
        "train_source": str(train),
        "val_source": str(val),
        "implementation": "nvidia",
        "workers": 1,
        **params,
    }
    if labels:
        values["labels_source"] = str(labels)
    return pipeline.run(values)


def good_tree(root: Path, extra: dict[str, bytes] | None = None) -> tuple[Path, Path]:
    """train and val folder sources with two classes of small images (val holds every class)."""
    train = write_tree(
        root / "train",
        {
            "n00000001/n00000001_1.JPEG": small_jpeg(1),
            "n00000001/n00000001_2.JPEG": small_jpeg(2),
            "n00000002/n00000002_1.JPEG": small_jpeg(3),
            **(extra or {}),
        },
    )
    val = write_tree(
        root / "val",
        {"n00000001/ILSVRC2012_val_00000001.JPEG": small_jpeg(4), "n00000002/v2.JPEG": small_jpeg(5)},
    )
    return train, val


# -- fixtures: one conversion of the sample set, and im2rec on the same trees ------------------------
@pytest.fixture(scope="module")
def converted(sample, tmp_path_factory) -> Path:
    """The sample set through fetch (extracted) -> relabel -> nvidia, one unit per split."""
    data_dir = tmp_path_factory.mktemp("nvidia") / "data"
    run_nvidia(data_dir, sample.train_tar, sample.val_tar, sample.labels, extract=True)
    return data_dir


@pytest.fixture(scope="module")
def im2rec_out(converted, tmp_path_factory) -> Path:
    require_mxnet()
    out = tmp_path_factory.mktemp("im2rec")
    for split in SPLITS:
        run_im2rec(converted / "raw" / split, out / split)
    return out


# -- the sample set -----------------------------------------------------------------------------------
@pytest.mark.parametrize("split", SPLITS)
def test_sample_records_match_lst_idx_and_sources(converted: Path, split: str) -> None:
    root = converted / "raw" / split
    images = check_split(converted / "recordio", split, root)
    synsets = sorted(p.name for p in root.iterdir())
    assert len(synsets) == 4 and len(images) == (24 if split == "train" else 12)
    # Labels are the 0-based index of the class folder among the sorted folders; ids are walk order.
    walk = [f"{s}/{f}" for s in synsets for f in sorted(os.listdir(root / s))]
    for index, rel, label in read_lst(converted / "recordio" / f"{split}.lst"):
        assert label == synsets.index(rel.split("/")[0])
        assert walk[index] == rel
    # Shuffled: the order of records is not the walk order.
    assert [i for i, _, _ in read_lst(converted / "recordio" / f"{split}.lst")] != list(range(len(walk)))


def test_manifest_lists_the_outputs(converted: Path) -> None:
    manifest = json.loads((converted / "manifest.json").read_text())
    assert manifest["implementation"] == "nvidia"
    for name in OUTPUTS:
        stats = manifest["outputs"][f"recordio/{name}"]
        assert stats["size"] == (converted / "recordio" / name).stat().st_size
        assert stats["records"] == (24 if name.startswith("train") else 12)
    assert manifest["skipped"] == []
    assert tmp_files(converted) == []
    assert not (converted / "work" / "nvidia" / "parts").exists()


@pytest.mark.parametrize("split", SPLITS)
def test_same_bytes_as_im2rec(converted: Path, im2rec_out: Path, split: str) -> None:
    for ext in ("lst", "rec", "idx"):
        ours = (converted / "recordio" / f"{split}.{ext}").read_bytes()
        theirs = (im2rec_out / f"{split}.{ext}").read_bytes()
        assert ours == theirs, f"{split}.{ext} differs from im2rec's ({len(ours)} vs {len(theirs)} bytes)"


def test_mxnet_reads_our_files(converted: Path) -> None:
    require_mxnet()
    for split in SPLITS:
        out = converted / "recordio"
        got = read_with_mxnet(out / f"{split}.rec", out / f"{split}.idx")
        lst = read_lst(out / f"{split}.lst")
        assert len(got) == len(lst)
        for (key, label, id1, image), (index, rel, lst_label) in zip(got, lst, strict=True):
            assert (key, id1, label) == (index, index, lst_label)
            assert image == (converted / "raw" / split / rel).read_bytes()


# -- golden bytes for a tiny tree -----------------------------------------------------------------------
def test_golden_rec_for_a_tiny_tree(tmp_path: Path) -> None:
    # Payload offset = 24 (image header) + image offset, so image offsets that are multiples of 4 are
    # aligned. COM data starts at image offset 6.
    aligned = with_comment(small_jpeg(10), b"\0\0" + M + M + b"tail")  # magics at image offsets 8 and 12
    unaligned = with_comment(small_jpeg(11), b"\0\0\0" + M + b"x")  # magic at image offset 9
    plain = small_jpeg(12)
    plain += b"\0" * (-len(plain) % 4) + M  # after EOI: the last 4 bytes, aligned -> an empty last part
    assert [aligned.find(M) % 4, aligned.find(M, 9) % 4, unaligned.find(M) % 4, plain.rfind(M) % 4] == [
        0,
        0,
        1,
        0,
    ]
    files = {
        "n00000001/a.JPEG": aligned,
        "n00000001/b.JPEG": unaligned,
        "n00000002/c.JPEG": plain,
    }
    train = write_tree(tmp_path / "train", files)
    val = write_tree(tmp_path / "val", {"n00000001/v.JPEG": aligned, "n00000002/w.jpg": unaligned})
    data_dir = tmp_path / "data"
    run_nvidia(data_dir, train, val)

    for split, tree in (("train", train), ("val", val)):
        walk = sorted((p.parent.name, p.name) for p in tree.rglob("*") if p.is_file())
        folders = sorted({s for s, _ in walk})
        listing = [(i, f"{s}/{n}", folders.index(s)) for i, (s, n) in enumerate(walk)]
        random.Random(100).shuffle(listing)
        expected_rec, expected_idx = b"", ""
        for index, rel, label in listing:
            expected_idx += f"{index}\t{len(expected_rec)}\n"
            payload = struct.pack("<IfQQ", 0, float(label), index, 0) + (tree / rel).read_bytes()
            expected_rec += spec_frame(payload)
        out = data_dir / "recordio"
        assert (out / f"{split}.lst").read_text() == lst_text(listing)
        assert (out / f"{split}.idx").read_text() == expected_idx
        assert (out / f"{split}.rec").read_bytes() == expected_rec

    # The escaping really happened, as the spec spells it out for these three images.
    parts = {payload[24:]: p for _, p, payload in spec_records(data_dir / "recordio" / "train.rec")}
    n = 24 + len(aligned)
    assert parts[aligned] == [(1, 32), (2, 0), (3, n - 40)]
    assert parts[unaligned] == [(0, 24 + len(unaligned))]
    assert parts[plain] == [(1, 24 + len(plain) - 4), (3, 0)]
    rec_size = (data_dir / "recordio" / "train.rec").stat().st_size
    assert rec_size == sum(8 + 24 + len(x) + (-(24 + len(x)) % 4) for x in files.values()) + 4 * 3

    # And the real dmlc-core writer, through im2rec, escapes these the same way.
    require_mxnet()
    (tmp_path / "im2rec").mkdir()
    run_im2rec(train, tmp_path / "im2rec" / "train")
    for ext in ("lst", "rec", "idx"):
        theirs = (tmp_path / "im2rec" / f"train.{ext}").read_bytes()
        assert (data_dir / "recordio" / f"train.{ext}").read_bytes() == theirs, ext


# -- determinism and crash safety --------------------------------------------------------------------------
def test_identical_across_runs_unit_sizes_and_workers(
    sample, converted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = outputs_of(converted)  # one unit per split, workers=1, extracted
    monkeypatch.setattr(recordio, "UNIT_RECORDS", 5)  # 5 train units and 3 val units to join
    for workers in (1, 2):
        data_dir = tmp_path / f"w{workers}"
        run_nvidia(data_dir, sample.train_tar, sample.val_tar, sample.labels, workers=workers)
        plan = json.loads((data_dir / "work" / "nvidia" / "plan.json").read_text())
        assert len(plan["units"]) == 8
        assert outputs_of(data_dir) == reference
        assert tmp_files(data_dir) == []
    # A second run of the same job from scratch: same bytes again.
    run_nvidia(tmp_path / "again", sample.train_tar, sample.val_tar, sample.labels, workers=2)
    assert outputs_of(tmp_path / "again") == reference
    # Units one by one with part files joined by finish (the DAG's mapped tasks) give the same bytes
    # as the one-machine path that writes each .rec in place.
    data_dir = tmp_path / "units"
    fetch(data_dir, str(sample.train_tar), str(sample.val_tar))
    relabel(data_dir, str(sample.labels))
    converter = RecordIOConverter()
    plan = base.plan(converter, data_dir)
    local.run_units(converter, plan, workers=2)
    base.finish(converter, plan)
    assert outputs_of(data_dir) == reference
    assert not any(
        json.loads(p.read_text())["extra"].get("written") for p in (data_dir / "work").rglob("done/*.json")
    )


def test_direct_write_spreads_chunks_over_processes(sample, converted: Path, tmp_path: Path) -> None:
    """The one-machine path with several processes and many small chunks: same bytes, done records
    like the units'."""
    from airflow_resnet_prep.converters import recordio_direct

    data_dir = tmp_path / "direct"
    fetch(data_dir, str(sample.train_tar), str(sample.val_tar))
    relabel(data_dir, str(sample.labels))
    converter = RecordIOConverter()
    work_plan = base.plan(converter, data_dir)
    assert recordio_direct.write_in_place(work_plan, workers=3)
    done = [json.loads(work_plan.unit_done_path(u.id).read_text()) for u in work_plan.units]
    assert all(d["extra"]["written"] == "direct" for d in done)
    assert sum(d["records"] for d in done) == sample.train_count + sample.val_count
    base.finish(converter, work_plan)
    assert outputs_of(data_dir) == outputs_of(converted)
    assert tmp_files(data_dir) == []
    # A second call finds the units done and leaves the work to the unit-by-unit path (nothing to do).
    assert not recordio_direct.write_in_place(work_plan, workers=3)


_KILL_SCRIPT = """
import sys, time
from airflow_resnet_prep.converters import base, recordio, recordio_frame
from airflow_resnet_prep.layout import DataDir
data_dir, flag = sys.argv[1:3]
real, count = recordio_frame.record_buffers, [0]
def slow(header, image):
    count[0] += 1
    if count[0] == 3:  # two records written: tell the test, then wait for SIGKILL
        open(flag, "w").close()
        time.sleep(120)
    return real(header, image)
recordio_frame.record_buffers = slow
base.run_plan_unit(recordio.RecordIOConverter(), base.Plan.load(DataDir.of(data_dir), "nvidia"), 0)
"""


def test_unit_killed_midway_then_rerun_gives_the_same_bytes(
    sample, converted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    monkeypatch.setattr(recordio, "UNIT_RECORDS", 5)
    run_nvidia(data_dir, sample.train_tar, sample.val_tar, sample.labels, workers=1)
    reference = outputs_of(data_dir)
    # Start over with the same inputs, and kill unit 0 while it writes its third record.
    shutil.rmtree(data_dir / "recordio")
    (data_dir / "manifest.json").unlink()
    converter = RecordIOConverter()
    work_plan = base.plan(converter, data_dir, force=True)
    parts = data_dir / work_plan.work_dir / "parts"
    token = work_plan.extra["assemblies"]["train"]
    flag = tmp_path / "flag"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(data_dir), str(flag)])
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert proc.poll() is None, "the unit process ended before it was killed"
            assert time.monotonic() < deadline, "the unit process never reached its third record"
            time.sleep(0.02)
        # Midway: only the piece's in-progress name exists; no final name, no done record.
        pieces = [p.relative_to(parts).as_posix() for p in parts.rglob("*") if p.is_file()]
        assert pieces == [f"{token}/.00001.{proc.pid}.tmp"]
        assert not work_plan.unit_done_path(0).exists()
        assert not (data_dir / "recordio").exists() or not any((data_dir / "recordio").iterdir())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert not (parts / token / "00001").exists()
    with pytest.raises(PrepError, match="units are not done"):
        base.finish(converter, work_plan)
    local.run_units(converter, work_plan, workers=2)
    base.finish(converter, work_plan)
    assert outputs_of(data_dir) == reference == outputs_of(converted)
    assert tmp_files(data_dir) == []


@pytest.mark.parametrize("point", ["unit-half", "finish"])
def test_pipeline_killed_at_a_failpoint_then_rerun_gives_the_same_bytes(
    sample, converted: Path, tmp_path: Path, point: str
) -> None:
    """SIGKILL halfway through writing train.rec, or after both .rec are in place and before their
    .idx and .lst: final names hold only whole files, and a rerun completes with the same bytes."""
    data_dir = tmp_path / "data"
    args = ["--data-dir", str(data_dir), "--train-source", str(sample.train_tar)]
    args += ["--val-source", str(sample.val_tar), "--labels-source", str(sample.labels)]
    args += ["--implementation", "nvidia", "--param", "workers=1"]
    env = {**os.environ, "AIRFLOW_RESNET_PREP_FAILPOINT": point}
    proc = subprocess.run(
        [sys.executable, "-m", "airflow_resnet_prep.pipeline", *args],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not (data_dir / "manifest.json").exists()
    reference = outputs_of(converted)
    finals = sorted(p.name for p in (data_dir / "recordio").iterdir() if not p.name.startswith("."))
    # Killed in the middle of train, or with both .rec in place but no .idx/.lst yet.
    assert finals == ([] if point == "unit-half" else ["train.rec", "val.rec"])
    for name in finals:
        assert (data_dir / "recordio" / name).read_bytes() == reference[name]
    if point == "unit-half":  # one machine writes train.rec in place: only its in-progress name exists
        assert [Path(p).name.split(".")[1:3] for p in tmp_files(data_dir)] == [["train", "rec"]]
    assert run_nvidia(data_dir, sample.train_tar, sample.val_tar, sample.labels)["cached"] is False
    assert outputs_of(data_dir) == reference
    assert tmp_files(data_dir) == []


def test_partial_files_left_behind_are_overwritten_and_cleaned(
    sample, converted: Path, tmp_path: Path
) -> None:
    """As a crash leaves them: a half-written part under its final name without a done record, a
    part's in-progress file, and a killed join's in-progress ``.rec`` in the output folder."""
    data_dir = tmp_path / "data"
    converter = RecordIOConverter()
    run_nvidia(data_dir, sample.train_tar, sample.val_tar, sample.labels)
    shutil.rmtree(data_dir / "recordio")
    (data_dir / "manifest.json").unlink()
    work_plan = base.plan(converter, data_dir, force=True)
    train, val = (
        data_dir / work_plan.work_dir / "parts" / work_plan.extra["assemblies"][split]
        for split in ("train", "val")
    )
    train.mkdir(parents=True, exist_ok=True)
    val.mkdir(parents=True, exist_ok=True)
    (train / "00001").write_bytes(M + b"half a record")
    (val / ".00001.999999.tmp").write_bytes(b"partial")
    (data_dir / "recordio").mkdir()
    (data_dir / "recordio" / ".train.rec.999999.tmp").write_bytes(b"partial join")
    local.run_units(converter, work_plan, workers=1)
    base.finish(converter, work_plan)
    assert outputs_of(data_dir) == outputs_of(converted)
    assert tmp_files(data_dir) == []
    assert sorted(p.name for p in (data_dir / "recordio").iterdir()) == sorted(OUTPUTS)


def test_lost_output_file_is_rebuilt_by_a_rerun(sample, converted: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    run_nvidia(data_dir, sample.train_tar, sample.val_tar, sample.labels)
    out = data_dir / "recordio"
    # The parts are gone after a finish: a lost or truncated .rec needs its units written again.
    (out / "train.rec").unlink()
    with open(out / "val.rec", "r+b") as fh:
        fh.truncate(fh.seek(0, os.SEEK_END) // 2)
    result = run_nvidia(data_dir, sample.train_tar, sample.val_tar, sample.labels)
    assert result["cached"] is False
    assert outputs_of(data_dir) == outputs_of(converted)
    # A lost .idx or .lst next to an intact .rec is rewritten from the done records alone.
    (out / "val.idx").unlink()
    (out / "train.lst").unlink()
    rec_inode = (out / "train.rec").stat().st_ino
    assert run_nvidia(data_dir, sample.train_tar, sample.val_tar, sample.labels)["cached"] is False
    assert outputs_of(data_dir) == outputs_of(converted)
    assert (out / "train.rec").stat().st_ino == rec_inode  # not joined again
    assert run_nvidia(data_dir, sample.train_tar, sample.val_tar, sample.labels)["cached"] is True
    assert tmp_files(data_dir) == []


# -- resize / quality ----------------------------------------------------------------------------------
def test_resize_and_quality(sample, converted: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    run_nvidia(data_dir, sample.train_tar, sample.val_tar, sample.labels, resize=40, quality=70)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="JPEG", quality=70)
    q70 = Image.open(buf).quantization

    def resized(image: bytes, source: bytes) -> None:
        with Image.open(io.BytesIO(image)) as img, Image.open(io.BytesIO(source)) as src:
            assert img.format == "JPEG" and img.mode == "RGB"
            assert min(img.size) == 40
            w, h = src.size  # the long side scales as im2rec's: long * 40 // short
            assert max(img.size) == max(w, h) * 40 // min(w, h)
            assert img.quantization == q70

    for split in SPLITS:
        check_split(data_dir / "recordio", split, converted / "raw" / split, image_check=resized)
        same_list = (data_dir / "recordio" / f"{split}.lst").read_bytes()
        assert same_list == (converted / "recordio" / f"{split}.lst").read_bytes()


# -- bad input ------------------------------------------------------------------------------------------
def _truncated() -> bytes:
    data = small_jpeg(7)
    return data[: len(data) // 2]


BAD = {
    "garbage": (lambda: b"this is not an image at all", "not an image"),
    "truncated": (_truncated, "truncated"),
    "empty": (lambda: b"", "empty file"),
}


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_image_fails_naming_the_file(tmp_path: Path, kind: str, workers: int) -> None:
    make, reason = BAD[kind]
    train, val = good_tree(tmp_path, {"n00000002/n00000002_9.JPEG": make()})
    bad = train / "n00000002" / "n00000002_9.JPEG"
    with pytest.raises(BadImageError, match=reason) as info:  # from a pool worker too (workers=2)
        run_nvidia(tmp_path / "data", train, val, workers=workers)
    assert str(bad) in str(info.value)
    out = tmp_path / "data" / "recordio"
    assert not any(out.iterdir()) and tmp_files(tmp_path / "data") == []


def test_image_gone_since_fetch_fails_naming_the_file(tmp_path: Path) -> None:
    train, val = good_tree(tmp_path)
    data_dir = tmp_path / "data"
    fetch(data_dir, str(train), str(val))
    relabel(data_dir, "")
    gone = train / "n00000001" / "n00000001_2.JPEG"
    gone.unlink()
    with pytest.raises(SourceError, match="cannot read image") as info:
        local.convert(RecordIOConverter(), data_dir, workers=1)
    assert str(gone) in str(info.value)
    assert not any((data_dir / "recordio").iterdir())


def test_bad_images_skipped_are_listed_and_outputs_stay_consistent(tmp_path: Path) -> None:
    extra = {f"n00000001/bad_{kind}.JPEG": make() for kind, (make, _) in BAD.items()}
    train, val = good_tree(tmp_path, extra)
    data_dir = tmp_path / "data"
    run_nvidia(data_dir, train, val, on_bad_image="skip")
    skipped = frozenset(extra)
    check_split(data_dir / "recordio", "train", train, skipped=skipped)
    check_split(data_dir / "recordio", "val", val)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    listed = {f"{s['synset']}/{s['name']}": s["reason"] for s in manifest["skipped"]}
    assert set(listed) == skipped
    for kind, (_, reason) in BAD.items():
        assert reason in listed[f"n00000001/bad_{kind}.JPEG"]
    assert manifest["outputs"]["recordio/train.rec"]["records"] == 3


def test_class_folder_without_images_is_an_error(tmp_path: Path) -> None:
    train, val = good_tree(tmp_path)
    (train / "n00000000").mkdir()
    (train / "n00000000" / "README.txt").write_text("not an image")
    with pytest.raises(PrepError, match="class folder holds no images") as info:
        run_nvidia(tmp_path / "data", train, val)
    assert str(train / "n00000000") in str(info.value)


def test_validation_without_a_training_class_is_an_error(tmp_path: Path) -> None:
    train, val = good_tree(tmp_path)
    shutil.rmtree(val / "n00000002")
    with pytest.raises(PrepError, match="no images of class n00000002"):
        run_nvidia(tmp_path / "data", train, val)


def test_duplicate_file_names_are_an_error(tmp_path: Path) -> None:
    train_tar = tmp_path / "train.tar"
    with tarfile.open(train_tar, "w") as tar:
        for seed in (1, 2):  # the same member name twice, different bytes
            data = small_jpeg(seed)
            info = tarfile.TarInfo("n00000001/n00000001_1.JPEG")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _, val = good_tree(tmp_path)
    shutil.rmtree(val / "n00000002")
    with pytest.raises(SourceError, match=r"duplicate image n00000001/n00000001_1\.JPEG") as info:
        run_nvidia(tmp_path / "data", train_tar, val)
    assert str(train_tar) in str(info.value)


def test_negative_resize_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"resize must be 0 .* got -1"):
        RecordIOConverter(resize=-1)
    with pytest.raises(ValueError, match="quality must be between 1 and 100, got 0"):
        RecordIOConverter(quality=0)
    train, val = good_tree(tmp_path)
    with pytest.raises(ValueError, match=r"resize must be 0 .* got -1"):
        run_nvidia(tmp_path / "data", train, val, resize=-1)
    assert not (tmp_path / "data" / "recordio").exists()


def test_units_hold_enough_records_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each unit but a split's last ends at the first image that gives it both UNIT_RECORDS images and
    min_unit_bytes (a bucket's smallest piece); together they hold the listing, in order."""
    from airflow_resnet_prep.catalog.model import ImageRef, Source, SplitCatalog

    monkeypatch.setattr(recordio, "UNIT_RECORDS", 7)
    rng = random.Random(5)
    synsets = [f"n{c:08d}" for c in range(3)]
    images = [
        ImageRef(s, f"{s}_{i}.JPEG", 0, 512 * i, rng.choice([0, 1, 10, 100, 1000]), f"{s}/{s}_{i}.JPEG")
        for s in synsets
        for i in range(40)
    ]
    catalog = SplitCatalog("train", [Source("tar", "/x.tar")], images)
    listing = recordio.list_split(catalog)
    unsorted = SplitCatalog("train", catalog.sources, rng.sample(images, len(images)))
    assert recordio.list_split(unsorted) == listing  # the walk's order, whatever the catalog's
    for min_bytes in (0, 1, 500, 3000, 10**9):
        converter = RecordIOConverter()
        converter.min_unit_bytes = min_bytes
        units = converter.plan_split("train", catalog, synsets)
        assert [u.outputs for u in units] == [[f"train.{n:05d}.rec"] for n in range(len(units))]
        items = [item for u in units for item in u.items]
        assert [(i.index, i.ref, i.label, i.output) for i in items] == [(*x, 0) for x in listing]
        for unit in units[:-1]:
            sizes = [i.size for i in unit.items]
            assert len(sizes) >= 7 and sum(sizes) >= min_bytes
            assert len(sizes) == 7 or sum(sizes[:-1]) < min_bytes  # not one image later than needed
