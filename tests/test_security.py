"""Attacks by someone who may trigger the DAG but not read connections: borrowing a connection, sending
its secrets to a server they run, following a redirect with them, writing where the deployment did not
allow. Capture servers on 127.0.0.1 record every header they receive; the DAG and its operators run
for real (``dag.test()``, operators' ``execute``). The report view's half lives in tests/ui/.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.policy import NotAllowedError
from tests.support.httpserver import FileServer

USER, SECRET, API_KEY = "mirror-user", "pw-9f3c1d77", "key-51aa0c"
SECRETS = (SECRET, API_KEY)


def _leaked(server: FileServer) -> list[str]:
    """Every header value any request to ``server`` carried that holds a secret (or basic auth)."""
    found = []
    for request in server.requests:
        for name, value in request.headers.items():
            if name.lower() == "authorization" or any(s in value for s in SECRETS):
                found.append(f"{request.method} {request.path}: {name}")
    return found


@pytest.fixture
def sample_files(sample) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (sample.train_tar, sample.val_tar, sample.labels)}


@pytest.fixture
def mirror(sample_files):
    """The download server the connection is for: requires basic auth and the API-key header."""
    with FileServer(files=sample_files, auth=(USER, SECRET), required_headers={"X-Api-Key": API_KEY}) as srv:
        yield srv


@pytest.fixture
def attacker(sample_files):
    """A server of the attacker's: serves the same files, and records what it was sent."""
    with FileServer(files=sample_files) as srv:
        yield srv


@pytest.fixture
def connections(monkeypatch, mirror):
    """``mirror_conn`` (an http connection for the mirror) and ``prod_db`` (a database's secret)."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_MIRROR_CONN",
        json.dumps(
            {
                "conn_type": "http",
                "host": "127.0.0.1",
                "port": mirror.port,
                "login": USER,
                "password": SECRET,
                "extra": {"headers": {"X-Api-Key": API_KEY}},
            }
        ),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_PROD_DB",
        json.dumps({"conn_type": "postgres", "host": "127.0.0.1", "login": USER, "password": SECRET}),
    )
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_CONN_IDS", "mirror_conn")


def fetch_op(tmp_path: Path, server: FileServer, sample, conn: str = "mirror_conn", **kw):
    from airflow_resnet_prep.operators.fetch import FetchImagenetOperator

    args = {
        "task_id": "fetch",
        "data_dir": str(tmp_path / "data"),
        "train_source": server.url(sample.train_tar.name),
        "val_source": server.url(sample.val_tar.name),
        # as from a trigger form: templated, so not the DAG author's literal choice
        "http_conn_id": "{{ params.http_conn_id }}",
        **kw,
    }
    op = FetchImagenetOperator(**args)
    op.http_conn_id = conn  # the value the template rendered to
    return op


def test_a_connection_the_deployment_did_not_allow_is_refused_before_any_request(
    tmp_path, sample, attacker, connections
) -> None:
    op = fetch_op(tmp_path, attacker, sample, conn="prod_db")
    with pytest.raises(NotAllowedError) as err:
        op.execute({"params": {}, "ti": None})
    assert "http_conn_id" in str(err.value) and "allowed_conn_ids" in str(err.value)
    assert attacker.requests == [], "nothing may be sent once the connection is refused"


def test_an_allowed_connection_sends_its_secrets_to_its_own_host(
    tmp_path, sample, mirror, connections
) -> None:
    """The positive control: the same capture shows the secrets when they are meant to go there."""
    op = fetch_op(tmp_path, mirror, sample)
    result = op.execute({"params": {}, "ti": None})
    assert result["counts"]["train"] == sample.train_count
    assert mirror.gets(sample.train_tar.name)
    assert _leaked(mirror), "the mirror received the credentials"


def test_an_allowed_connection_is_not_sent_to_another_origin(
    tmp_path, sample, mirror, attacker, connections
) -> None:
    op = fetch_op(tmp_path, attacker, sample)  # sources on the attacker's server, the mirror's connection
    with pytest.raises(PrepError) as err:
        op.execute({"params": {}, "ti": None})
    assert f"127.0.0.1:{mirror.port}" in str(err.value) and "never sent elsewhere" in str(err.value)
    assert attacker.requests == []
    assert all(s not in str(err.value) for s in SECRETS)


def test_a_redirect_to_another_origin_carries_no_credentials(
    tmp_path, sample, sample_files, attacker, connections, monkeypatch
) -> None:
    name = sample.train_tar.name
    redirects = {name: attacker.url(name)}
    with FileServer(
        files=sample_files,
        auth=(USER, SECRET),
        required_headers={"X-Api-Key": API_KEY},
        redirects=redirects,
    ) as redirecting:
        conn = json.loads(os.environ["AIRFLOW_CONN_MIRROR_CONN"])
        monkeypatch.setenv("AIRFLOW_CONN_MIRROR_CONN", json.dumps({**conn, "port": redirecting.port}))
        op = fetch_op(tmp_path, redirecting, sample)
        result = op.execute({"params": {}, "ti": None})
    assert result["counts"]["train"] == sample.train_count  # the redirect was followed ...
    assert attacker.gets(name)
    assert _leaked(attacker) == []  # ... without the login, password or API key
    assert _leaked(redirecting), "the first hop did carry them"


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("storage_conn_id", "prod_db"),
        ("train_source", "s3://prod_db@bucket/ILSVRC2012_img_train.tar"),
        ("data_dir", "s3://prod_db@bucket/prefix"),
    ],
)
def test_storage_connections_are_checked_like_http_ones(
    tmp_path, sample, attacker, connections, param, value
):
    from airflow_resnet_prep.operators.nvidia import NvidiaPrepOperator

    fetch = fetch_op(tmp_path, attacker, sample, conn="")
    setattr(fetch, param, value)
    with pytest.raises(NotAllowedError, match=param):
        fetch.execute({"params": {}, "ti": None})
    if param != "train_source":
        convert = NvidiaPrepOperator(task_id="nvidia_plan", step="plan", data_dir="{{ params.data_dir }}")
        convert.data_dir = str(tmp_path / "data")
        setattr(convert, param, value)
        with pytest.raises(NotAllowedError, match=param):
            convert.execute({"params": {}, "ti": None})
    assert attacker.requests == []


def test_a_data_dir_outside_the_allowed_roots_is_refused(tmp_path, sample, mirror, connections, monkeypatch):
    root = tmp_path / "allowed"
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_DATA_ROOTS", str(root))
    for outside in (tmp_path / "elsewhere", root / ".." / "elsewhere"):
        op = fetch_op(tmp_path, mirror, sample, data_dir=str(outside))
        with pytest.raises(NotAllowedError, match="allowed_data_roots"):
            op.execute({"params": {}, "ti": None})
    assert mirror.requests == [] and not (tmp_path / "elsewhere").exists()
    op = fetch_op(tmp_path, mirror, sample, data_dir=str(root / "prep"))
    assert op.execute({"params": {}, "ti": None})["counts"]["val"] == sample.val_count


def test_the_dag_refuses_a_borrowed_connection_from_the_trigger(
    tmp_path, sample, attacker, connections, airflow_db
):
    """The whole DAG as a trigger would start it: the run fails at its first task, nothing is sent."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"]).get_dag("mlperf_resnet_prep")
    run = dag.test(
        run_conf={
            "data_dir": str(tmp_path / "data"),
            "train_source": attacker.url(sample.train_tar.name),
            "val_source": attacker.url(sample.val_tar.name),
            "labels_source": attacker.url(sample.labels.name),
            "http_conn_id": "prod_db",
        }
    )
    assert str(run.state) == "failed"
    assert attacker.requests == []
