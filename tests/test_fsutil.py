"""Large local outputs (``fsutil``): whole or absent, and written back while they grow without each
writeback call covering the whole file."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from airflow_resnet_prep import fsutil
from airflow_resnet_prep.fsutil import durable_writer, written_back


def _pieces(seed: int, count: int = 200) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.choice([1, 100, 4095, 70_001, 300_000])) for _ in range(count)]


def test_durable_writer_leaves_a_whole_file_or_none(tmp_path: Path) -> None:
    pieces = _pieces(5)
    with durable_writer(tmp_path / "out.tfrecord") as fh:
        fh.writelines(pieces)
    assert (tmp_path / "out.tfrecord").read_bytes() == b"".join(pieces)
    with pytest.raises(RuntimeError), durable_writer(tmp_path / "broken.tfrecord") as fh:
        fh.write(pieces[0])
        raise RuntimeError("killed mid-file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tfrecord"]


def test_writeback_starts_cover_the_new_bytes_and_a_window_not_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []  # (offset, length) of each POSIX_FADV_DONTNEED
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        if advice == os.POSIX_FADV_DONTNEED:
            calls.append((offset, length))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", record)
    window, every = 4 << 20, 1 << 20
    monkeypatch.setattr(fsutil, "WRITEBACK_WINDOW", window)
    pieces = _pieces(6, 300)  # about 23 MB: several windows
    with written_back(tmp_path / "piece", buffering=1 << 16, writeback_bytes=every) as fh:
        fh.writelines(pieces)
    data = b"".join(pieces)
    assert (tmp_path / "piece").read_bytes() == data
    assert len(data) > 4 * window and len(calls) > 4 * window // every
    started = 0
    for offset, length in calls:
        assert length > 0 and offset == max(0, started - window)  # the window before the new bytes
        assert offset + length - started < every + 300_000  # the new bytes: one step, one piece over
        started = offset + length
    assert started > len(data) - every - 300_000  # every step's bytes were handed to the kernel
