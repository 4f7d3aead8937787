"""A large output written around the page cache where the file system allows it: runs at their
offsets (the one-machine nvidia path), the pages they share written last."""

from __future__ import annotations

import errno
import itertools
import os
import random
from pathlib import Path

import pytest

from airflow_resnet_prep.storage.directio import DirectFile


def _runs(seed: int) -> list[list[bytes]]:
    """Runs of a few buffers each: some smaller than a page, some spanning many, odd sizes throughout."""
    rng = random.Random(seed)
    runs = []
    for _ in range(60):
        size = rng.choice([1, 3, 100, 4095, 4096, 4097, 9000, 70_001, 300_000])
        data = rng.randbytes(size)
        cuts = sorted(rng.sample(range(1, size), min(3, size - 1))) if size > 1 else []
        bounds = [0, *cuts, size]
        runs.append([data[a:b] for a, b in itertools.pairwise(bounds)])
    return runs


def _write(path: Path, runs: list[list[bytes]], seed: int) -> DirectFile:
    offsets, at = [], 0
    for run in runs:
        offsets.append(at)
        at += sum(map(len, run))
    order = list(range(len(runs)))
    random.Random(seed).shuffle(order)  # processes finish runs in any order
    out = DirectFile(path)
    try:
        edges = []
        for i in order:
            size = sum(map(len, runs[i]))
            staged = out.stage(runs[i], offsets[i], size)
            if staged is None:  # no whole page in it, or no direct writes here: the caller writes it
                os.pwritev(out.fd, runs[i], offsets[i])
            else:
                edges += out.write_staged(staged)
        out.write_edges(edges)
        os.fsync(out.fd)
    finally:
        out.close()
    return out


def _direct_io_works(folder: Path) -> bool:
    probe = folder / "probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644))
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)
    return True


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_runs_written_in_any_order_make_the_file(tmp_path: Path, seed: int) -> None:
    runs = _runs(seed)
    out = _write(tmp_path / "split.rec", runs, seed)
    assert (tmp_path / "split.rec").read_bytes() == b"".join(b for run in runs for b in run)
    # On a disk that takes O_DIRECT (the test machine's), the runs' own pages bypass the page cache.
    assert (out.direct_bytes > 0) == _direct_io_works(tmp_path)


def test_a_file_system_without_direct_io_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Such file systems (some FUSE and network ones) refuse the O_DIRECT open with EINVAL.
    real_open = os.open

    def refuse_direct(path, flags, *args):  # type: ignore[no-untyped-def]
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refuse_direct)
    runs = _runs(3)
    out = _write(tmp_path / "split.rec", runs, 3)
    assert out.direct_bytes == 0
    assert (tmp_path / "split.rec").read_bytes() == b"".join(b for run in runs for b in run)


def test_a_file_system_refusing_the_first_direct_write_gets_the_run_buffered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some FUSE file systems open with O_DIRECT, then refuse the write with EINVAL: the staged run
    # (its records already let go) is written buffered from the aligned buffer, and so is the rest.
    real_open, real_pwritev = os.open, os.pwritev
    direct_fds: set[int] = set()
    refused: list[int] = []

    def open_(path, flags, *args):  # type: ignore[no-untyped-def]
        fd = real_open(path, flags, *args)
        if flags & os.O_DIRECT:
            direct_fds.add(fd)
        return fd

    def pwritev(fd, buffers, offset):  # type: ignore[no-untyped-def]
        if fd in direct_fds:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwritev(fd, buffers, offset)

    monkeypatch.setattr(os, "open", open_)
    monkeypatch.setattr(os, "pwritev", pwritev)
    runs = _runs(4)
    out = _write(tmp_path / "split.rec", runs, 4)
    assert out.direct_bytes == 0
    assert len(refused) == int(_direct_io_works(tmp_path))  # refused once, then never tried again
    assert (tmp_path / "split.rec").read_bytes() == b"".join(b for run in runs for b in run)
