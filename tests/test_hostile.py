"""Bad images, hostile archive members, odd data_dir names and secrets, through the whole pipeline.

What tests/catalog/ already proves at the catalog level (absolute paths, ``..``, links and device
members refused; truncated archives; every labels-file defect) is not repeated here; these tests run
the pipeline end to end and check what lands on disk, what the manifest says and what the user sees.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import traceback
from pathlib import Path
from typing import Any

import pytest

from airflow_resnet_prep import pipeline
from airflow_resnet_prep.errors import BadImageError, OutputConflictError, PrepError, SourceError
from airflow_resnet_prep.formats.recordio import iter_records, unpack_header
from airflow_resnet_prep.fsutil import read_json
from airflow_resnet_prep.sample import SampleSet, generate
from airflow_resnet_prep.sources.credentials import HttpCredentials, origin_of
from airflow_resnet_prep.verify import verify
from tests.support.httpserver import FileServer

IMPLEMENTATIONS = ("nvidia", "reference", "webdataset")
OUTPUT_DIR = {"nvidia": "recordio", "reference": "tfrecords", "webdataset": "webdataset"}
SMALL = {"classes": 3, "train_per_class": 4, "val_per_class": 2, "seed": 0}
SHARDS = {"train_shards": 3, "val_shards": 2}
VOLATILE = ("steps", "written_at", "sources", "conversion")


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SampleSet:
    return generate(tmp_path_factory.mktemp("small"), **SMALL)


def values_for(data_dir: Path, implementation: str, sources: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "data_dir": str(data_dir),
        "implementation": implementation,
        "workers": 1,
        **SHARDS,
        **sources,
        **extra,
    }


def local_sources(small: SampleSet) -> dict[str, str]:
    return {
        "train_source": str(small.train_tar),
        "val_source": str(small.val_tar),
        "labels_source": str(small.labels),
    }


@pytest.fixture(scope="module")
def baseline(small: SampleSet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    dirs = {}
    for implementation in IMPLEMENTATIONS:
        dirs[implementation] = tmp_path_factory.mktemp(f"plain-{implementation}")
        pipeline.run(values_for(dirs[implementation], implementation, local_sources(small)))
    return dirs


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def manifest_core(data_dir: Path) -> dict[str, Any]:
    manifest = read_json(data_dir / "manifest.json")
    assert manifest is not None, f"{data_dir}: no manifest.json"
    return {k: v for k, v in manifest.items() if k not in VOLATILE}


def snapshot(*roots: Path, skip: Path | None = None) -> dict[str, tuple[int, str]]:
    """Every file and folder below ``roots`` except ``skip`` and its parents (which gain it): a file's
    (mtime_ns, sha256), a folder's (0, its entries)."""
    out = {}
    for root in roots:
        for path in sorted([root, *root.rglob("*")]):
            if skip is not None and (path == skip or skip in path.parents or path in skip.parents):
                continue
            if path.is_file():
                out[str(path)] = (path.lstat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                out[str(path)] = (
                    0,
                    "\n".join(sorted(p.name for p in path.iterdir() if p not in skip.parents)),
                )
    return out


def train_images(small: SampleSet) -> dict[str, bytes]:
    """``<synset>/<name>`` -> bytes of every training image of the sample (its tar holds one tar per class)."""
    images = {}
    with tarfile.open(small.train_tar) as outer:
        for member in outer.getmembers():
            with tarfile.open(fileobj=io.BytesIO(outer.extractfile(member).read())) as inner:
                for image in inner.getmembers():
                    images[f"{member.name[:-4]}/{image.name}"] = inner.extractfile(image).read()
    return images


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def read_outputs(data_dir: Path, implementation: str) -> dict[str, list[str]]:
    """The image file names stored in the output, per split, read back with the formats' own readers."""
    names: dict[str, list[str]] = {"train": [], "val": []}
    out = data_dir / OUTPUT_DIR[implementation]
    if implementation == "nvidia":
        for split in names:
            lst = [line.split("\t") for line in (out / f"{split}.lst").read_text().splitlines()]
            records = [unpack_header(payload) for _, payload in iter_records(out / f"{split}.rec")]
            assert [int(index) for index, _, _ in lst] == [id1 for _, _, id1, _, _ in records]
            names[split] = [relpath.rsplit("/", 1)[-1] for _, _, relpath in lst]
        return names
    if implementation == "webdataset":  # the file name each sample's .json records, shard by shard
        for path in sorted(out.glob("*.tar")):
            split = "train" if "-train-" in path.name else "val"
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    if member.name.endswith(".json"):
                        names[split].append(json.loads(tar.extractfile(member).read())["filename"])
        return names
    import tensorflow as tf

    for path in sorted(out.iterdir()):
        split = "train" if path.name.startswith("train-") else "val"
        for raw in tf.data.TFRecordDataset(str(path)):
            example = tf.train.Example.FromString(raw.numpy())
            names[split].append(example.features.feature["image/filename"].bytes_list.value[0].decode())
    return names


def records_in_shard(path: Path, implementation: str) -> int:
    """Records of a reference or webdataset shard, read to the end (a partial one raises)."""
    if implementation == "webdataset":
        with tarfile.open(path) as tar:
            return sum(1 for m in tar.getmembers() if m.name.endswith(".jpg"))
    import tensorflow as tf

    return sum(1 for _ in tf.data.TFRecordDataset(str(path)))


# -- bad images ----------------------------------------------------------------------------------------
BAD = {
    "truncated": ("n_truncated.JPEG", "truncated JPEG"),
    "empty": ("n_empty.JPEG", "empty file (0 bytes)"),
    "text": ("n_text.JPEG", "not an image Pillow can open"),
}


@pytest.fixture(scope="module")
def bad_train_tar(small: SampleSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample's training set as ``<synset>/<image>`` members, plus one bad image of each kind."""
    images = train_images(small)
    synsets = sorted({key.split("/")[0] for key in images})
    a_jpeg = next(data for key, data in sorted(images.items()) if key not in small.quirks)
    bad = {
        "truncated": a_jpeg[: len(a_jpeg) * 3 // 5],
        "empty": b"",
        "text": b"This is a text file with a .JPEG name.\r\nIt holds no image.\n",
    }
    for i, (kind, data) in enumerate(bad.items()):
        synset = synsets[i % len(synsets)]
        images[f"{synset}/{synset}_{BAD[kind][0]}"] = data
    return write_tar(tmp_path_factory.mktemp("bad") / "train.tar", images)


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_a_bad_image_fails_naming_it_then_skip_leaves_it_out(
    small, bad_train_tar, tmp_path, implementation, kind
):
    # Only this kind of bad image: drop the other two from the tar.
    with tarfile.open(bad_train_tar) as tar:
        members = {
            m.name: tar.extractfile(m).read()
            for m in tar.getmembers()
            if not any(m.name.endswith(BAD[other][0]) for other in BAD if other != kind)
        }
    train = write_tar(tmp_path / "train.tar", members)
    bad_member = next(name for name in members if name.endswith(BAD[kind][0]))
    sources = {**local_sources(small), "train_source": str(train)}
    data_dir = tmp_path / "data"

    with pytest.raises(BadImageError) as info:
        pipeline.run(values_for(data_dir, implementation, sources))
    assert info.value.name == f"{train}[{bad_member}]" and BAD[kind][1] in info.value.reason
    assert str(train) in str(info.value) and bad_member in str(info.value)
    assert not (data_dir / "manifest.json").exists()
    out = data_dir / OUTPUT_DIR[implementation]
    if implementation == "nvidia":
        assert list(out.iterdir()) == []  # nothing is joined before every unit is done
    else:  # shards finished before the bad one are whole; the bad one's shard has no final name
        for shard in out.iterdir():
            assert not shard.name.startswith("."), f"{shard}: temp file of the failed unit left behind"
            assert records_in_shard(shard, implementation) > 0

    # The same data_dir with on_bad_image=skip: a different plan, so it takes force to replace the failed one.
    skip = values_for(data_dir, implementation, sources, on_bad_image="skip")
    with pytest.raises(OutputConflictError, match="force=true"):
        pipeline.run(skip)
    pipeline.run({**skip, "force": True})
    manifest = read_json(data_dir / "manifest.json")
    assert [(s["synset"], s["name"]) for s in manifest["skipped"]] == [tuple(bad_member.split("/"))]
    assert BAD[kind][1] in manifest["skipped"][0]["reason"]
    stored = read_outputs(data_dir, implementation)
    assert sorted(stored["train"]) == sorted(n.split("/")[1] for n in members if n != bad_member)
    assert len(stored["val"]) == small.val_count
    assert {f"{OUTPUT_DIR[implementation]}/{p.name}" for p in out.iterdir()} == set(manifest["outputs"])


# -- hostile names -------------------------------------------------------------------------------------
# Members named like outputs or state files of data_dir. Those that are not images are skipped by the
# catalog; an image with such a name is an ordinary image of its class. None may replace or join an output.
DECOYS = (
    "train.rec",
    "val.idx",
    "train-00000-of-00003",
    "validation-00001-of-00002",
    "_info.json",
    "manifest.json",
    ".lock",
)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_members_named_like_outputs_never_become_outputs(small, tmp_path, implementation):
    images = train_images(small)
    synset = sorted(images)[0].split("/")[0]
    a_jpeg = next(data for key, data in sorted(images.items()) if key not in small.quirks)
    members = {name: b"decoy " + name.encode() for name in DECOYS}
    # A top-level .tar is read as a class's archive (refused when it is not one), so webdataset's shard
    # name is a decoy inside a class, where it is neither.
    shard_decoy = f"{synset}/imagenet1k-train-0000.tar"
    members[shard_decoy] = b"decoy shard"
    members.update(images)
    members[f"{synset}/train-00000-of-00003.JPEG"] = a_jpeg  # an image, in a class, with a shard's name
    members[f"{synset}/train.rec.jpg"] = a_jpeg
    members[f"{synset}/imagenet1k-train-0000.tar.JPEG"] = a_jpeg
    (tmp_path / "sources").mkdir()
    train = write_tar(tmp_path / "sources" / "train.tar", members)
    sources = {**local_sources(small), "train_source": str(train)}
    data_dir = tmp_path / "data"
    outside = snapshot(tmp_path, small.root, skip=data_dir)

    pipeline.run(values_for(data_dir, implementation, sources, extract=True))

    assert snapshot(tmp_path, small.root, skip=data_dir) == outside
    manifest = read_json(data_dir / "manifest.json")
    out = data_dir / OUTPUT_DIR[implementation]
    assert {f"{OUTPUT_DIR[implementation]}/{p.name}" for p in out.iterdir()} == set(manifest["outputs"])
    for path in data_dir.rglob("*"):
        assert b"decoy" not in (path.read_bytes() if path.is_file() else b""), f"{path} holds a decoy member"
    stored = read_outputs(data_dir, implementation)
    assert sorted(stored["train"]) == sorted(
        k.split("/")[1] for k in members if "/" in k and k != shard_decoy
    )
    # verify reads the output back and finds every image where its name says (webdataset: dotted stems
    # give escaped sample keys)
    assert [str(p) for p in verify(data_dir, workers=1).problems] == []
    raw = data_dir / "raw" / "train" / synset
    assert (raw / "train-00000-of-00003.JPEG").read_bytes() == a_jpeg
    assert (raw / "train.rec.jpg").read_bytes() == a_jpeg
    assert (raw / "imagenet1k-train-0000.tar.JPEG").read_bytes() == a_jpeg


def _cli_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_RESNET_PREP_")}
    # A scratch HOME, TMPDIR and working directory: anything written there is written outside data_dir.
    env.update(HOME=str(tmp / "home"), TMPDIR=str(tmp / "tmp"), TF_CPP_MIN_LOG_LEVEL="2")
    return env


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_data_dir_with_spaces_and_non_ascii_and_nothing_written_outside_it(
    small, baseline, tmp_path, implementation
):
    data_dir = tmp_path / "my data" / "ImageNet für MLPerf, 数据 ✓"
    scratch = tmp_path / "scratch"
    for name in ("home", "tmp", "cwd"):
        (scratch / name).mkdir(parents=True)
    checksum = "md5:" + hashlib.md5(small.train_tar.read_bytes()).hexdigest()
    outside = snapshot(tmp_path, small.root, skip=data_dir)
    args = [sys.executable, "-m", "airflow_resnet_prep.pipeline", "--data-dir", str(data_dir)]
    args += ["--train-source", str(small.train_tar), "--val-source", str(small.val_tar)]
    args += ["--labels-source", str(small.labels), "--implementation", implementation]
    args += [f"--param={k}={v}" for k, v in {**SHARDS, "workers": 2, "train_checksum": checksum}.items()]
    args += ["--param=extract=true"]
    done = subprocess.run(args, env=_cli_env(scratch), cwd=scratch / "cwd", capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["data_path"] == str(data_dir)

    # The one exception, not ours: importing TensorFlow writes Keras' default config if it is missing.
    # The converters no longer import it (the package frames TFRecords itself); a step that does may.
    keras_config = scratch / "home" / ".keras" / "keras.json"
    if keras_config.exists():
        assert json.loads(keras_config.read_text())["backend"] == "tensorflow"
        keras_config.unlink()
        keras_config.parent.rmdir()
    assert snapshot(tmp_path, small.root, skip=data_dir) == outside
    out = OUTPUT_DIR[implementation]
    assert digests(data_dir / out) == digests(baseline[implementation] / out)
    assert manifest_core(data_dir) == manifest_core(baseline[implementation])
    assert (data_dir / "raw" / "train").is_dir()


# -- secrets -------------------------------------------------------------------------------------------
USER = "mlperf"
SECRET = "pw-S3cr3t-in-basic-auth"
WRONG_SECRET = "pw-Wr0ng-S3cr3t"
HEADER_SECRET = "hdr-S3cr3t-api-key"
QUERY_SECRET = "q-S3cr3t-signed-url-token"
SECRETS = (SECRET, WRONG_SECRET, HEADER_SECRET, QUERY_SECRET)


def _encodings(secret: str) -> list[str]:
    """The secret as it could leak: plain, or inside a Basic ``Authorization`` header value."""
    return [secret, base64.b64encode(f"{USER}:{secret}".encode()).decode()]


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        for form in _encodings(secret):
            assert form not in text, f"a secret leaked into {where}"


def everything_written(data_dir: Path) -> str:
    return "\n".join(
        p.read_bytes().decode(errors="replace") for p in sorted(data_dir.rglob("*")) if p.is_file()
    )


def exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc)


@pytest.fixture
def locked_mirror(small: SampleSet):
    """The sample behind basic auth and an API-key header (both required)."""
    files = {p.name: p.read_bytes() for p in (small.train_tar, small.val_tar, small.labels)}
    with FileServer(files=files, auth=(USER, SECRET), required_headers={"X-Api-Key": HEADER_SECRET}) as srv:
        yield srv


def mirror_connection(srv: FileServer) -> str:
    """An http connection for the locked mirror, as ``AIRFLOW_CONN_<ID>`` takes it."""
    return json.dumps(
        {
            "conn_type": "http",
            "host": "127.0.0.1",
            "port": srv.port,
            "login": USER,
            "password": SECRET,
            "extra": {"X-Api-Key": HEADER_SECRET},
        }
    )


def test_secrets_never_reach_logs_outputs_or_errors(small, locked_mirror, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG)  # urllib3 and requests log requests at DEBUG
    srv = locked_mirror
    headers = {"X-Api-Key": HEADER_SECRET}
    data_dir = tmp_path / "data"
    sources = {
        # credentials in the URL itself, and a signed-URL style token in the query
        "train_source": srv.url(small.train_tar.name, userinfo=f"{USER}:{SECRET}") + f"?token={QUERY_SECRET}",
        "val_source": srv.url(small.val_tar.name),
        "labels_source": srv.url(small.labels.name),
    }
    origin = origin_of(srv.url(""))
    result = pipeline.run(
        values_for(data_dir, "nvidia", sources), credentials=HttpCredentials(origin, (USER, SECRET), headers)
    )
    assert read_json(data_dir / "manifest.json")["sources"]["train"]["source"].endswith("token=***")
    assert all(r.headers.get("X-Api-Key") == HEADER_SECRET for r in srv.gets())  # the secrets were used

    failures = []
    checksum = "md5:" + "0" * 32  # the file does not have it: SourceError after the download
    bad_runs = [
        ({**sources, "train_checksum": checksum}, (USER, SECRET)),
        ({**sources, "labels_source": srv.url("no-such-labels.txt")}, (USER, SECRET)),
        ({**sources, "val_source": srv.url("v.tar", userinfo=f"{USER}:{WRONG_SECRET}")}, None),
    ]
    for i, (bad_sources, auth) in enumerate(bad_runs):
        with pytest.raises(SourceError) as info:
            credentials = HttpCredentials(origin, auth, headers)
            pipeline.run(values_for(tmp_path / f"bad{i}", "nvidia", bad_sources), credentials=credentials)
        failures.append(exception_text(info.value))
    assert "md5 mismatch" in failures[0] and "404" in failures[1] and "401" in failures[2]

    out, err = capfd.readouterr()
    assert_no_secret(json.dumps(result), "the result (XCom) of pipeline.run")
    assert_no_secret(caplog.text + out + err, "the logs")
    for i, text in enumerate(failures):
        assert_no_secret(text, f"the text of failure {i}")
    for folder in tmp_path.iterdir():
        assert_no_secret(everything_written(folder), f"files under {folder}")


def test_operator_failure_with_a_connection_shows_no_secret(
    small, locked_mirror, tmp_path, caplog, monkeypatch
):
    from airflow_resnet_prep.operators.fetch import FetchImagenetOperator

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(
        "AIRFLOW_CONN_LOCKED_MIRROR",
        mirror_connection(locked_mirror),
    )
    op = FetchImagenetOperator(
        task_id="fetch",
        data_dir=str(tmp_path / "data"),
        train_source=locked_mirror.url(small.train_tar.name),
        val_source=locked_mirror.url("missing.tar"),
        http_conn_id="locked_mirror",
    )
    with pytest.raises(PrepError) as info:
        op.execute({"params": {}, "ti": None})
    assert "404" in str(info.value)
    assert locked_mirror.gets(small.train_tar.name), "the train tar was downloaded with the connection"
    assert_no_secret(exception_text(info.value) + caplog.text, "the operator's error and logs")
    assert_no_secret(everything_written(tmp_path / "data"), "data_dir")


def test_dag_run_with_a_connection_leaks_no_secret(
    small, locked_mirror, tmp_path, caplog, capfd, monkeypatch, airflow_db
):
    """The real DAG with ``http_conn_id``: every XCom of the run, the logs, the metadata DB (rendered
    template fields, XComs), data_dir and the exception-free run itself are free of the credentials."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(
        "AIRFLOW_CONN_LOCKED_MIRROR",
        mirror_connection(locked_mirror),
    )
    # The DAG's defaults name no connection: the deployment allows this one.
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_CONN_IDS", "locked_mirror")
    dag = DagBag(dag_folder=str(Path(__file__).resolve().parent.parent / "dags")).get_dag(
        "mlperf_resnet_prep"
    )
    data_dir = tmp_path / "data"
    conf = {
        "implementation": "nvidia",
        "data_dir": str(data_dir),
        "train_source": locked_mirror.url(small.train_tar.name),
        "val_source": locked_mirror.url(small.val_tar.name),
        "labels_source": locked_mirror.url(small.labels.name),
        "http_conn_id": "locked_mirror",
        "workers": 1,
    }
    run = dag.test(run_conf=conf)
    assert str(run.state) == "success"
    assert locked_mirror.gets(small.train_tar.name), "the sources were downloaded through the connection"
    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=run.run_id, dag_ids=dag.dag_id)).all()
        xcoms = {
            f"{row.task_id}[{row.map_index}].{row.key}": XComModel.deserialize_value(row) for row in rows
        }
    assert "publish[-1].preprocessed_path" in xcoms and "fetch[-1].return_value" in xcoms
    out, err = capfd.readouterr()
    assert_no_secret(json.dumps(xcoms, default=str), "the XComs of the run")
    assert_no_secret(caplog.text + out + err, "the logs of the run")
    assert_no_secret(everything_written(data_dir), "data_dir")
    stored = everything_written(airflow_db)
    assert str(data_dir) in stored  # the DB keeps the run's values as plain text: a secret would show
    assert_no_secret(stored, "AIRFLOW_HOME (metadata DB, task logs)")
