"""Crashes, full disks, concurrent runs and read-only sources end in a correct result or a clear error.

Kill and resume is deterministic: the pipeline CLI runs in a subprocess with
``AIRFLOW_RESNET_PREP_FAILPOINT`` naming a point in the code (see ``airflow_resnet_prep.failpoints``),
where it SIGKILLs itself. After the kill no final name may hold a partial file; a rerun without the
failpoint must give the same bytes as an uninterrupted run (the baseline, also run through the CLI).

The full disk is a real tmpfs with a size cap mounted by the test (the suite runs as root, here and in
CI); it is skipped, with the reason, only where mounting is not permitted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_resnet_prep import pipeline
from airflow_resnet_prep.catalog.fetch import fetch
from airflow_resnet_prep.catalog.model import SplitCatalog
from airflow_resnet_prep.catalog.relabel import relabel
from airflow_resnet_prep.converters import base
from airflow_resnet_prep.errors import DiskFullError, OutputConflictError
from airflow_resnet_prep.failpoints import ENV as FAILPOINT_ENV
from airflow_resnet_prep.formats.recordio import iter_records
from airflow_resnet_prep.fsutil import exclusive_lock, read_json
from airflow_resnet_prep.layout import DataDir, catalog_key
from airflow_resnet_prep.params import resolved
from airflow_resnet_prep.sample import SampleSet, generate
from airflow_resnet_prep.sources.download import CHUNK_BYTES
from tests.support.httpserver import FileServer
from tests.support.sampletools import extract_sample_tar

IMPLEMENTATIONS = ("nvidia", "reference", "webdataset")
OUTPUT_DIR = {"nvidia": "recordio", "reference": "tfrecords", "webdataset": "webdataset"}
# Small on purpose: 12 train + 6 val images; reference and webdataset write 3 + 2 shards, one unit each.
SMALL = {"classes": 3, "train_per_class": 4, "val_per_class": 2, "seed": 0}
SHARDS = {"train_shards": 3, "val_shards": 2}
# Manifest keys that differ between two correct runs (times, and the source paths the plan id hashes).
VOLATILE = ("steps", "written_at", "sources", "conversion")
CLI_TIMEOUT_S = 180


# -- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SampleSet:
    return generate(tmp_path_factory.mktemp("small"), **SMALL)


@pytest.fixture(scope="module")
def mirror(small: SampleSet) -> Iterator[FileServer]:
    """The small set served over HTTP on 127.0.0.1 (ranges on, so downloads can resume)."""
    files = {p.name: p.read_bytes() for p in (small.train_tar, small.val_tar, small.labels)}
    assert len(files[small.train_tar.name]) > CHUNK_BYTES, "the train tar must span several download chunks"
    with FileServer(files=files) as server:
        yield server


def url_sources(small: SampleSet, mirror: FileServer) -> dict[str, str]:
    return {
        "train_source": mirror.url(small.train_tar.name),
        "val_source": mirror.url(small.val_tar.name),
        "labels_source": mirror.url(small.labels.name),
    }


def local_sources(small: SampleSet) -> dict[str, str]:
    return {
        "train_source": str(small.train_tar),
        "val_source": str(small.val_tar),
        "labels_source": str(small.labels),
    }


def values_for(data_dir: Path, implementation: str, sources: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "data_dir": str(data_dir),
        "implementation": implementation,
        "workers": 1,
        **SHARDS,
        **sources,
        **extra,
    }


def cli(values: dict[str, Any], failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m airflow_resnet_prep.pipeline`` with ``values``, optionally armed with a failpoint."""
    args = [
        sys.executable,
        "-m",
        "airflow_resnet_prep.pipeline",
        "--data-dir",
        values["data_dir"],
        "--train-source",
        values["train_source"],
        "--val-source",
        values["val_source"],
        "--labels-source",
        values["labels_source"],
        "--implementation",
        values["implementation"],
    ]
    for name, value in values.items():
        if name not in ("data_dir", "train_source", "val_source", "labels_source", "implementation"):
            args += ["--param", f"{name}={json.dumps(value)}"]
    env = {k: v for k, v in os.environ.items() if k != FAILPOINT_ENV}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if failpoint:
        env[FAILPOINT_ENV] = failpoint
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


@pytest.fixture(scope="module")
def baseline(
    small: SampleSet, mirror: FileServer, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """An uninterrupted CLI run per implementation, from the HTTP mirror: the bytes every test expects."""
    dirs = {}
    for implementation in IMPLEMENTATIONS:
        data_dir = tmp_path_factory.mktemp(f"baseline-{implementation}")
        done = cli(values_for(data_dir, implementation, url_sources(small, mirror)))
        assert done.returncode == 0, done.stderr[-3000:]
        dirs[implementation] = data_dir
    return dirs


# -- comparing outputs ---------------------------------------------------------------------------------
def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def output_digests(data_dir: Path, implementation: str) -> dict[str, str]:
    """Every file in the output folder (hidden ones too: a leftover temp file is a difference)."""
    folder = data_dir / OUTPUT_DIR[implementation]
    return {p.name: digest(p) for p in sorted(folder.iterdir())}


def manifest_core(data_dir: Path) -> dict[str, Any]:
    manifest = read_json(data_dir / "manifest.json")
    assert manifest is not None, f"{data_dir}: no manifest.json"
    return {k: v for k, v in manifest.items() if k not in VOLATILE}


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def assert_same_result(data_dir: Path, baseline_dir: Path, implementation: str) -> None:
    assert output_digests(data_dir, implementation) == output_digests(baseline_dir, implementation)
    assert manifest_core(data_dir) == manifest_core(baseline_dir)


def tfrecord_count(path: Path) -> int:
    """Records in a TFRecord file, read to the end with tf.data (a partial file raises DataLossError)."""
    import tensorflow as tf

    return sum(1 for _ in tf.data.TFRecordDataset(str(path)))


def wds_sample_count(path: Path) -> int:
    """Samples in a WebDataset shard, read to the end with tarfile (a partial shard raises ReadError)."""
    with tarfile.open(path) as tar:
        names = [m.name for m in tar.getmembers()]
    assert len(names) % 3 == 0, f"{path}: a sample without all of .cls/.jpg/.json"
    return len({name.split(".", 1)[0] for name in names})


def assert_no_partial_final_files(
    data_dir: Path, baseline_dir: Path, implementation: str, served: dict[str, bytes] | None = None
) -> None:
    """Every file that carries a final name is whole: outputs equal the baseline's and read to the end,
    catalogs and work records parse, downloads (of the files in ``served``) equal what was served."""
    assert not (data_dir / "manifest.json").exists(), "manifest.json before the output is complete"
    expected = read_json(baseline_dir / "manifest.json")["outputs"]
    out_dir = data_dir / OUTPUT_DIR[implementation]
    for path in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        if path.name.startswith("."):  # an in-progress name, never a final one
            continue
        key = f"{OUTPUT_DIR[implementation]}/{path.name}"
        assert path.read_bytes() == (baseline_dir / key).read_bytes(), f"{path} is partial or wrong"
        records = expected[key]["records"]
        if implementation == "reference" and not path.name.endswith(".idx"):
            assert tfrecord_count(path) == records
        elif implementation == "webdataset" and path.suffix == ".tar":
            assert wds_sample_count(path) == records
        elif path.suffix == ".json":  # webdataset's _info.json: the samples it describes
            assert sum(s["num_samples"] for s in json.loads(path.read_text())["splits"].values()) == records
        elif path.suffix == ".rec":
            assert sum(1 for _ in iter_records(path)) == records
        else:  # .idx / .lst: one line per record
            assert len(path.read_text().splitlines()) == records
    for part in (data_dir / "work").rglob("parts/*/*"):
        if part.is_file() and not part.name.startswith("."):
            list(iter_records(part))  # raises on a partial piece
    for split in ("train", "val"):
        layout = DataDir.of(data_dir)
        if layout.exists(catalog_key(split)):
            SplitCatalog.load(
                layout.store, catalog_key(split)
            )  # checks the header's image count against the rows
    for record in (data_dir / "work").rglob("*.json"):
        if not record.name.startswith("."):
            assert read_json(record) is not None, f"{record} is not whole JSON"
    for name, data in (served or {}).items():
        final = data_dir / "downloads" / name
        if final.exists():
            assert final.read_bytes() == data, f"{final} is partial"


# -- kill and resume -----------------------------------------------------------------------------------
POINTS = ("download-chunk", "fetch-train-catalog", "unit-half:2", "finish", "before-manifest")
CONVERTER_POINTS = ("unit-half:2", "finish", "before-manifest")


def _check_where_it_died(point: str, data_dir: Path, implementation: str, small: SampleSet) -> None:
    """The state a kill at ``point`` must leave, so the test proves the point was really reached."""
    downloads, catalog = data_dir / "downloads", DataDir.of(data_dir).catalog
    work, out = data_dir / "work" / implementation, data_dir / OUTPUT_DIR[implementation]
    if point == "download-chunk":
        part = downloads / f"{small.train_tar.name}.part"
        assert not (downloads / small.train_tar.name).exists()
        assert 0 < part.stat().st_size < small.train_tar.stat().st_size
        assert not catalog.joinpath("train.tsv").exists()
    elif point == "fetch-train-catalog":
        assert catalog.joinpath("train.tsv").exists()
        assert not catalog.joinpath("fetch.json").exists() and not catalog.joinpath("val.tsv").exists()
    elif point == "unit-half:2":
        # The first unit is done, the second was killed halfway.
        assert (work / "done" / "00000.json").exists() and not (work / "done" / "00001.json").exists()
        first_shard = {"reference": "train-00000-of-00003", "webdataset": "imagenet1k-train-0000.tar"}
        if implementation in first_shard:
            assert {p.name for p in out.iterdir() if not p.name.startswith(".")} == {
                first_shard[implementation]
            }
    elif point == "finish":
        assert len(list((work / "done").glob("*.json"))) == len(read_json(work / "plan.json")["units"])
        if implementation == "nvidia":
            assert (out / "train.rec").exists() and not (out / "train.idx").exists()
        if implementation == "webdataset":  # every shard is there, the split description is not
            assert (out / "imagenet1k-validation-0001.tar").exists() and not (out / "_info.json").exists()
    elif point == "before-manifest":
        assert out.is_dir() and not (data_dir / "manifest.json").exists()


# webdataset shares every step before the converter with reference (a kill while downloading or
# cataloguing never reaches its code), so it is killed only where its own code runs.
KILLS = [(i, p) for i in IMPLEMENTATIONS for p in POINTS if i != "webdataset" or p in CONVERTER_POINTS]


@pytest.mark.parametrize(("implementation", "point"), KILLS)
def test_killed_run_resumes_to_the_same_bytes(small, mirror, baseline, tmp_path, implementation, point):
    values = values_for(tmp_path / "data", implementation, url_sources(small, mirror))
    killed = cli(values, failpoint=point)
    assert killed.returncode == -signal.SIGKILL, f"not killed at {point}:\n{killed.stderr[-3000:]}"
    _check_where_it_died(point, tmp_path / "data", implementation, small)
    assert_no_partial_final_files(tmp_path / "data", baseline[implementation], implementation, mirror.files)

    gets_before = len(mirror.gets(small.train_tar.name))
    resumed = cli(values)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_result(tmp_path / "data", baseline[implementation], implementation)
    # Nothing is left behind: the same files as an uninterrupted run (no temp, part or lock files).
    assert files_under(tmp_path / "data") == files_under(baseline[implementation])
    train_gets = mirror.gets(small.train_tar.name)[gets_before:]
    if point == "download-chunk":  # resumed where the kill left it, not from the first byte
        assert [r.headers.get("Range") for r in train_gets] == [f"bytes={CHUNK_BYTES}-"]
    else:  # a finished download is reused
        assert train_gets == []


def test_a_killed_worker_fails_the_run_instead_of_hanging(small, baseline, tmp_path):
    """A pool worker killed mid-unit (the OOM killer's way) must fail the run, and a rerun resumes."""
    values = values_for(tmp_path / "data", "nvidia", local_sources(small), workers=2)
    failed = cli(values, failpoint="unit-half")  # only a worker dies: the run itself must not
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "died abruptly" in failed.stderr
    assert not (tmp_path / "data" / "manifest.json").exists()
    resumed = cli(values)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_result(tmp_path / "data", baseline["nvidia"], "nvidia")


def test_workers_do_not_outlive_a_killed_parent(small, baseline, tmp_path):
    """The one-machine nvidia path's parent killed while its processes write: they die with it (an
    orphan would hold the inherited data_dir lock for ever), so a rerun gets the lock and completes."""
    values = values_for(tmp_path / "data", "nvidia", local_sources(small), workers=2)
    killed = cli(values, failpoint="direct-parent")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    with exclusive_lock(DataDir.of(tmp_path / "data").lock, wait_s=10):
        pass  # free within seconds: no process is left holding it
    resumed = cli(values)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_result(tmp_path / "data", baseline["nvidia"], "nvidia")


_ORPHAN_SCRIPT = """
import os, sys, time
from airflow_resnet_prep.converters.pool import die_with_parent
parent = os.getpid()
child = os.fork()
if child == 0:
    die_with_parent(parent)
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has died and waits to be reaped


def test_a_direct_worker_dies_with_its_parent():
    """What keeps orphans from holding the lock: a worker asks Linux to kill it with its parent."""
    proc = subprocess.Popen([sys.executable, "-c", _ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    assert _alive(child)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the worker outlived its parent"


# -- disk full ---------------------------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A size-capped tmpfs at ``path``.

    Making one needs root. On a developer's machine without it the test is skipped, saying why (the
    issue allows that limit); under CI, which runs as root, a failed mount fails the test instead, so
    the disk-full checks can never be skipped unnoticed where they count.
    """
    path.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            check=True,
            capture_output=True,
            text=True,
        )
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        why = getattr(exc, "stderr", None) or str(exc)
        reason = f"cannot mount a size-limited tmpfs here ({why.strip()}); it needs root and mount(8)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI runs as root, so this must work there")
        pytest.skip(reason)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@pytest.mark.parametrize(
    ("implementation", "size", "where"),
    [
        ("nvidia", "1m", "recordio/train.rec"),  # full while train.rec is written in place
        ("reference", "1m", "tfrecords/train-0000"),  # in a shard: TensorFlow reports it its own way
        ("webdataset", "1m", "webdataset/imagenet1k-train-000"),  # in a shard streamed through the store
    ],
)
def test_disk_full_fails_naming_the_place_and_a_rerun_with_space_completes(
    small, baseline, tmp_path, implementation, size, where
):
    mount = tmp_path / "small disk"
    with tmpfs(mount, size):
        values = values_for(mount / "data", implementation, local_sources(small))
        with pytest.raises(DiskFullError) as info:
            pipeline.run(values)
        message = str(info.value)
        assert "the disk is full" in message and f"{mount / 'data'}/{where}" in message
        assert_no_partial_final_files(mount / "data", baseline[implementation], implementation)

        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        pipeline.run(values)
        assert_same_result(mount / "data", baseline[implementation], implementation)
        assert not [p for p in (mount / "data").rglob(".*.tmp")], "temp files of the failed run are left"


def test_disk_full_during_a_download_keeps_the_bytes_for_a_resume(small, mirror, tmp_path):
    mount = tmp_path / "tiny disk"
    with tmpfs(mount, "512k"):  # the train tar is about 1.5 MB
        downloads = mount / "data" / "downloads"
        values = values_for(mount / "data", "nvidia", url_sources(small, mirror))
        with pytest.raises(DiskFullError, match="the disk is full") as info:
            pipeline.run(values)
        part = downloads / f"{small.train_tar.name}.part"
        assert str(part) in str(info.value)
        kept = part.stat().st_size
        assert 0 < kept < small.train_tar.stat().st_size
        assert not (downloads / small.train_tar.name).exists()

        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)
        gets_before = len(mirror.gets(small.train_tar.name))
        pipeline.run(values)
        assert (downloads / small.train_tar.name).read_bytes() == small.train_tar.read_bytes()
        ranges = [r.headers.get("Range") for r in mirror.gets(small.train_tar.name)[gets_before:]]
        assert ranges == [f"bytes={kept}-"]


# -- concurrency ---------------------------------------------------------------------------------------
def test_a_run_waits_then_refuses_while_another_holds_the_data_dir(small, tmp_path):
    data_dir = tmp_path / "data"
    layout = DataDir.of(data_dir)
    with exclusive_lock(layout.lock), pytest.raises(OutputConflictError) as info:
        pipeline.run(values_for(data_dir, "nvidia", local_sources(small)))
    assert str(layout.lock) in str(info.value) and f"pid {os.getpid()}" in str(info.value)
    assert files_under(data_dir) == {".lock"}  # nothing was written while the other run held it


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_run_waits_for_a_unit_another_process_is_writing(small, baseline, tmp_path, implementation):
    """The unit's lock held here stands for another run's worker converting it: the run must wait (not
    write the unit too, and not fail), then take the other's result and complete."""
    data_dir = tmp_path / "data"
    values = values_for(data_dir, implementation, local_sources(small))
    fetch(data_dir, values["train_source"], values["val_source"])
    relabel(data_dir, values["labels_source"])
    plan = base.plan(pipeline.make_converter(implementation, resolved(values)), data_dir)
    busy = plan.unit_done_path(0).with_suffix(".lock")
    with exclusive_lock(busy):
        run = _popen(values)
        try:
            _wait_for_line(run, f"unit 0: {busy}: another run is writing")
            assert run.poll() is None, "the run ended instead of waiting"
            assert not plan.unit_done_path(0).exists()
            out = data_dir / OUTPUT_DIR[implementation]
            assert not out.exists() or not list(out.iterdir()), "unit 0 was written"
        except BaseException:
            run.kill()
            raise
    code, err = _wait(run)  # the lock is released: the run does unit 0 itself and completes
    assert code == 0, err[-3000:]
    assert_same_result(data_dir, baseline[implementation], implementation)


def _wait_for_line(proc: subprocess.Popen[str], text: str, timeout_s: float = 300) -> None:
    """Read ``proc``'s stderr until it holds ``text`` (the sign of a state, instead of a sleep).

    Reads the pipe's descriptor directly: a buffered ``readline`` after ``select`` can pull several lines
    into Python's buffer at once, and a line left there never wakes ``select`` again while the run waits
    in silence."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    seen = b""
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(timeout=1):
                chunk = os.read(fd, 65536)
                if not chunk:  # end of output: the run is over
                    break
                seen += chunk
                if text.encode() in seen:
                    return
    raise AssertionError(f"no line with {text!r} from the run (exit code {proc.poll()})")


def _popen(values: dict[str, Any]) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "airflow_resnet_prep.pipeline"]
    args += ["--data-dir", values["data_dir"], "--implementation", values["implementation"]]
    for name in ("train_source", "val_source", "labels_source"):
        args += [f"--{name.replace('_', '-')}", values[name]]
    for name in ("workers", *SHARDS):
        args += ["--param", f"{name}={values[name]}"]
    env = {k: v for k, v in os.environ.items() if k != FAILPOINT_ENV}
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=CLI_TIMEOUT_S)
    return proc.returncode, err


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_two_runs_on_one_data_dir_at_once_leave_one_whole_output(small, baseline, tmp_path, implementation):
    values = values_for(tmp_path / "data", implementation, local_sources(small), workers=2)
    results = [_wait(p) for p in [_popen(values), _popen(values)]]
    for code, err in results:
        # Each run either completed or refused with OutputConflictError; none failed any other way.
        assert code == 0 or "OutputConflictError" in err, err[-3000:]
    assert any(code == 0 for code, _ in results)
    assert_same_result(tmp_path / "data", baseline[implementation], implementation)
    assert not [p for p in (tmp_path / "data").rglob(".*.tmp")]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_two_data_dirs_side_by_side_both_complete(small, baseline, tmp_path, implementation):
    runs = [values_for(tmp_path / name, implementation, local_sources(small), workers=2) for name in "ab"]
    results = [_wait(p) for p in [_popen(v) for v in runs]]
    for code, err in results:
        assert code == 0, err[-3000:]
    for name in "ab":
        assert_same_result(tmp_path / name, baseline[implementation], implementation)


# -- read-only sources ---------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every entry below ``root``: (mode, mtime_ns, sha256 of a file's bytes)."""
    out = {}
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        out[str(path.relative_to(root))] = (
            st.st_mode,
            st.st_mtime_ns,
            digest(path) if path.is_file() else "",
        )
    return out


@contextlib.contextmanager
def read_only(root: Path) -> Iterator[bool]:
    """``chmod a-w`` on every file and folder below ``root``, and (where permitted) a read-only bind
    mount on top: the tests run as root, which file modes do not stop. Yields whether the mount is on."""
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    mounted = (
        subprocess.run(["mount", "--bind", str(root), str(root)], capture_output=True).returncode == 0
        and subprocess.run(["mount", "-o", "remount,bind,ro", str(root)], capture_output=True).returncode == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(root)], check=False, capture_output=True)
        for path in [root, *root.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_read_only_sources_are_read_and_never_changed(small, baseline, tmp_path):
    src = tmp_path / "sources"
    for path in (small.train_tar, small.val_tar, small.labels):
        (src / "tars").mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, src / "tars" / path.name)
    extract_sample_tar(small.train_tar, src / "folders" / "train")
    extract_sample_tar(small.val_tar, src / "folders" / "val")
    tars = {k: str(src / "tars" / Path(v).name) for k, v in local_sources(small).items()}
    folders = {
        **tars,
        "train_source": str(src / "folders" / "train"),
        "val_source": str(src / "folders" / "val"),
    }
    with read_only(src) as mounted:
        before = snapshot(src)
        if mounted:  # the mount really refuses writes, even root's
            with pytest.raises(OSError):
                (src / "probe").write_bytes(b"x")
        # nvidia from the tars, extracting them too; reference from the folders; both with checksums.
        checksum = "md5:" + hashlib.md5(small.train_tar.read_bytes()).hexdigest()
        pipeline.run(values_for(tmp_path / "a", "nvidia", tars, extract=True, train_checksum=checksum))
        pipeline.run(values_for(tmp_path / "b", "reference", folders))
        after = snapshot(src)
    assert after == before
    assert_same_result(tmp_path / "a", baseline["nvidia"], "nvidia")
    assert_same_result(tmp_path / "b", baseline["reference"], "reference")


# -- the failpoints themselves, and leftovers of a killed extraction -----------------------------------
@pytest.mark.parametrize(
    ("armed", "killed"), [("x", True), ("x:2", True), ("x:3", False), ("y", False), ("", False)]
)
def test_failpoint_kills_on_the_armed_hit_only(armed, killed):
    code = (
        "from airflow_resnet_prep.failpoints import failpoint\nfailpoint('x')\nfailpoint('x')\nprint('alive')"
    )
    env = {**os.environ, FAILPOINT_ENV: armed}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == ((-signal.SIGKILL, "") if killed else (0, "alive\n"))


@pytest.mark.parametrize("armed", ["x:0", "x:two"])
def test_a_malformed_failpoint_is_an_error(armed):
    env = {**os.environ, FAILPOINT_ENV: armed}
    code = "import airflow_resnet_prep.failpoints"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and FAILPOINT_ENV in done.stderr


def test_an_interrupted_extraction_is_completed_and_its_temp_files_removed(small, tmp_path):
    """What a kill during extraction leaves (temp files, images not yet renamed into place) is repaired."""
    sources = local_sources(small)
    fetch(tmp_path, sources["train_source"], sources["val_source"], extract=True)
    raw = tmp_path / "raw"
    first = sorted((raw / "train").rglob("*.JPEG"))[0]
    expected = first.read_bytes()
    first.unlink()  # killed before its rename
    stale = [first.parent / f".{first.name}.999999.tmp", raw / "val" / ".ILSVRC2012_val_00000001.JPEG.1.tmp"]
    for path in stale:
        path.write_bytes(expected[:100])
    fetch(tmp_path, sources["train_source"], sources["val_source"], extract=True)
    assert first.read_bytes() == expected
    assert not [p for p in raw.rglob("*") if p.name.startswith(".")]
