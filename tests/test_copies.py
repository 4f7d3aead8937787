"""The copies people hold, end to end: every output file of both implementations made from Kaggle's zip,
Kaggle's tree or Hugging Face's shards is byte-identical to the one made from the official tars of the
same images (the sample generator lays those images out as each copy).

Through the CLI (each layout, both implementations, ``labels_source`` left out; Hugging Face's shards
also read in place, without working copies), the real DAG file (``dag.test()``, the default
``labels_source``: nothing downloaded), the zip and the Hugging Face folder in the S3 test server (read in
place), the zip served over HTTP (a cut download resumed with Range), a run on the zip killed in the middle
of a unit, and a fetch killed while it writes the shards' working copies, each then rerun.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_resnet_prep.failpoints import ENV as FAILPOINT_ENV
from airflow_resnet_prep.fsutil import TMP_SUFFIX, read_json
from airflow_resnet_prep.layout import INFLATED
from airflow_resnet_prep.sample_copies import write_copy
from tests.support.httpserver import FileServer

IMPLEMENTATIONS = ("nvidia", "reference")
LAYOUTS = ("kaggle", "kaggle-zip", "huggingface")
OUTPUT_DIR = {"nvidia": "recordio", "reference": "tfrecords"}
SHARDS = {"train_shards": 4, "val_shards": 2}
CLI_TIMEOUT_S = 300


def cli(
    data_dir: Path,
    implementation: str,
    train: str,
    val: str,
    labels: str | None = None,
    failpoint=None,
    inflate: bool = True,
):
    args = [sys.executable, "-m", "airflow_resnet_prep.pipeline", "--data-dir", str(data_dir)]
    args += ["--train-source", train, "--val-source", val, "--implementation", implementation]
    args += ["--labels-source", labels] if labels else []
    for name, value in {**SHARDS, "workers": 1}.items():
        args += ["--param", f"{name}={json.dumps(value)}"]
    env = {k: v for k, v in os.environ.items() if k != FAILPOINT_ENV}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["AIRFLOW__RESNET_PREP__INFLATE_COMPRESSED_SOURCES"] = str(inflate).lower()
    if failpoint:
        env[FAILPOINT_ENV] = failpoint
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def outputs(data_dir: Path, implementation: str) -> dict[str, str]:
    folder = data_dir / OUTPUT_DIR[implementation]
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def official(sample, tmp_path_factory) -> dict[str, dict[str, str]]:
    """The outputs of the official tars, per implementation: what every copy must give."""
    digests = {}
    for implementation in IMPLEMENTATIONS:
        data_dir = tmp_path_factory.mktemp(f"official-{implementation}")
        done = cli(data_dir, implementation, str(sample.train_tar), str(sample.val_tar), str(sample.labels))
        assert done.returncode == 0, done.stderr[-3000:]
        digests[implementation] = outputs(data_dir, implementation)
    return digests


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_cli_on_a_copy_gives_the_official_bytes(sample, official, tmp_path, layout, implementation):
    copy = str(write_copy(sample, layout))
    done = cli(tmp_path, implementation, copy, copy)  # one copy for both; its own labels
    assert done.returncode == 0, done.stderr[-3000:]
    assert outputs(tmp_path, implementation) == official[implementation]
    manifest = read_json(tmp_path / "manifest.json")
    assert {manifest["sources"][s]["layout"] for s in ("train", "val")} == {layout}
    assert manifest["sources"]["labels"] is None  # no labels file read, nothing downloaded
    downloads = tmp_path / "downloads"
    kept = (
        sorted(p.relative_to(tmp_path).as_posix() for p in downloads.rglob("*")) if downloads.exists() else []
    )
    if layout == "huggingface":  # the working copies: each shard inflated into a plain tar, and its record
        shards = [f"train_images_{n}.tar" for n in range(5)] + ["val_images.tar"]  # test_images: never read
        assert kept == [INFLATED, *sorted(f"{INFLATED}/{n}{x}" for n in shards for x in ("", ".json"))]
    else:
        assert kept == []


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_huggingface_shards_read_in_place_give_the_official_bytes(sample, official, tmp_path, implementation):
    """``inflate_compressed_sources = false``: no working copy; every read call inflates the shards."""
    copy = str(write_copy(sample, "huggingface"))
    done = cli(tmp_path, implementation, copy, copy, inflate=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert outputs(tmp_path, implementation) == official[implementation]
    assert not (tmp_path / INFLATED).exists()
    catalog_head = (tmp_path / "catalog" / "train.tsv").read_text().splitlines()[0]
    assert '"kind": "tar.gz"' in catalog_head and '"kind": "tar"' not in catalog_head


def test_dag_on_copies_gives_the_official_bytes(sample, official, tmp_path, airflow_db):
    """The real DAG file, labels_source at its default (a URL no test can reach: it must not be fetched)."""
    from airflow.dag_processing.dagbag import DagBag

    from tests.test_dag import DAG_FILE, DAG_ID, run_dag

    dag = DagBag(dag_folder=str(DAG_FILE.parent)).get_dag(DAG_ID)
    for layout, implementation in (("kaggle-zip", "nvidia"), ("huggingface", "reference")):
        copy = str(write_copy(sample, layout))
        conf = {
            "implementation": implementation,
            "data_dir": str(tmp_path / layout),
            "train_source": copy,
            "val_source": copy,
            "workers": 1,
            "fanout": 2,
            **SHARDS,
        }
        run = run_dag(dag, conf)
        assert run.state == "success", run.states
        assert outputs(tmp_path / layout, implementation) == official[implementation]
        report = (tmp_path / layout / "report" / "index.html").read_text()
        assert layout in report  # the layout is shown with the sources


def test_a_zip_over_http_resumes_with_range_and_is_read_in_place(sample, official, tmp_path):
    path = write_copy(sample, "kaggle-zip")
    data = path.read_bytes()
    with FileServer(files={path.name: data}, ranges=True) as server:
        server.fault("cut", after=len(data) // 3, path=path.name)
        url = server.url(path.name)
        done = cli(tmp_path, "nvidia", url, url)
        gets = server.gets(path.name)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed_at = [int(g.headers["Range"][6:-1]) for g in gets if g.headers.get("Range")]
    assert len(resumed_at) == 1 and 0 < resumed_at[0] <= len(data) // 3  # resumed, not restarted
    assert outputs(tmp_path, "nvidia") == official["nvidia"]
    assert (tmp_path / "downloads" / path.name).read_bytes() == data  # the zip, never extracted
    assert not (tmp_path / "raw").exists()


def test_a_huggingface_shard_over_http_is_downloaded_then_inflated_once(sample, official, tmp_path):
    data = write_copy(sample, "huggingface")
    shard = (data / "val_images.tar.gz").read_bytes()
    with FileServer(files={"val_images.tar.gz": shard}, ranges=True) as server:
        done = cli(tmp_path, "reference", str(data), server.url("val_images.tar.gz"))
        gets = server.gets("val_images.tar.gz")
    assert done.returncode == 0, done.stderr[-3000:]
    assert outputs(tmp_path, "reference") == official["reference"]
    assert len(gets) == 1
    assert (tmp_path / "downloads" / "val_images.tar.gz").read_bytes() == shard  # the download, as served
    assert (tmp_path / INFLATED / "val_images.tar").read_bytes() == gzip.decompress(shard)


@pytest.mark.parametrize("layout", ["kaggle-zip", "huggingface"])
def test_copies_in_a_bucket_are_read_in_place(sample, official, tmp_path, s3_server, s3_prefix, layout):
    from airflow_resnet_prep.pipeline import run
    from airflow_resnet_prep.storage import store_for

    copy = write_copy(sample, layout)
    store = store_for(s3_prefix)
    if copy.is_file():
        store.write_bytes(copy.name, copy.read_bytes())
        source = f"{s3_prefix}/{copy.name}"
    else:
        for file in sorted(copy.iterdir()):
            store.write_bytes(f"data/{file.name}", file.read_bytes())
        source = f"{s3_prefix}/data"
    result = run(
        {
            "data_dir": str(tmp_path),
            "train_source": source,
            "val_source": source,
            "implementation": "nvidia",
            "workers": 1,
            **SHARDS,
        }
    )
    assert result["cached"] is False
    assert outputs(tmp_path, "nvidia") == official["nvidia"]
    assert read_json(tmp_path / "manifest.json")["sources"]["val"]["layout"] == layout


def test_huggingface_working_copies_in_a_bucket_data_dir(sample, official, s3_server, s3_prefix):
    """Shards and data_dir in the bucket: each copy is uploaded (a multipart upload, completed whole) into
    the data_dir's prefix and read in place from there; a second implementation inflates nothing."""
    from airflow_resnet_prep.pipeline import run
    from airflow_resnet_prep.storage import store_for

    store = store_for(s3_prefix)
    copy = write_copy(sample, "huggingface")
    for file in sorted(copy.iterdir()):
        store.write_bytes(f"data/{file.name}", file.read_bytes())
    values = {"train_source": f"{s3_prefix}/data", "val_source": f"{s3_prefix}/data", "workers": 1, **SHARDS}
    for implementation in IMPLEMENTATIONS:
        run({**values, "data_dir": f"{s3_prefix}/dd", "implementation": implementation})
        folder = f"dd/{OUTPUT_DIR[implementation]}"
        made = {
            i.key.rsplit("/", 1)[1]: hashlib.sha256(store.read_bytes(i.key)).hexdigest()
            for i in store.list(folder)
        }
        assert made == official[implementation]
        for info in store.list(f"dd/{INFLATED}"):  # marks that a copy made again would not keep
            if info.key.endswith(".json"):
                record = json.loads(store.read_bytes(info.key))
                assert record.get("at") == "first run" or implementation == IMPLEMENTATIONS[0]
                store.write_bytes(info.key, json.dumps({**record, "at": "first run"}).encode())
    inflated = {i.key.rsplit("/", 1)[1]: i for i in store.list(f"dd/{INFLATED}")}
    for name in [f"train_images_{n}.tar" for n in range(5)] + ["val_images.tar"]:
        assert store.read_bytes(f"dd/{INFLATED}/{name}") == gzip.decompress(
            (copy / f"{name}.gz").read_bytes()
        )
        record = json.loads(store.read_bytes(f"dd/{INFLATED}/{name}.json"))
        assert record["size"] == inflated[name].size and record["shard"]["etag"]
    catalog = store.read_bytes("dd/catalog/train.tsv").split(b"\n", 1)[0].decode()
    assert f'"path": "{s3_prefix}/dd/{INFLATED}/train_images_0.tar"' in catalog


def test_a_run_on_the_zip_killed_mid_unit_resumes_to_the_same_bytes(sample, official, tmp_path):
    zip_path = str(write_copy(sample, "kaggle-zip"))
    killed = cli(tmp_path, "reference", zip_path, zip_path, failpoint="unit-half:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (tmp_path / "manifest.json").exists()
    done = (tmp_path / "work" / "reference" / "done").glob("*.json")
    assert len(list(done)) == 1  # the first unit finished, the second died halfway
    resumed = cli(tmp_path, "reference", zip_path, zip_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert outputs(tmp_path, "reference") == official["reference"]


def test_a_fetch_killed_while_inflating_leaves_no_finished_looking_copy(sample, official, tmp_path):
    copy = write_copy(sample, "huggingface")
    killed = cli(tmp_path, "nvidia", str(copy), str(copy), failpoint="inflate-copy:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    inflated = tmp_path / INFLATED
    assert any(p.name.endswith(TMP_SUFFIX) for p in inflated.iterdir())  # killed mid-copy
    for record in inflated.glob("*.json"):  # a copy with a record must be whole: it would be reused
        tar = record.with_suffix("")
        assert tar.read_bytes() == gzip.decompress((copy / f"{tar.name}.gz").read_bytes())
    assert not (tmp_path / "catalog" / "fetch.json").exists()
    resumed = cli(tmp_path, "nvidia", str(copy), str(copy))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert outputs(tmp_path, "nvidia") == official["nvidia"]
    assert not [p.name for p in inflated.iterdir() if p.name.endswith(TMP_SUFFIX)]
    assert len(list(inflated.glob("*.tar.json"))) == 6


def test_sample_cli_writes_each_layout(tmp_path):
    for layout in LAYOUTS:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "airflow_resnet_prep.sample", "--out", str(tmp_path)),
                *("--classes", "2", "--train-per-class", "2", "--val-per-class", "1", "--layout", layout),
            ],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        line = next(ln for ln in done.stdout.splitlines() if ln.startswith("copy:"))
        assert Path(line.split()[1]).exists() and f"({layout})" in line


def test_copies_are_reproducible(tmp_path):
    """The same sample gives the same copy, byte for byte, wherever it is written."""
    from airflow_resnet_prep.sample import generate

    made = []
    for where in ("a", "b"):
        small = generate(tmp_path / where, classes=2, train_per_class=3, val_per_class=2, seed=3)
        made.append({layout: write_copy(small, layout) for layout in LAYOUTS})
    for layout in LAYOUTS:
        a, b = made[0][layout], made[1][layout]
        files = [p.relative_to(a) for p in sorted(a.rglob("*")) if p.is_file()] if a.is_dir() else [Path()]
        assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files), layout
