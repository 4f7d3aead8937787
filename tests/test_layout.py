"""``DataDir`` (``layout.py``): what it refuses, the address other processes name it by, its records and
its lock."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from airflow_resnet_prep.errors import OutputConflictError, PrepError
from airflow_resnet_prep.layout import DataDir


@pytest.mark.parametrize("data_dir", ["", "   ", "\n"])
def test_an_empty_data_dir_is_refused_naming_the_param(data_dir: str) -> None:
    with pytest.raises(PrepError, match=r"data_dir is empty: set the data_dir param"):
        DataDir.of(data_dir)


@pytest.mark.parametrize("data_dir", ["relative/data", "data", "./data"])
def test_a_relative_path_is_refused(data_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PrepError, match=r"is a relative path: give an absolute path") as info:
        DataDir.of(data_dir)
    assert repr(data_dir) in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing made in the current folder


@pytest.mark.parametrize("data_dir", ["ftp://host/prefix", "http://host/data"])
def test_an_unsupported_uri_is_refused_saying_what_is_accepted(data_dir: str) -> None:
    with pytest.raises(PrepError, match=r"unsupported URI; give an absolute local path") as info:
        DataDir.of(data_dir)
    assert "s3:// or gs://" in str(info.value) and data_dir in str(info.value)


def test_a_file_url_is_its_path(tmp_path: Path) -> None:
    """As everywhere a location is given (sources, store_for): ``file://`` names the local path."""
    (tmp_path / "my data").mkdir()
    layout = DataDir.of(f"file://{tmp_path}/my%20data")
    assert layout.address == str(tmp_path / "my data") and layout.disk == tmp_path / "my data"


def test_a_local_address_is_absolute_and_resolved(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for given in (f"{tmp_path}/link", f"{tmp_path}/other/../real/", f"  {tmp_path}/real  "):
        layout = DataDir.of(given)
        assert layout.address == str((tmp_path / "real").resolve()), given
        assert layout.disk == tmp_path / "real"
    assert DataDir.of(Path(tmp_path)).address == str(tmp_path.resolve())


def test_an_object_uri_address_carries_the_connection_and_the_url_does_not() -> None:
    layout = DataDir.of("s3://bucket/prefix/", conn_id="my_conn")
    assert layout.address == "s3://my_conn@bucket/prefix"
    assert layout.url == "s3://bucket/prefix"
    # a connection in the URI wins over the default
    assert DataDir.of("s3://theirs@bucket/p", conn_id="mine").address == "s3://theirs@bucket/p"
    assert DataDir.of("s3://bucket/p").address == "s3://bucket/p"
    assert layout.disk is None
    with pytest.raises(PrepError, match="needs a local data_dir"):
        layout.path("catalog/train.tsv")


def test_read_json_of_a_damaged_or_missing_record_is_none(tmp_path: Path, caplog) -> None:
    layout = DataDir.of(tmp_path)
    layout.write_json("work/plan.json", {"units": [1, 2]})
    assert layout.read_json("work/plan.json") == {"units": [1, 2]}
    assert layout.read_json("work/absent.json") is None

    (tmp_path / "work" / "plan.json").write_bytes(b'{"units": [1, 2')  # cut short by a crash
    with caplog.at_level(logging.WARNING, logger="airflow_resnet_prep.layout"):
        assert layout.read_json("work/plan.json") is None
    assert any("plan.json" in r.getMessage() and "unreadable" in r.getMessage() for r in caplog.records)


def test_hold_refuses_a_second_holder_after_wait_s(tmp_path: Path) -> None:
    layout = DataDir.of(tmp_path)
    with layout.hold():
        started = time.monotonic()
        with pytest.raises(OutputConflictError, match="another run is writing this data_dir") as info:
            with DataDir.of(tmp_path).hold(wait_s=0.6):
                pytest.fail("a second holder got the lock")
        assert time.monotonic() - started >= 0.6  # it waited wait_s before giving up
        assert f"pid {os.getpid()}" in str(info.value)  # and named the holder
    # released at the end of the block: the next holder gets it at once
    with DataDir.of(tmp_path).hold():
        pass
