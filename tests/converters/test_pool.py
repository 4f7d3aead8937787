"""Worker processes started from a daemonic process, as a Celery worker's task process is one.

Python refuses to start children from a daemonic process; before the pool module lifted that rule,
every ``reference_units`` task failed on Celery with "daemonic processes are not allowed to have
children". Each test runs the conversion inside a real daemonic process (in a fresh interpreter, so
nothing of pytest's is forked) and checks that the work was spread over several worker processes and
gives the same bytes as a run in one process. The whole path on a real Celery cluster is in
``tests/cluster``.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_resnet_prep.catalog.fetch import fetch
from airflow_resnet_prep.catalog.relabel import relabel
from airflow_resnet_prep.converters import base, local
from airflow_resnet_prep.converters.pool import children_allowed
from airflow_resnet_prep.layout import DataDir

_IN_A_DAEMON = r"""
import json, multiprocessing, os, sys
from pathlib import Path

from airflow_resnet_prep.converters import base, local, recordio_direct
from airflow_resnet_prep.pipeline import make_converter
from airflow_resnet_prep.params import resolved

data_dir, implementation, step, pids_file = sys.argv[1:5]
params = resolved({"train_shards": 4, "val_shards": 2})

def record_pid(fn):
    def wrapped(*args, **kwargs):
        with open(pids_file, "a") as f:
            f.write(f"{os.getpid()}\n")
        return fn(*args, **kwargs)
    return wrapped

local.run_plan_unit = record_pid(local.run_plan_unit)
recordio_direct._Framer.__call__ = record_pid(recordio_direct._Framer.__call__)

def task():
    assert multiprocessing.current_process().daemon
    converter = make_converter(implementation, params)
    plan = base.plan(converter, data_dir)
    if step == "units":
        local.run_units(converter, plan, workers=2)
    else:
        local.run_all(converter, plan, workers=2)
    base.finish(converter, plan)

proc = multiprocessing.get_context("fork").Process(target=task, daemon=True)
proc.start()
proc.join()
print(json.dumps({"exitcode": proc.exitcode, "daemon_pid": proc.pid}))
"""


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def _catalogued(sample, data_dir: Path) -> Path:
    fetch(data_dir, str(sample.train_tar), str(sample.val_tar))
    relabel(data_dir, str(sample.labels))
    return data_dir


@pytest.mark.parametrize(
    ("implementation", "step", "out"),
    [("reference", "units", "tfrecords"), ("nvidia", "units", "recordio"), ("nvidia", "all", "recordio")],
    ids=["reference-units", "nvidia-units", "nvidia-direct"],
)
def test_a_daemonic_task_process_converts_with_all_its_workers(sample, tmp_path, implementation, step, out):
    from airflow_resnet_prep.params import resolved
    from airflow_resnet_prep.pipeline import make_converter

    expected = _catalogued(sample, tmp_path / "one")
    converter = make_converter(implementation, resolved({"train_shards": 4, "val_shards": 2}))
    local.convert(converter, expected, workers=1)

    data_dir = _catalogued(sample, tmp_path / "daemon")
    pids_file = tmp_path / "pids"
    run = subprocess.run(
        [sys.executable, "-c", _IN_A_DAEMON, str(data_dir), implementation, step, str(pids_file)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["exitcode"] == 0, run.stderr[-3000:]
    # The pids that did the work, less the daemonic process (the direct path frames a one-chunk split
    # itself): at least two, so the work did not fall back to one process.
    workers = set(pids_file.read_text().split()) - {str(result["daemon_pid"])}
    assert len(workers) >= 2, f"expected worker processes, saw {workers}"
    assert _digests(data_dir / out) == _digests(expected / out)


def test_children_allowed_restores_the_daemon_flag():
    current = multiprocessing.current_process()
    config = current._config  # the flag's real home; see pool.children_allowed
    config["daemon"] = True
    try:
        with children_allowed():
            assert not current.daemon
        assert current.daemon
    finally:
        config.pop("daemon")
    with children_allowed():
        assert not current.daemon
    assert "daemon" not in config


def test_direct_path_reports_its_unit_seconds(sample, tmp_path):
    """The one-machine nvidia path records the time its units took, so the manifest has a throughput."""
    from airflow_resnet_prep.converters.recordio import RecordIOConverter

    data_dir = _catalogued(sample, tmp_path / "data")
    summary = local.convert(RecordIOConverter(), data_dir, workers=2)
    done = [json.loads(p.read_text()) for p in (data_dir / "work" / "nvidia" / "done").glob("*.json")]
    assert done and all(d["extra"]["written"] == "direct" for d in done)
    assert all(d["seconds"] > 0 for d in done)
    assert all(s["unit_seconds"] > 0 for s in summary["splits"].values())
    assert base.Plan.load(DataDir.of(data_dir), "nvidia").units
