"""Leases: two runs on one data_dir cannot both hold it (local: flock; S3: conditional writes, which the
SeaweedFS server honours: a second ``If-None-Match: *`` PUT gets 412; GCS: ``ifGenerationMatch``, which
fake-gcs-server honours on uploads), and choosing a store from a path."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from airflow_resnet_prep.storage import (
    LeaseHeldError,
    LeaseLostError,
    LocalStore,
    StorageError,
    Store,
    store_for,
)
from airflow_resnet_prep.storage.objectstore import S3Store


@pytest.fixture(params=["local", "s3", "gcs"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return store_for(str(tmp_path / "data"))
    return store_for(request.getfixturevalue(f"{request.param}_prefix"))


def test_the_server_honours_if_none_match(s3_server, s3_prefix: str) -> None:
    """The lease relies on it: check the server itself, with a plain client."""
    import botocore.exceptions

    client = s3_server.client()
    key = s3_prefix.split(f"{s3_server.bucket}/", 1)[1] + "/cond"
    client.put_object(Bucket=s3_server.bucket, Key=key, Body=b"1", IfNoneMatch="*")
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.put_object(Bucket=s3_server.bucket, Key=key, Body=b"2", IfNoneMatch="*")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(botocore.exceptions.ClientError):
        client.put_object(Bucket=s3_server.bucket, Key=key, Body=b"3", IfMatch='"0000"')
    assert client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == b"1"


def test_second_holder_is_refused_naming_the_first(store: Store) -> None:
    first = store.lease(".lease", owner="run A")
    with first:
        second = store.lease(".lease", owner="run B")
        with pytest.raises(LeaseHeldError, match="run A"):
            second.acquire()
    # released: the next run gets it
    with store.lease(".lease", owner="run B"):
        pass


def test_only_one_of_concurrent_takers_wins(store: Store) -> None:
    for round_ in range(4):
        leases = [store.lease(f".lease{round_}", owner=f"run {i}") for i in range(4)]
        outcomes: list[str] = []
        barrier = threading.Barrier(len(leases))

        def take(lease, barrier: threading.Barrier = barrier, outcomes: list[str] = outcomes) -> None:
            barrier.wait()
            try:
                lease.acquire()
                outcomes.append("won")
            except LeaseHeldError:
                outcomes.append("refused")

        threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["refused"] * 3 + ["won"], outcomes
        for lease in leases:
            lease.release()


@pytest.mark.parametrize("where", ["s3", "gcs"])
def test_expired_object_lease_is_taken_over_and_its_holder_learns_it(where: str, request) -> None:
    store = store_for(request.getfixturevalue(f"{where}_prefix"))
    crashed = store.lease(".lease", owner="crashed run", ttl_s=0.5).acquire()  # never renewed
    with pytest.raises(LeaseHeldError, match="crashed run"):
        store.lease(".lease", owner="rerun").acquire()
    time.sleep(0.8)
    rerun = store.lease(".lease", owner="rerun").acquire()
    info = json.loads(store.read_bytes(".lease"))
    assert info["owner"] == "rerun" and info["expires"] > time.time()
    with pytest.raises(LeaseLostError):
        crashed.renew()
    crashed.release()  # not ours any more: must not delete the rerun's lease
    assert json.loads(store.read_bytes(".lease"))["owner"] == "rerun"
    rerun.release()
    assert not store.exists(".lease")


@pytest.mark.parametrize("where", ["s3", "gcs"])
def test_object_lease_is_renewed_while_held(where: str, request) -> None:
    store = store_for(request.getfixturevalue(f"{where}_prefix"))
    with store.lease(".lease", owner="long run", ttl_s=0.6):
        time.sleep(1.5)  # more than twice the ttl: renewed in the background
        with pytest.raises(LeaseHeldError, match="long run"):
            store.lease(".lease", owner="other").acquire()
    assert not store.exists(".lease")


# -- store_for ------------------------------------------------------------------------------------------------
def test_store_for_chooses_from_the_path(tmp_path: Path) -> None:
    assert isinstance(store_for(str(tmp_path)), LocalStore)
    assert store_for(f"file://{tmp_path}").url == str(tmp_path)
    s3 = store_for("s3://my_conn@bucket/some/prefix/")
    assert isinstance(s3, S3Store)
    assert (s3.conn_id, s3.bucket, s3.prefix, s3.url) == (
        "my_conn",
        "bucket",
        "some/prefix",
        "s3://bucket/some/prefix",
    )
    assert store_for("s3://bucket/p", conn_id="param_conn").conn_id == "param_conn"
    assert store_for("s3://uri_conn@bucket/p", conn_id="param_conn").conn_id == "uri_conn"
    assert store_for("s3://bucket/p").conn_id is None
    assert s3.child("tfrecords").url == "s3://bucket/some/prefix/tfrecords"
    gs = store_for("gs://gconn@bkt/x")
    assert (gs.protocol, gs.conn_id, gs.url) == ("gs", "gconn", "gs://bkt/x")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3:/relative", "no bucket"),  # urlsplit: scheme s3, no netloc
        ("data/out", "relative path"),
        ("s3:", "no bucket"),
        ("", "empty path"),
        ("http://example.com/x.tar", "unsupported scheme"),
        ("s3://", "no bucket"),
    ],
)
def test_store_for_refuses_what_is_neither_absolute_nor_supported(uri: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        store_for(uri)


def test_store_for_refuses_credentials_in_the_uri_without_echoing_them() -> None:
    with pytest.raises(StorageError) as info:
        store_for("s3://AKIAXXXX:topsecret@bucket/key")
    assert "topsecret" not in str(info.value) and "AKIAXXXX" not in str(info.value)


def test_stores_pickle_as_their_address(tmp_path: Path) -> None:
    import pickle

    s3 = store_for("s3://c@bucket/p")
    copy = pickle.loads(pickle.dumps(s3))
    assert (copy.url, copy.conn_id) == (s3.url, s3.conn_id) and copy._fs is None
    local = store_for(str(tmp_path))
    assert pickle.loads(pickle.dumps(local)).url == local.url


def test_gcs_options_come_from_the_airflow_connection(monkeypatch) -> None:
    from airflow_resnet_prep.storage.gcs import gcs_options

    keyfile = {"type": "service_account", "project_id": "p", "private_key": "secret"}
    monkeypatch.setenv(
        "AIRFLOW_CONN_GCS_TEST",
        json.dumps(
            {
                "conn_type": "google_cloud_platform",
                "extra": {"keyfile_dict": json.dumps(keyfile), "project": "proj"},
            }
        ),
    )
    assert gcs_options("gcs_test") == {"token": keyfile, "project": "proj"}
    assert gcs_options(None) == {}


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_an_undefined_connection_is_an_error_not_a_fallback(scheme: str) -> None:
    """The Amazon provider would quietly use default credentials and AWS's endpoint instead."""
    with pytest.raises(StorageError, match="the Airflow connection 'no_such_conn' is not defined"):
        store_for(f"{scheme}://no_such_conn@bucket/prefix").exists("x")
