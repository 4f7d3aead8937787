"""The real DAG file, run end to end with ``dag.test()`` on the sample set (SQLite, in process).

Covers: the file parses fast without TensorFlow; every promised param with type, default and
description; invalid params refused before any task runs; both branches end to end with their XComs,
outputs and Asset event; cached reruns, rebuilds on a changed source or ``force``; a mapped unit that
fails once and is retried gives the same bytes as a clean run.

The DAG is loaded once per module; each run gets its own ``data_dir``. A fault is injected into a mapped
unit through Airflow's own ``on_execute_callback`` (a real file-system fault, no mocks).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from airflow_resnet_prep.params import PARAMS

REPO = Path(__file__).resolve().parent.parent
DAG_FILE = REPO / "dags" / "mlperf_resnet_prep.py"
DAG_ID = "mlperf_resnet_prep"
ASSET_NAME = "mlperf_resnet_prepared"
IMPLEMENTATIONS = ("reference", "nvidia", "webdataset")
# The params the DAG promises (docs/usage.md), written out here independently of params.py.
SPEC_PARAMS = {
    "implementation",
    "data_dir",
    "train_source",
    "val_source",
    "labels_source",
    "train_checksum",
    "val_checksum",
    "http_conn_id",
    "extract",
    "train_shards",
    "val_shards",
    "shuffle_seed",
    "resize",
    "quality",
    "on_bad_image",
    "dali_index",
    "mxnet_version",
    "workers",
    "force",
    "fanout",
    "storage_conn_id",
    "download_sources",
    "decode_check",
}
OUTPUT_FILES = {
    "reference": {
        "train-00000-of-00004",
        "train-00001-of-00004",
        "train-00002-of-00004",
        "train-00003-of-00004",
        "validation-00000-of-00002",
        "validation-00001-of-00002",
    },
    "nvidia": {f"{split}.{ext}" for split in ("train", "val") for ext in ("lst", "rec", "idx")},
    "webdataset": {f"imagenet1k-train-{i:04d}.tar" for i in range(4)}
    | {f"imagenet1k-validation-{i:04d}.tar" for i in range(2)}
    | {"_info.json"},
}
OUTPUT_KEY = {"reference": "tfrecords_path", "nvidia": "preprocessed_path", "webdataset": "webdataset_path"}
FOLDER = {"reference": "tfrecords", "nvidia": "recordio", "webdataset": "webdataset"}
FANOUT = 3
PYTHON_TYPES = {"string": str, "integer": int, "boolean": bool}


# -- fixtures and helpers -----------------------------------------------------------------------------
@pytest.fixture(scope="module", autouse=True)
def airflow_db():
    """A fresh metadata DB (SQLite under the temporary AIRFLOW_HOME of conftest.py)."""
    from airflow.utils import db

    db.resetdb()


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE.parent))
    assert bag.import_errors == {}
    return bag.get_dag(DAG_ID)


@dataclass
class Run:
    """One finished ``dag.test()`` run: its states, tries and the XComs of ``publish``."""

    run_id: str
    state: str
    states: dict[str, list[str]]  # task_id -> state of each map index
    tries: dict[tuple[str, int], int]  # (task_id, map_index) -> try_number
    published: dict[str, Any]
    data_dir: Path
    implementation: str
    digests: dict[str, str] = field(default_factory=dict)  # output file -> sha256

    @property
    def output_dir(self) -> Path:
        return Path(self.published[OUTPUT_KEY[self.implementation]])


def conf_for(sample, data_dir: Path, implementation: str) -> dict[str, Any]:
    return {
        "implementation": implementation,
        "data_dir": str(data_dir),
        "train_source": str(sample.train_tar),
        "val_source": str(sample.val_tar),
        "labels_source": str(sample.labels),
        "train_shards": 4,
        "val_shards": 2,
        "workers": 1,  # in process: no pool to fork inside the test process
        "fanout": FANOUT,  # as on a cluster: several mapped unit tasks
    }


def digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def run_dag(dag, conf: dict[str, Any]) -> Run:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dr = dag.test(run_conf=conf)
    states: dict[str, list[str]] = {}
    tries: dict[tuple[str, int], int] = {}
    with create_session() as session:
        for ti in dr.get_task_instances(session=session):
            states.setdefault(ti.task_id, []).append(str(ti.state))
            tries[(ti.task_id, ti.map_index)] = ti.try_number
        rows = session.scalars(XComModel.get_many(run_id=dr.run_id, dag_ids=DAG_ID, task_ids="publish")).all()
        published = {row.key: XComModel.deserialize_value(row) for row in rows}
    run = Run(
        dr.run_id, str(dr.state), states, tries, published, Path(conf["data_dir"]), conf["implementation"]
    )
    if run.state == "success":
        run.digests = digests(run.output_dir)
    return run


def unit_batches(data_dir: Path, implementation: str, fanout: int = FANOUT) -> list[list[int]]:
    """The unit ids of each mapped ``*_units`` task, as the plan task handed them out."""
    from airflow_resnet_prep.converters.base import Plan
    from airflow_resnet_prep.layout import DataDir
    from airflow_resnet_prep.operators.convert import batches

    plan = Plan.load(DataDir.of(data_dir), implementation)
    return batches([u.id for u in plan.units], fanout)


def converter_tasks(implementation: str) -> list[str]:
    return [f"{implementation}_{step}" for step in ("plan", "units", "finish")]


def others(implementation: str) -> list[str]:
    return [i for i in IMPLEMENTATIONS if i != implementation]


@pytest.fixture(scope="module")
def clean_runs(dag, sample, tmp_path_factory):
    """One clean run per implementation, made on first use and shared by the tests that compare with it."""
    runs: dict[str, Run] = {}

    def get(implementation: str) -> Run:
        if implementation not in runs:
            data_dir = tmp_path_factory.mktemp(f"clean-{implementation}")
            started = time.monotonic()
            runs[implementation] = run_dag(dag, conf_for(sample, data_dir, implementation))
            print(f"clean {implementation} run: {time.monotonic() - started:.1f} s")
        return runs[implementation]

    return get


# -- parsing --------------------------------------------------------------------------------------------
_PROBE = """
import importlib.util, json, sys, time
t0 = time.perf_counter()
import airflow.sdk
t1 = time.perf_counter()
spec = importlib.util.spec_from_file_location("mlperf_resnet_prep_probe", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
t2 = time.perf_counter()
print(json.dumps({
    "airflow_s": t1 - t0,
    "dag_file_s": t2 - t1,
    "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "PIL")),
    "schedule": str(module.dag.schedule),
    "timetable": repr(module.dag.timetable),
    "data_dir": module.dag.params["data_dir"],
    "train_source": module.dag.params["train_source"],
    "labels_source": module.dag.params["labels_source"],
    "implementation": module.dag.params["implementation"],
}))
"""


@pytest.fixture(scope="module")
def parsed_in_fresh_process() -> dict[str, Any]:
    """Import the DAG file in a new interpreter, with the schedule and the defaults set by environment
    (one of them by its deprecated name, which still works in this release)."""
    env = {
        **os.environ,
        "AIRFLOW__RESNET_PREP__SCHEDULE": "@monthly",
        "AIRFLOW__RESNET_PREP__DATA_DIR": "/data/mlperf-resnet",
        "AIRFLOW__RESNET_PREP__TRAIN_SOURCE": "/imagenet/ILSVRC2012_img_train.tar",
        "AIRFLOW__RESNET_PREP__VAL_SOURCE": "/imagenet/ILSVRC2012_img_val.tar",
        "AIRFLOW__RESNET_PREP__LABELS_SOURCE": "",  # as docker compose passes an unset variable
        "MLPERF_RESNET_PREP_IMPLEMENTATION": "reference",
    }
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(DAG_FILE)], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["process_s"] = time.monotonic() - started
    result["output"] = out.stdout + out.stderr
    return result


def test_dag_file_loads_without_import_errors():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAG_FILE.parent))
    assert bag.import_errors == {}
    assert bag.dag_ids == [DAG_ID]


def test_dag_file_imports_without_tensorflow(parsed_in_fresh_process):
    """Parsing imports nothing heavy; the times are printed (speed is benchmarked, not asserted here)."""
    result = parsed_in_fresh_process
    print(
        f"import airflow.sdk {result['airflow_s']:.2f} s, DAG file {result['dag_file_s']:.2f} s, "
        f"whole process {result['process_s']:.2f} s"
    )
    assert result["heavy"] == [], f"parsing the DAG file imported {result['heavy'][:5]}"


def test_schedule_and_defaults_come_from_the_environment(parsed_in_fresh_process, dag):
    result = parsed_in_fresh_process
    assert result["schedule"] == "@monthly"
    # 3.3 shows the expanded cron expression, 3.2 the preset
    assert "0 0 1 * *" in result["timetable"] or "'@monthly'" in result["timetable"]
    assert result["data_dir"] == "/data/mlperf-resnet"
    assert result["train_source"] == "/imagenet/ILSVRC2012_img_train.tar"
    assert result["labels_source"] == PARAMS["labels_source"][0]  # empty variable: built-in default
    # The deprecated name still works, and says which name replaces it.
    assert result["implementation"] == "reference"
    assert "MLPERF_RESNET_PREP_IMPLEMENTATION is deprecated" in result["output"]
    assert "set AIRFLOW__RESNET_PREP__IMPLEMENTATION" in result["output"]
    # Without the variables (this process): no schedule, the params.py defaults; none for a required one.
    assert dag.schedule is None
    assert not dag.params.get_param("data_dir").has_value


# -- params ---------------------------------------------------------------------------------------------
def test_every_spec_param_has_type_default_and_description(dag):
    assert set(dag.params.keys()) == SPEC_PARAMS
    for name in SPEC_PARAMS:
        param = dag.params.get_param(name)
        spec = PARAMS[name]
        base_type = spec.schema["type"]
        if spec.required:
            # Required: no default (Airflow's "not set"), and never an empty string.
            assert param.schema["type"] == base_type, name
            assert param.schema["minLength"] == 1, name
            assert "section" not in param.schema, name
            assert not param.has_value and spec.default is None, name
        else:
            # Optional: the form may leave it empty (null), which means the default.
            assert param.schema["type"] == ["null", base_type], name
            assert param.schema.get("section") == spec.section, name
            assert param.value == spec.form_default, name
            assert param.value is None or isinstance(param.value, PYTHON_TYPES[base_type]), name
            assert isinstance(spec.default, PYTHON_TYPES[base_type]), name
        # The form renders description_md only when description is None: never both.
        text = param.description or param.schema.get("description_md")
        assert text and len(text) > 10, name
        assert not (param.description and param.schema.get("description_md")), name
        assert param.schema.get("title") == name
    assert [n for n in dag.params if PARAMS[n].required] == ["data_dir", "train_source", "val_source"]
    # The choice that matters most comes first, in the form's expanded block, before the required three.
    assert list(dag.params)[:4] == ["implementation", "data_dir", "train_source", "val_source"]
    implementation = dag.params.get_param("implementation")
    assert "section" not in implementation.schema
    assert implementation.schema["enum"] == [None, "nvidia", "reference", "webdataset"]
    assert set(implementation.schema["values_display"]) == {"nvidia", "reference", "webdataset"}
    assert implementation.value == "nvidia"
    assert dag.params.get_param("on_bad_image").schema["enum"] == [None, "fail", "skip"]


def test_form_sections_come_in_the_order_a_user_fills_them(dag):
    from airflow_resnet_prep import params

    sections = []
    for name in dag.params:
        section = dag.params.get_param(name).schema.get("section")
        if not sections or sections[-1] != section:
            sections.append(section)
    assert sections == [
        None,
        params.OUTPUT,
        params.SOURCES,
        params.REFERENCE,
        params.NVIDIA,
        params.EXECUTION,
    ]


def test_params_left_empty_run_with_their_defaults(dag, sample, tmp_path):
    """What the form sends when only the required fields are filled: null for every optional param."""
    data_dir = tmp_path / "data"
    conf = {name: None for name, spec in PARAMS.items() if not spec.required}
    full = conf_for(sample, data_dir, "nvidia")
    conf.update({k: full[k] for k in ("data_dir", "train_source", "val_source")})
    conf["labels_source"] = full["labels_source"]  # the default is a URL: no internet in tests
    conf["workers"] = 1  # in process: no pool to fork inside the test process
    run = dag.test(run_conf=conf)
    assert run.state == "success"
    assert (data_dir / "recordio" / "train.rec").is_file()
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["implementation"] == "nvidia"
    assert manifest["params"]["quality"] == PARAMS["quality"].default


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"implementation": "tensorflow"},
            "'tensorflow' is not one of [None, 'nvidia', 'reference', 'webdataset']",
        ),
        ({"train_shards": -8}, "-8 is less than the minimum of 1"),
        ({"val_shards": 0}, "0 is less than the minimum of 1"),
        ({"fanout": -1}, "-1 is less than the minimum of 0"),
        ({"quality": 101}, "101 is greater than the maximum of 100"),
        ({"extract": "maybe"}, "'maybe' is not of type 'null', 'boolean'"),
    ],
    ids=["implementation", "train_shards", "val_shards", "fanout", "quality", "extract"],
)
def test_invalid_param_is_refused_before_any_task_runs(dag, sample, tmp_path, bad, message):
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    data_dir = tmp_path / "data"
    with create_session() as session:
        runs_before = session.query(DagRun).count()
    # 3.3 raises ParamValidationError, 3.2 a plain ValueError (its base): the message is the contract.
    with pytest.raises(ValueError) as excinfo:
        dag.test(run_conf={**conf_for(sample, data_dir, "reference"), **bad})
    text = str(excinfo.value)
    assert f"Invalid input for param {next(iter(bad))}" in text
    assert message in text
    assert not data_dir.exists(), "a task ran although the params were refused"
    with create_session() as session:
        assert session.query(DagRun).count() == runs_before


@pytest.mark.parametrize("name", ["data_dir", "train_source", "val_source"])
@pytest.mark.parametrize("how", ["missing", "empty"])
def test_a_missing_or_empty_required_param_creates_no_run(dag, sample, tmp_path, name, how):
    """What ``airflow dags test -c '{}'`` and a REST trigger with an empty conf meet: Airflow's own param
    validation refuses the run before it is created, naming the param (the REST API: tests/ui)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    conf = conf_for(sample, tmp_path / "data", "nvidia")
    if how == "missing":
        del conf[name]
    else:
        conf[name] = ""
    with create_session() as session:
        runs_before = session.query(DagRun).count()
    with pytest.raises(ValueError) as excinfo:
        dag.test(run_conf=conf)
    text = str(excinfo.value)
    assert f"Invalid input for param {name}" in text
    assert ("No value passed" if how == "missing" else "should be non-empty") in text, text
    with create_session() as session:
        assert session.query(DagRun).count() == runs_before
    assert not (tmp_path / "data").exists()


def test_dags_test_with_an_empty_conf_is_refused_naming_the_first_required_param(tmp_path):
    """The command a user types: ``airflow dags test mlperf_resnet_prep -c '{}'`` exits non-zero naming
    ``data_dir``; no task runs."""
    from tests.support.airflow_cli import dags_test

    out = dags_test(DAG_ID, {}, home=tmp_path / "home", dags_folder=DAG_FILE.parent, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode != 0, text[-3000:]
    assert "Invalid input for param data_dir" in text, text[-3000:]
    assert "No value passed" in text, text[-3000:]
    assert "fetch" not in {line.split()[-1] for line in text.splitlines() if "Running task" in line}


# -- end to end -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_end_to_end(clean_runs, sample, implementation):
    run = clean_runs(implementation)
    assert run.state == "success", run.states
    data_dir = run.data_dir.resolve()

    # XComs of publish, named after the recipe's outputs.
    assert run.published["data_path"] == str(data_dir)
    assert run.published["imagenet_path"] == str(sample.train_tar.resolve())
    assert run.published[OUTPUT_KEY[implementation]] == str(data_dir / FOLDER[implementation])
    assert not {OUTPUT_KEY[o] for o in others(implementation)} & set(run.published)
    assert run.published["cached"] is False
    assert run.published["manifest"] == str(data_dir / "manifest.json")

    # The outputs: exactly the expected files, no leftovers, the manifest written last.
    assert {p.name for p in run.output_dir.iterdir()} == OUTPUT_FILES[implementation]
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["implementation"] == implementation
    assert manifest["images"] == {"train": sample.train_count, "val": sample.val_count}
    assert set(manifest["outputs"]) == {f"{run.output_dir.name}/{n}" for n in OUTPUT_FILES[implementation]}
    for name, stats in manifest["outputs"].items():
        assert (data_dir / name).stat().st_size == stats["size"], name
    if implementation != "nvidia":
        records = {
            n: s["records"] for n, s in manifest["outputs"].items() if not n.endswith((".idx", ".json"))
        }
        assert sum(r for n, r in records.items() if "train-" in n) == sample.train_count
        assert sum(r for n, r in records.items() if "validation-" in n) == sample.val_count
    else:
        assert len((run.output_dir / "train.lst").read_text().splitlines()) == sample.train_count
        assert len((run.output_dir / "val.lst").read_text().splitlines()) == sample.val_count

    # The branch: this converter ran (mapped over its units), the other one and reuse_existing were skipped.
    for task_id in ("fetch", "relabel_val", "choose_implementation", "publish"):
        assert run.states[task_id] == ["success"], task_id
    assert run.states[f"{implementation}_plan"] == ["success"]
    mapped = len(unit_batches(run.data_dir, implementation))
    assert mapped >= 2, "the sample should give the converter at least two mapped tasks"
    assert run.states[f"{implementation}_units"] == ["success"] * mapped
    assert run.states[f"{implementation}_finish"] == ["success"]
    for task_id in [t for o in others(implementation) for t in converter_tasks(o)] + ["reuse_existing"]:
        assert run.states[task_id] == ["skipped"], task_id


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_publish_updates_the_asset(clean_runs, implementation):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    run = clean_runs(implementation)
    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == ASSET_NAME, AssetEvent.source_run_id == run.run_id)
            .all()
        )
        assert len(events) == 1
        event = events[0]
        assert (event.source_dag_id, event.source_task_id) == (DAG_ID, "publish")
        paths = {k: v for k, v in run.published.items() if k.endswith("_path")}
        assert {k: event.extra[k] for k in paths} == paths
        assert event.extra["cached"] is False


# -- cached output and refresh ----------------------------------------------------------------------------
def test_second_run_reuses_the_output_then_force_rebuilds_it(dag, sample, clean_runs):
    first = clean_runs("reference")
    conf = conf_for(sample, first.data_dir, "reference")
    before = mtimes(first.output_dir)
    manifest_mtime = (first.data_dir / "manifest.json").stat().st_mtime_ns

    # Settings that change no byte of a reference output (nvidia's options) are no reason to convert.
    again = run_dag(dag, {**conf, "resize": 224, "quality": 50, "mxnet_version": "24.04"})
    assert again.state == "success", again.states
    assert again.states["reuse_existing"] == ["success"]
    assert again.published["reused"].startswith("same sources and on_bad_image='fail'"), again.published
    report = (first.data_dir / "report" / "index.html").read_text()
    assert "The latest run reused this output" in report
    for task_id in [t for i in IMPLEMENTATIONS for t in converter_tasks(i)]:
        assert again.states[task_id] == ["skipped"], task_id
    assert again.published["cached"] is True
    paths = {k: v for k, v in first.published.items() if k.endswith("_path")}
    assert {k: again.published[k] for k in paths} == paths
    assert mtimes(first.output_dir) == before, "a reused output was rewritten"
    assert (first.data_dir / "manifest.json").stat().st_mtime_ns == manifest_mtime

    forced = run_dag(dag, {**conf, "force": True})
    assert forced.state == "success", forced.states
    assert forced.published["reused"] is None
    assert "reused this output" not in (first.data_dir / "report" / "index.html").read_text()
    assert forced.states["reuse_existing"] == ["skipped"]
    assert set(forced.states["reference_units"]) == {"success"}
    assert forced.published["cached"] is False
    after = mtimes(first.output_dir)
    assert all(after[name] != before[name] for name in OUTPUT_FILES["reference"]), "force rewrote nothing"
    assert forced.digests == first.digests  # same inputs, same bytes


def test_webdataset_second_run_reuses_the_output(dag, sample, clean_runs):
    first = clean_runs("webdataset")
    # force given: Airflow's dag.test() keeps an earlier run's conf on task.params (docs/design.md)
    again = run_dag(dag, {**conf_for(sample, first.data_dir, "webdataset"), "force": False})
    assert again.state == "success", again.states
    assert again.states["reuse_existing"] == ["success"]
    assert again.states["webdataset_plan"] == ["skipped"]
    assert again.published["cached"] is True
    assert again.published["webdataset_path"] == first.published["webdataset_path"]
    assert again.digests == first.digests


def test_changed_source_rebuilds(dag, tmp_path):
    from airflow_resnet_prep.sample import generate

    source = tmp_path / "source"
    data_dir = tmp_path / "data"
    sample = generate(source, classes=4, train_per_class=6, val_per_class=3, seed=0)
    conf = conf_for(sample, data_dir, "nvidia")
    first = run_dag(dag, conf)
    assert first.state == "success", first.states
    sources_before = json.loads((data_dir / "manifest.json").read_text())["sources"]

    # The same paths, new contents (a new release of the data set, say).
    changed = generate(source, classes=4, train_per_class=6, val_per_class=3, seed=1)
    assert changed.train_tar == sample.train_tar
    second = run_dag(dag, conf)
    assert second.state == "success", second.states
    assert second.states["reuse_existing"] == ["skipped"]
    assert second.states["nvidia_plan"] == ["success"]
    assert set(second.states["nvidia_units"]) == {"success"}
    assert second.published["cached"] is False
    assert second.published["preprocessed_path"] == first.published["preprocessed_path"]
    assert second.digests["train.rec"] != first.digests["train.rec"]
    assert second.digests["val.lst"] != first.digests["val.lst"]
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["sources"] != sources_before
    assert sorted(manifest["classes"]["train"]) == sorted(changed.synsets)


# -- a mapped unit that fails once ------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_retried_unit_gives_the_same_output_as_a_clean_run(dag, sample, clean_runs, tmp_path, implementation):
    """The mapped task with the most outputs meets, on its first try, a directory where its last output
    goes: it fails after writing the outputs before it. The retry (fault removed) must give the clean
    run's bytes exactly."""
    from airflow_resnet_prep.converters.base import Plan
    from airflow_resnet_prep.layout import DataDir

    clean = clean_runs(implementation)
    data_dir = tmp_path / "data"
    layout = DataDir.of(data_dir)
    seen: dict[int, set[str]] = {}  # try number -> files in the fault's folder when that try started
    target: dict[str, Any] = {}

    def choose_target() -> None:
        plan = Plan.load(layout, implementation)
        groups = unit_batches(data_dir, implementation)
        index = max(range(len(groups)), key=lambda i: sum(len(plan.units[u].outputs) for u in groups[i]))
        last = groups[index][-1]
        if implementation != "nvidia":  # units write final shard names
            folder = layout.path(FOLDER[implementation])
            names = [name for u in groups[index] for name in plan.units[u].outputs]
        else:  # units write numbered pieces of their split's .rec, which finish assembles
            split = plan.units[last].split
            folder = layout.work / implementation / "parts" / plan.extra["assemblies"][split]
            same = [u.id for u in plan.units if u.split == split]
            names = [f"{same.index(u) + 1:05d}" for u in groups[index] if plan.units[u].split == split]
        target.update(map_index=index, fault=folder / names[-1], before=set(names[:-1]))

    def inject_fault_on_first_try(context) -> None:
        if not target:
            choose_target()
        ti = context["ti"]
        if ti.map_index != target["map_index"]:
            return
        fault: Path = target["fault"]
        seen[ti.try_number] = {p.name for p in fault.parent.iterdir()} if fault.parent.is_dir() else set()
        if ti.try_number == 1:
            fault.mkdir(parents=True)
        else:
            fault.rmdir()

    units = dag.get_task(f"{implementation}_units")
    saved = (units.on_execute_callback, units.retry_delay)
    units.on_execute_callback = [inject_fault_on_first_try]
    units.retry_delay = datetime.timedelta(0)  # dag.test waits out the retry delay in its loop
    try:
        run = run_dag(dag, conf_for(sample, data_dir, implementation))
    finally:
        units.on_execute_callback, units.retry_delay = saved

    assert run.state == "success", run.states
    task_id = f"{implementation}_units"
    tries = {i: n for (t, i), n in run.tries.items() if t == task_id}
    assert tries == {i: 2 if i == target["map_index"] else 1 for i in tries}, "no single failed try"
    assert set(seen) == {1, 2}
    if implementation != "nvidia":
        # Shards are units of their own here, so the target batch holds several: the fault is mid-task.
        assert target["before"], target
    # The failed try left the outputs written before the fault; the retry found them.
    assert target["before"] <= seen[2] - {target["fault"].name}, (target, seen)
    assert run.digests == clean.digests
    assert not [p for p in run.output_dir.iterdir() if p.name.startswith(".")], "temporary files left"


def test_auto_fanout_runs_every_unit_in_one_task_and_nvidia_writes_in_place(
    dag, sample, clean_runs, tmp_path
):
    """fanout=0 (the default) with a local executor: one mapped task holds every unit, so the nvidia
    converter writes each .rec in place (no parts to join), with the bytes of the fanned-out run."""
    from airflow_resnet_prep.operators.convert import auto_fanout

    assert PARAMS["fanout"][0] == 0 and auto_fanout() == 1
    clean = clean_runs("nvidia")
    conf = {**conf_for(sample, tmp_path / "data", "nvidia"), "fanout": 0}
    run = run_dag(dag, conf)
    assert run.state == "success", run.states
    assert run.states["nvidia_units"] == ["success"]
    done = [
        json.loads(p.read_text()) for p in (tmp_path / "data" / "work" / "nvidia" / "done").glob("*.json")
    ]
    assert done and all(d["extra"].get("written") == "direct" for d in done)
    assert run.digests == clean.digests


# -- README and docs/params.md -----------------------------------------------------------------------------
def test_readme_starts_with_the_two_commands_and_stays_short():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert readme.startswith("# airflow-resnet-prep")
    first_lines = readme.splitlines()[:6]
    assert any(line.startswith("make demo") for line in first_lines)
    assert any(line.startswith("make test") for line in first_lines)
    assert len(readme.splitlines()) <= 250, "README.md: move detail to docs/"


def test_docs_list_every_param_with_its_default_and_what_it_shapes():
    text = (REPO / "docs" / "params.md").read_text(encoding="utf-8")
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 4:
            rows[cells[0].strip("`")] = cells
    assert list(rows) == list(PARAMS), "docs/params.md: one row per param, in the form's order"
    for name, spec in PARAMS.items():
        assert rows[name][1] == spec.schema["type"] + ("" if spec.required else " or null"), name
        if spec.required:
            assert rows[name][2] == "none: required", name
        elif name != "labels_source":  # a long URL: named, not copied
            assert rows[name][2] == f"`{json.dumps(spec.default)}`", name
        for implementation in spec.shapes:
            assert implementation in rows[name][3] or "every implementation" in rows[name][3], name
        if not spec.shapes and name != "implementation":
            assert rows[name][3] == "no", name
