"""Checksums: parsing, streamed hashing, mismatch messages and the verified-digest cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import pytest

from airflow_resnet_prep.errors import SourceError
from airflow_resnet_prep.sources import checksum
from airflow_resnet_prep.sources.checksum import file_digest, parse_checksum, verify_file

DATA = bytes(range(256)) * 4099  # a bit over 1 MB, not a multiple of any buffer size
MD5 = hashlib.md5(DATA).hexdigest()
SHA256 = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def blob(tmp_path: Path) -> Path:
    p = tmp_path / "blob.tar"
    p.write_bytes(DATA)
    return p


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        (f"md5:{MD5}", ("md5", MD5)),
        (f"MD5:{MD5.upper()}", ("md5", MD5)),
        (f"  sha256:{SHA256}\n", ("sha256", SHA256)),
        ("md5:1d675b47d978889d74fa0da5fadfb00e", ("md5", "1d675b47d978889d74fa0da5fadfb00e")),
    ],
)
def test_parse_checksum_accepts(spec: str | None, expected: tuple[str, str] | None) -> None:
    assert parse_checksum(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        MD5,  # no algorithm
        f"sha1:{hashlib.sha1(DATA).hexdigest()}",  # unsupported algorithm
        f"md5:{MD5[:-1]}",  # too short
        f"sha256:{MD5}",  # md5-length digest under sha256
        f"md5:{MD5[:-1]}g",  # not hex
        f"md5 {MD5}",
        "md5:",
    ],
)
def test_parse_checksum_rejects_naming_value_and_forms(spec: str) -> None:
    with pytest.raises(SourceError) as err:
        parse_checksum(spec)
    msg = str(err.value)
    assert repr(spec) in msg
    assert "md5:<32 hex digits>" in msg and "sha256:<64 hex digits>" in msg


@pytest.mark.parametrize("algo", ["md5", "sha256"])
def test_file_digest_matches_hashlib(blob: Path, algo: str) -> None:
    assert file_digest(blob, algo) == hashlib.new(algo, DATA).hexdigest()


def test_file_digest_of_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty"
    p.write_bytes(b"")
    assert file_digest(p, "md5") == hashlib.md5(b"").hexdigest()


def test_file_digest_logs_progress_for_big_files(
    blob: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(checksum, "PROGRESS_MIN_BYTES", 1)  # "big" = anything, to keep the test small
    caplog.set_level(logging.INFO)
    file_digest(blob, "sha256")
    lines = [r.getMessage() for r in caplog.records if "sha256 of blob.tar" in r.getMessage()]
    assert lines and "MB" in lines[-1] and "MB/s" in lines[-1] and "(done)" in lines[-1]


def test_verify_file_returns_verified_spec(blob: Path) -> None:
    assert verify_file(blob, f"md5:{MD5.upper()}") == f"md5:{MD5}"
    assert verify_file(blob, f"sha256:{SHA256}") == f"sha256:{SHA256}"
    assert verify_file(blob, None) is None
    assert verify_file(blob, "") is None


def test_verify_file_mismatch_names_file_expected_and_actual(blob: Path) -> None:
    wrong = "0" * 32
    with pytest.raises(SourceError) as err:
        verify_file(blob, f"md5:{wrong}")
    assert str(err.value) == f"{blob}: md5 mismatch: expected {wrong}, got {MD5}"


def test_verify_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nope\.tar"):
        verify_file(tmp_path / "nope.tar", f"md5:{MD5}")


def test_cache_skips_rehash_of_unchanged_file_and_notices_changes(blob: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert verify_file(blob, f"md5:{MD5}", cache_dir=cache) == f"md5:{MD5}"
    entry = json.loads((cache / "verified.json").read_text())[str(blob.absolute())]
    st = blob.stat()
    assert entry == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "digests": {"md5": MD5}}

    # Same size and mtime but different bytes: the cache answers, which proves no rehash took place.
    blob.write_bytes(b"X" + DATA[1:])
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert verify_file(blob, f"md5:{MD5}", cache_dir=cache) == f"md5:{MD5}"
    with pytest.raises(SourceError, match="md5 mismatch"):
        verify_file(blob, f"md5:{MD5}")  # without the cache the new bytes are hashed

    # A new mtime invalidates the entry: the file is hashed again and the change is caught.
    os.utime(blob, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(SourceError, match=f"expected {MD5}, got {hashlib.md5(b'X' + DATA[1:]).hexdigest()}"):
        verify_file(blob, f"md5:{MD5}", cache_dir=cache)


def test_cache_holds_both_algorithms_and_forgets_deleted_files(blob: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    other = tmp_path / "other.bin"
    other.write_bytes(b"other")
    verify_file(other, f"md5:{hashlib.md5(b'other').hexdigest()}", cache_dir=cache)
    verify_file(blob, f"md5:{MD5}", cache_dir=cache)
    verify_file(blob, f"sha256:{SHA256}", cache_dir=cache)
    data = json.loads((cache / "verified.json").read_text())
    assert data[str(blob.absolute())]["digests"] == {"md5": MD5, "sha256": SHA256}
    other.unlink()
    verify_file(blob, f"md5:{MD5}", cache_dir=tmp_path / "cache")  # cache hit: nothing rewritten
    blob.write_bytes(DATA + b"!")
    with pytest.raises(SourceError):
        verify_file(blob, f"md5:{MD5}", cache_dir=cache)  # rehash, rewrite, prune
    assert list(json.loads((cache / "verified.json").read_text())) == [str(blob.absolute())]


def test_corrupt_cache_costs_only_a_rehash(blob: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "verified.json").write_text("{not json")
    assert verify_file(blob, f"sha256:{SHA256}", cache_dir=cache) == f"sha256:{SHA256}"
    assert (
        json.loads((cache / "verified.json").read_text())[str(blob.absolute())]["digests"]["sha256"] == SHA256
    )


def test_byte_progress_line_counts_a_resumed_offset_but_not_in_the_rate() -> None:
    p = checksum.ByteProgress("download train.tar", total=100_000_000, offset=50_000_000)
    p.advance(10_000_000)
    line = p.line(now=p.start + 2.0)
    assert line.startswith("download train.tar: 60.0/100.0 MB (60.0%), 5.0 MB/s")
    assert line.endswith("ETA 0:08")  # 40 MB left at 5 MB/s
