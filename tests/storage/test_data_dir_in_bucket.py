"""``data_dir`` in a bucket (issue 12, items 2 and 3; SPEC §7): catalog, plan, done records, outputs and
``manifest.json`` under an object-store prefix, on a real S3 server (SeaweedFS) and a GCS emulator
(fake-gcs-server), both on 127.0.0.1.

- the whole DAG (``dag.test()``), both implementations, sources and data_dir in the bucket, units fanned
  out over mapped tasks: outputs byte-identical to a local run, XCom paths are URIs without the
  connection, nothing left under ``work/`` but the records, no multipart upload left open;
- the RecordIO read back from the bucket by the tests' reader, the TFRecords by ``tf.data``;
- a kill at each failpoint, then a rerun: the same bytes, never a partial object under a final name,
  no open upload;
- units run by separate processes that share no local folder (own HOME, TMPDIR and working folder);
- GCS: both implementations (``.rec`` built with compose);
- two runs on one data_dir: the second is refused while the first holds the lease.
"""

# ruff: noqa: F811 (the fixtures imported from test_sources_in_bucket are parameters here)
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys

import pytest

from airflow_resnet_prep.errors import OutputConflictError
from airflow_resnet_prep.layout import DataDir
from airflow_resnet_prep.storage import Multipart, store_for
from tests.storage.test_sources_in_bucket import (  # noqa: F401 (fixtures)
    bucket,
    dag,
    local_runs,
    pipeline_values,
    run_dag,
)

OUTPUT = {"reference": "tfrecords", "nvidia": "recordio"}
OUTPUT_KEY = {"reference": "tfrecords_path", "nvidia": "preprocessed_path"}


def remote_digests(data_dir: str, implementation: str) -> dict[str, str]:
    """sha256 of every object below the data_dir's output folder, by file name."""
    store = store_for(data_dir).child(OUTPUT[implementation])
    return {
        o.key: hashlib.sha256(store.read_bytes(o.key)).hexdigest() for o in store.list() if "/" not in o.key
    }


def keys_below(data_dir: str) -> list[str]:
    return [o.key for o in store_for(data_dir).list()]


def open_uploads(data_dir: str) -> list:
    """Open multipart uploads: only a store that has them (S3) can leave one."""
    store = store_for(data_dir)
    return store.list_uploads() if isinstance(store, Multipart) else []


def assert_clean(data_dir: str, implementation: str) -> None:
    """Only final outputs, records and the catalog under the prefix: no partial object, no piece, no
    lease, no open upload."""
    keys = keys_below(data_dir)
    assert "manifest.json" in keys
    stray = [
        k
        for k in keys
        if not (
            k in ("manifest.json", "report/index.html", "report/run.json")
            or k.startswith(("catalog/", f"{OUTPUT[implementation]}/"))
            or k.startswith(f"work/{implementation}/units/")
            or (k.startswith(f"work/{implementation}/done/") and k.endswith(".json"))
            or k == f"work/{implementation}/plan.json"
        )
    ]
    assert stray == [], stray
    assert open_uploads(data_dir) == []


# -- the whole DAG ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("implementation", ["reference", "nvidia"])
def test_dag_with_data_dir_in_a_bucket_matches_a_local_run(
    dag, bucket, local_runs, s3_prefix, implementation
):
    """Units over 2 mapped tasks (as on a cluster): reference shards written straight to the bucket,
    nvidia's train.rec one multipart upload whose parts the units uploaded."""
    conf = {**pipeline_values(bucket, s3_prefix, implementation), "fanout": 2}
    state, states, published = run_dag(dag, conf)
    assert state == "success", states
    assert len(states[f"{implementation}_units"]) == 2
    assert remote_digests(s3_prefix, implementation) == local_runs(implementation)
    shown = s3_prefix.replace(f"{bucket.server.conn_id}@", "")
    assert published["data_path"] == shown
    assert published[OUTPUT_KEY[implementation]] == f"{shown}/{OUTPUT[implementation]}"
    assert published["manifest"] == f"{shown}/manifest.json"
    assert published["report"] == f"{shown}/report/index.html"  # written through the bucket's store
    assert_clean(s3_prefix, implementation)
    text = store_for(s3_prefix).read_bytes("manifest.json").decode()
    for secret in (bucket.server.secret_key, bucket.server.access_key):
        assert secret not in text and secret not in json.dumps(published, default=str)
    manifest = json.loads(text)
    assert set(manifest["outputs"]) == {f"{OUTPUT[implementation]}/{n}" for n in local_runs(implementation)}
    # nothing changed: the rerun reads the manifest from the bucket and reuses the output
    state, states, published = run_dag(dag, conf)
    assert state == "success" and states["reuse_existing"] == ["success"] and published["cached"] is True


def test_recordio_in_the_bucket_reads_back(bucket, s3_prefix, sample) -> None:
    """The .rec streamed from the bucket through the package's reader: every record where .idx says,
    with the .lst's index and label, and the image bytes of the source."""
    from airflow_resnet_prep.formats.recordio import iter_records, unpack_header
    from airflow_resnet_prep.pipeline import run

    run(pipeline_values(bucket, s3_prefix, "nvidia", workers=2))
    store = store_for(s3_prefix).child("recordio")
    for split, count in (("train", sample.train_count), ("val", sample.val_count)):
        with store.open_read(f"{split}.rec", block_size=1 << 20) as fh:
            records = {offset: unpack_header(payload) for offset, payload in iter_records(fh)}
        idx = {
            k: int(v)
            for k, v in (line.split("\t") for line in store.read_bytes(f"{split}.idx").decode().splitlines())
        }
        lst = [line.split("\t") for line in store.read_bytes(f"{split}.lst").decode().splitlines()]
        assert len(records) == len(idx) == len(lst) == count
        for index, label, _ in lst:
            _, got_label, got_index, _, image = records[idx[index]]
            assert (got_index, got_label) == (int(index), float(label))
            assert image[:2] == b"\xff\xd8" or image[:8] == b"\x89PNG\r\n\x1a\n"


def test_tfrecords_from_the_bucket_read_with_tf_data(bucket, s3_prefix, sample, tmp_path) -> None:
    import tensorflow as tf

    from airflow_resnet_prep.pipeline import run

    run(pipeline_values(bucket, s3_prefix, "reference", dali_index=True))
    store = store_for(s3_prefix).child("tfrecords")
    local = tmp_path / "download"
    local.mkdir()
    for o in store.list():
        (local / o.key).write_bytes(store.read_bytes(o.key))
    features = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    }
    for prefix, count in (("train", sample.train_count), ("validation", sample.val_count)):
        files = sorted(str(p) for p in local.glob(f"{prefix}-*-of-*") if p.suffix != ".idx")
        parsed = [tf.io.parse_single_example(r, features) for r in tf.data.TFRecordDataset(files)]
        assert len(parsed) == count
        assert all(1 <= int(p["image/class/label"]) <= 1000 for p in parsed)
        assert all(bytes(p["image/encoded"].numpy())[:2] == b"\xff\xd8" for p in parsed)


# -- crashes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("implementation", "point"),
    [
        ("nvidia", "unit-half"),
        ("nvidia", "finish"),
        ("reference", "unit-half"),
        ("reference", "before-manifest"),
    ],
)
def test_killed_run_then_rerun_gives_the_same_bytes(bucket, local_runs, s3_prefix, implementation, point):
    """SIGKILL at a failpoint (mid-unit: a multipart upload or a shard's upload open; in finish: after the
    .rec is completed, before .idx/.lst): no partial object under a final name, then a rerun completes
    with the local run's bytes and leaves no open upload."""
    args = [sys.executable, "-m", "airflow_resnet_prep.pipeline"]
    v = pipeline_values(bucket, s3_prefix, implementation)
    args += [
        "--data-dir",
        v["data_dir"],
        "--train-source",
        v["train_source"],
        "--val-source",
        v["val_source"],
    ]
    args += ["--labels-source", v["labels_source"], "--implementation", implementation]
    args += ["--param", "train_shards=4", "--param", "val_shards=2", "--param", "workers=1"]
    env = {**os.environ, "AIRFLOW_RESNET_PREP_FAILPOINT": point}
    proc = subprocess.run(args, env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]
    keys = keys_below(s3_prefix)
    assert "manifest.json" not in keys
    expected = local_runs(implementation)
    partial = remote_digests(s3_prefix, implementation)
    assert {n: d for n, d in partial.items() if expected.get(n) != d} == {}, (
        "a partial object under a final name"
    )
    rerun = subprocess.run(args, capture_output=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr.decode()[-3000:]
    assert remote_digests(s3_prefix, implementation) == expected
    assert_clean(s3_prefix, implementation)


# -- workers that share nothing but the bucket -------------------------------------------------------------
_UNIT_SCRIPT = """
import sys
from airflow_resnet_prep.converters import base
from airflow_resnet_prep.layout import DataDir
from airflow_resnet_prep.pipeline import make_converter
data_dir, implementation = sys.argv[1], sys.argv[2]
converter = make_converter(implementation, {"train_shards": 4, "val_shards": 2})
plan = base.Plan.load(DataDir.of(data_dir), implementation)
for unit in sys.argv[3:]:
    base.run_plan_unit(converter, plan, int(unit))
"""


@pytest.mark.parametrize("implementation", ["reference", "nvidia"])
def test_units_in_processes_sharing_no_local_folder(bucket, local_runs, s3_prefix, tmp_path, implementation):
    """As Kubernetes pods: plan here, then each unit in a process of its own with its own HOME, TMPDIR
    and working folder (nothing on a shared disk), then finish here."""
    from airflow_resnet_prep.catalog.fetch import fetch
    from airflow_resnet_prep.catalog.relabel import relabel
    from airflow_resnet_prep.converters import base
    from airflow_resnet_prep.pipeline import make_converter

    v = pipeline_values(bucket, s3_prefix, implementation)
    fetch(s3_prefix, v["train_source"], v["val_source"])
    relabel(s3_prefix, v["labels_source"])
    converter = make_converter(implementation, v)
    plan = base.plan(converter, s3_prefix)
    procs = []
    for unit in plan.units:
        home = tmp_path / f"pod-{unit.id}"
        (home / "tmp").mkdir(parents=True)
        env = {
            k: val
            for k, val in os.environ.items()
            if k.startswith(("AIRFLOW_CONN_", "PATH", "PYTHON", "GCSFS_", "VIRTUAL_ENV"))
        }
        env.update(HOME=str(home), TMPDIR=str(home / "tmp"), AIRFLOW_HOME=str(home / "airflow"))
        cmd = [sys.executable, "-c", _UNIT_SCRIPT, s3_prefix, implementation, str(unit.id)]
        procs.append(subprocess.Popen(cmd, cwd=home, env=env, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    for unit in plan.units:  # scratch only: each pod's temporary folder is empty again
        assert list((tmp_path / f"pod-{unit.id}" / "tmp").iterdir()) == []
    base.finish(converter, plan)
    assert remote_digests(s3_prefix, implementation) == local_runs(implementation)
    assert open_uploads(s3_prefix) == []


# -- GCS ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gcs_sources(gcs_server, sample) -> dict[str, str]:
    """The sample's three files in the GCS emulator's bucket."""
    import secrets

    prefix = f"gs://{gcs_server.conn_id}@{gcs_server.bucket}/sources-{secrets.token_hex(3)}"
    store = store_for(prefix)
    for name, path in (
        ("train.tar", sample.train_tar),
        ("val.tar", sample.val_tar),
        ("labels.txt", sample.labels),
    ):
        store.write_bytes(name, path.read_bytes())
    return {
        "train_source": f"{prefix}/train.tar",
        "val_source": f"{prefix}/val.tar",
        "labels_source": f"{prefix}/labels.txt",
    }


@pytest.mark.parametrize("implementation", ["reference", "nvidia"])
def test_data_dir_in_gcs_matches_a_local_run(
    gcs_sources, local_runs, gcs_prefix, monkeypatch, implementation
):
    """nvidia's units write pieces that finish composes into train.rec; 3 units per split here, so the
    compose is real (a tree once more than 32)."""
    from airflow_resnet_prep.converters import recordio
    from airflow_resnet_prep.pipeline import run

    monkeypatch.setattr(recordio, "UNIT_RECORDS", 5)  # GCS has no minimum piece size
    monkeypatch.setattr("airflow_resnet_prep.converters.base.MIN_REMOTE_UNIT_BYTES", 0)
    result = run(
        {
            **gcs_sources,
            "data_dir": gcs_prefix,
            "implementation": implementation,
            "train_shards": 4,
            "val_shards": 2,
            "workers": 2,
        }
    )
    assert result["cached"] is False
    assert remote_digests(gcs_prefix, implementation) == local_runs(implementation)
    assert_clean(gcs_prefix, implementation)


# -- two runs ----------------------------------------------------------------------------------------------
def test_a_second_run_on_the_same_data_dir_is_refused_while_the_first_holds_it(bucket, s3_prefix) -> None:
    from airflow_resnet_prep.catalog.fetch import fetch

    v = pipeline_values(bucket, s3_prefix, "reference")
    held = DataDir.of(s3_prefix)
    with held.hold(wait_s=0):
        with pytest.raises(OutputConflictError) as info:
            fetch(s3_prefix, v["train_source"], v["val_source"])
        text = str(info.value)
        assert ".lock" in text and f"pid {os.getpid()}" in text, text
        assert bucket.server.secret_key not in text
    fetch(s3_prefix, v["train_source"], v["val_source"])  # released: the next run goes ahead
    assert "catalog/train.tsv" in keys_below(s3_prefix)


def test_what_an_object_store_data_dir_cannot_share_is_refused(bucket, s3_prefix) -> None:
    from airflow_resnet_prep.catalog.fetch import fetch
    from airflow_resnet_prep.errors import PrepError

    v = pipeline_values(bucket, s3_prefix, "reference")
    with pytest.raises(PrepError, match="extract=true"):
        fetch(s3_prefix, v["train_source"], v["val_source"], extract=True)
    with pytest.raises(PrepError, match="download_sources=true"):
        fetch(s3_prefix, v["train_source"], v["val_source"], download_sources=True)
    with pytest.raises(PrepError, match="copy it into a bucket"):
        fetch(s3_prefix, "https://example.invalid/train.tar", v["val_source"])
    assert keys_below(s3_prefix) == []


def test_local_sources_with_a_data_dir_in_a_bucket(sample, local_runs, s3_prefix) -> None:
    """One machine writing to a bucket: local tars, outputs and state in the bucket."""
    from airflow_resnet_prep.pipeline import run

    run(
        {
            "data_dir": s3_prefix,
            "train_source": str(sample.train_tar),
            "val_source": str(sample.val_tar),
            "labels_source": str(sample.labels),
            "implementation": "nvidia",
            "workers": 2,
        }
    )
    assert remote_digests(s3_prefix, "nvidia") == local_runs("nvidia")


def test_a_lost_rec_in_the_bucket_is_rebuilt_by_a_rerun(bucket, local_runs, s3_prefix) -> None:
    """The multipart upload that built train.rec is spent once completed: a rerun that finds the object
    gone converts the split's units again into a new upload, and leaves none open."""
    from airflow_resnet_prep.pipeline import run

    v = pipeline_values(bucket, s3_prefix, "nvidia")
    run(v)
    store = store_for(s3_prefix)
    store.delete("recordio/train.rec")
    assert run(v)["cached"] is False
    assert remote_digests(s3_prefix, "nvidia") == local_runs("nvidia")
    assert_clean(s3_prefix, "nvidia")
