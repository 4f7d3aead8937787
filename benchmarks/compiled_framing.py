"""What compiled code would buy the ``nvidia`` one-machine path: its per-image loop in Python and in C.

``python -m benchmarks.compiled_framing`` builds ``compiled_framing.c`` with the system's gcc (x86-64
with SSE 4.2: the CRC-32C instruction), plans an ``nvidia`` conversion of the bench sample (``--images``,
cached under ``--workdir`` as ``bench.py`` does), and frames the training split's shuffled list in runs
of 128 records, in this one process, alternately:

- ``python``: the package's loop (``recordio_frame.frame_run`` over ``ImageReader.iter_read``: one
  ``pread`` per image, ``probe``, the magic scan, framing, CRC-32C), then the copy of the run into a
  page-aligned buffer, which the one-machine path makes before its direct write;
- ``compiled``: the same run framed by one C call, each image read straight into that buffer.

It prints CPU time per image (user and system, ``getrusage``) and checks that both give every run the
same size and CRC-32C, and the last run the same bytes. Writing is left out: both paths write the same buffer. The C loop checks less of
a JPEG than ``probe`` does (see the C file); the figures are for a decision, not a shipped path.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import mmap
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.bench import Sample

HERE = Path(__file__).resolve().parent
RUN_RECORDS = 128
_P = ctypes.c_void_p


def build(folder: Path) -> ctypes.CDLL:
    """The C loop as a shared library, or SystemExit naming what is missing."""
    if shutil.which("gcc") is None:
        raise SystemExit("compiled_framing: needs gcc on the PATH")
    with open("/proc/cpuinfo") as cpuinfo:
        if "sse4_2" not in cpuinfo.read():
            raise SystemExit("compiled_framing: needs an x86-64 processor with SSE 4.2 (CRC-32C instruction)")
    lib = folder / "compiled_framing.so"
    source = HERE / "compiled_framing.c"
    subprocess.run(["gcc", "-O2", "-msse4.2", "-shared", "-fPIC", "-o", str(lib), str(source)], check=True)
    dll = ctypes.CDLL(str(lib))
    dll.frame_run.restype = ctypes.c_int64
    dll.frame_run.argtypes = [ctypes.c_int, ctypes.c_int, _P, _P, _P, _P, _P, _P]
    return dll


def cpu_s() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=30_000, help="sample size (about 30,000)")
    parser.add_argument("--repeat", type=int, default=3, help="alternating passes of each loop (3)")
    parser.add_argument("--workdir", type=Path, default=Path(".bench"), help="cache folder (.bench/)")
    ns = parser.parse_args(argv)

    import numpy as np

    from airflow_resnet_prep.catalog.model import TAR, ImageReader
    from airflow_resnet_prep.converters import base
    from airflow_resnet_prep.converters.recordio_frame import chunked, frame_run
    from airflow_resnet_prep.pipeline import make_converter

    sample = Sample(ns.workdir.resolve(), ns.images, 0)
    scratch = Path(tempfile.mkdtemp(prefix="compiled-framing-"))
    try:
        dll = build(scratch)
        data_dir = sample.job_dir(scratch, "nvidia", with_catalog=True)
        converter = make_converter("nvidia", {})
        plan = base.plan(converter, str(data_dir))
        sources = plan.split_sources("train")
        items = [i for u in plan.units if u.split == "train" for i in plan.load_items(u.id)]
        if len(sources) != 1 or sources[0].kind != TAR:
            raise SystemExit("compiled_framing: expects the sample's one training tar")
        runs = chunked(items, RUN_RECORDS)
        columns = [
            (
                np.array([i.offset for i in run], np.int64),
                np.array([i.size for i in run], np.int64),
                np.array([float(i.label) for i in run], np.float32),
                np.array([i.index for i in run], np.uint64),
            )
            for run in runs
        ]
        buffer = mmap.mmap(-1, 64 << 20)
        address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))

        def python_loop() -> tuple[list[tuple[int, int]], str]:
            out = []
            with ImageReader(sources) as reader:
                for run in runs:
                    with contextlib.closing(reader.iter_read(run)) as reads:
                        framed, buffers = frame_run(converter.params, sources, "train", reads)
                    at = 0
                    for b in buffers:
                        buffer[at : at + len(b)] = b
                        at += len(b)
                    out.append((framed.size, framed.crc))
            return out, hashlib.sha256(buffer[: out[-1][0]]).hexdigest()

        def compiled_loop() -> tuple[list[tuple[int, int]], str]:
            out = []
            crc = ctypes.c_uint32()
            fd = os.open(sources[0].path, os.O_RDONLY)
            try:
                for run, (offsets, sizes, labels, indexes) in zip(runs, columns, strict=True):
                    crc.value = 0
                    args = (offsets, sizes, labels, indexes)
                    size = dll.frame_run(
                        fd, len(run), *(a.ctypes.data for a in args), address, ctypes.byref(crc)
                    )
                    if size < 0:
                        where = sources[0].describe(run[-size - 1].ref)
                        raise SystemExit(f"compiled_framing: the C loop does not handle {where}")
                    out.append((size, crc.value))
            finally:
                os.close(fd)
            return out, hashlib.sha256(buffer[: out[-1][0]]).hexdigest()

        loops: dict[str, Callable[[], tuple[list[tuple[int, int]], str]]] = {
            "python": python_loop,
            "compiled": compiled_loop,
        }
        figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in loops}
        expected = None
        for _ in range(ns.repeat):
            for name, loop in loops.items():
                (u0, s0), t0 = cpu_s(), time.monotonic()
                got = loop()
                (u1, s1), t1 = cpu_s(), time.monotonic()
                expected = expected or got
                if got != expected:
                    raise SystemExit(
                        f"compiled_framing: the {name} loop framed other bytes (run sizes, CRCs or the last run)"
                    )
                n = len(items) / 1e6
                figures[name].append(((u1 - u0) / n, (s1 - s0) / n, (t1 - t0) / n))
        print(
            f"{len(items):,} training images in {len(runs):,} runs of {RUN_RECORDS}; medians of {ns.repeat} passes"
        )
        print(f"{'loop':<10}{'CPU us/image':>14}{'user':>8}{'system':>8}{'wall us/image':>15}")
        for name, rows in figures.items():
            user, system, wall = (statistics.median(r[k] for r in rows) for k in range(3))
            print(f"{name:<10}{user + system:>14.1f}{user:>8.1f}{system:>8.1f}{wall:>15.1f}")
        print("both loops: every run the same size and CRC-32C, the last run the same bytes")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
