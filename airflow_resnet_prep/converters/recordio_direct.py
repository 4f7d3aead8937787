"""The ``nvidia`` converter's local fast path: each split's ``.rec`` written in place, no parts, no join.

When one machine runs the whole conversion (``step="all"``, the CLI, the benchmark) there is no need
for per-unit part files: ``workers`` processes take runs of the shuffled list in order, frame them in
memory (:func:`.recordio_frame.frame_run`, the units' own framing loop), and write each run straight
into the split's temporary ``.rec`` at its offset. A run's offset is the sum of the sizes of the runs
before it, which is known as soon as those runs are framed (framing, not writing, decides a record's
size), so processes wait only for earlier runs' *sizes*, never for their writes. Memory stays at about
two runs per process.

It keeps the unit contract: it holds every unit's lease (the store's, as :func:`.base.run_plan_unit`
takes one) while it writes, so a mapped task that meets a unit waits for it, and it ends with the
done record of every unit, built by :func:`.recordio_frame.unit_result` from the unit's runs as a unit
builds its own, so the shared ``finish`` writes ``.idx`` and ``.lst``. A crash leaves only temporary
names; the rerun starts the split again. The path is taken only when no unit of the plan is done or
held elsewhere (a conversion started as units, e.g. by the DAG's mapped tasks, is resumed as units).
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from airflow_resnet_prep.catalog.model import ImageReader, Source
from airflow_resnet_prep.converters.base import Plan, Unit, WorkItem
from airflow_resnet_prep.converters.pool import fork_context, portable_error, resolve_workers, start_worker
from airflow_resnet_prep.converters.recordio_frame import (
    CHUNK_RECORDS,
    REMOTE_CHUNK_RECORDS,
    Framed,
    chunked,
    frame_run,
    unit_result,
)
from airflow_resnet_prep.errors import OutputConflictError, PrepError
from airflow_resnet_prep.failpoints import failpoint
from airflow_resnet_prep.fsutil import WRITEBACK_WINDOW, disk_full_as_error, fsync_dir, tmp_name
from airflow_resnet_prep.progress import Progress
from airflow_resnet_prep.storage.directio import DirectFile, Edge, pwrite_all


@dataclass
class _Chunk:
    unit: int  # position of the unit among the split's units
    items: Sequence[WorkItem]


def write_in_place(plan: Plan, workers: int) -> bool:
    """Write both splits' ``.rec`` in place and every unit's done record; False (nothing done) when
    the data_dir is not on this machine's disk, or some unit is done or held by another process: that
    conversion goes on unit by unit."""
    data_dir = plan.data_dir
    if data_dir.disk is None:
        return False  # in a bucket, units upload the pieces of one multipart upload instead
    # The data_dir lock keeps another run's finish (which clears in-progress files) and conversion out
    # while the .rec files are written; a second run waits a few seconds, then fails clearly.
    with data_dir.hold(wait_s=5), _hold_units(plan) as held:
        if not held or any(plan.done(u.id) is not None for u in plan.units):
            return False
        processes = resolve_workers(workers, sum(u.items for u in plan.units))
        env = plan.connection_env() if processes > 1 else {}  # for sources in a bucket
        progress = Progress("nvidia conversion (direct)", sum(u.items for u in plan.units))
        for split in ("train", "val"):
            _write_split(plan, split, processes, env, progress)
        failpoint("finish")
        progress.finish()
    return True


@contextlib.contextmanager
def _hold_units(plan: Plan) -> Iterator[bool]:
    """Hold every unit's lease for the block (True), or none when another process holds one (False):
    e.g. a mapped Airflow task converting that unit now."""
    with contextlib.ExitStack() as held:
        try:
            for unit in plan.units:
                held.enter_context(plan.data_dir.hold(plan.unit_lock_key(unit.id), transient=True))
        except OutputConflictError:
            held.close()
            yield False
            return
        yield True


def _write_split(plan: Plan, split: str, processes: int, env: Mapping[str, str], progress: Progress) -> None:
    units = [u for u in plan.units if u.split == split]
    sources = plan.split_sources(split)
    with ImageReader(sources) as reader:
        remote = any(reader.store(src).requests_are_costly for src in range(len(sources)))
    # Small splits get small runs, so that every process has work.
    most = REMOTE_CHUNK_RECORDS if remote else CHUNK_RECORDS
    size = max(1, min(most, -(-sum(u.items for u in units) // (4 * processes))))
    chunks = [
        _Chunk(position, run)
        for position, unit in enumerate(units)
        for run in chunked(plan.load_items(unit.id), size)
    ]
    frame = _Framer(plan.params, sources, split)
    rec = plan.data_dir.recordio / f"{split}.rec"
    rec.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(rec)
    try:
        with disk_full_as_error(rec):
            out = DirectFile(tmp)
            try:
                if processes <= 1 or len(chunks) <= 1:
                    framed, edges = _run_in_process(frame, chunks, out, progress)
                else:
                    with fork_context() as ctx:
                        framed, edges = _run_in_pool(ctx, frame, chunks, out, split, processes, env, progress)
                out.write_edges(edges)
                os.fsync(out.fd)
            finally:
                out.close()
        os.replace(tmp, rec)
        fsync_dir(rec.parent)
    finally:
        tmp.unlink(missing_ok=True)
    _save_done(plan, units, chunks, framed)


@dataclass
class _Framer:
    """A split's runs framed by :func:`.recordio_frame.frame_run` (in whichever process calls it)."""

    params: dict[str, Any]
    sources: list[Source]
    split: str

    def __call__(self, reader: ImageReader, chunk: _Chunk) -> tuple[Framed, list[Any]]:
        before = reader.stats()
        # The run's images read ahead: from a bucket coalesced and concurrent, locally one pread each.
        with contextlib.closing(reader.iter_read(chunk.items)) as reads:
            framed, buffers = frame_run(self.params, self.sources, self.split, reads)
        after = reader.stats()
        if after["requests"] > before["requests"]:  # from a bucket: what the run cost
            framed.result.extra["source_reads"] = {
                k: after[k] - before[k] for k in ("requests", "bytes_read")
            }
        return framed, buffers


def _pwrite_all(fd: int, buffers: list, offset: int) -> None:
    """Write ``buffers`` at ``offset`` through the page cache (a file system refusing direct writes).

    Then ``POSIX_FADV_DONTNEED`` from :data:`WRITEBACK_WINDOW` before the run to its end: Linux starts
    writing back the run's dirty pages without waiting, and drops the pages of the runs before it, which
    are written back by now. The disk works while later runs are framed, the final fsync has little
    left to wait for, and the output does not fill the page cache (on the benchmark machine, letting it
    do so tripled the kernel time spent per written byte). A window, not the whole file: the call's
    cost grows with the range it covers.
    """
    start = offset
    pwrite_all(fd, [memoryview(b) for b in buffers if len(b)], offset)
    offset = start + sum(len(b) for b in buffers)
    low = max(0, start - WRITEBACK_WINDOW)
    os.posix_fadvise(fd, low, offset - low, os.POSIX_FADV_DONTNEED)


class _WriteBehind:
    """Writes each run in a thread of its own while the process frames the next one: a direct write
    waits for the disk, and the wait then overlaps the framing. One run is in flight at a time, copied
    into the aligned buffer before it leaves (:meth:`.DirectFile.stage`), so a process holds about two
    runs' bytes. :meth:`write` returns the run written before (``tag``, edges)."""

    def __init__(self, out: DirectFile) -> None:
        self._out = out
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="rec-writer")
        self._pending: tuple[Any, Future[list[Edge] | None]] | None = None

    def write(self, buffers: list, offset: int, size: int, tag: Any) -> tuple[Any, list[Edge]] | None:
        """Start writing a run; the caller lets go of ``buffers`` (once staged, they are not needed)."""
        done = self.wait()
        staged = self._out.stage(buffers, offset, size)
        if staged is None:  # written through the page cache (see _pwrite_all)
            future = self._thread.submit(_pwrite_all, self._out.fd, buffers, offset)
        else:
            future = self._thread.submit(self._out.write_staged, staged)
        self._pending = (tag, future)
        return done

    def wait(self) -> tuple[Any, list[Edge]] | None:
        """The run in flight, once written (its error raised here); None when there is none."""
        if self._pending is None:
            return None
        tag, future = self._pending
        self._pending = None
        return tag, future.result() or []

    def __enter__(self) -> _WriteBehind:
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.shutdown(wait=True)  # an error leaves at most one write to finish


def _run_in_process(
    frame: _Framer, chunks: list[_Chunk], out: DirectFile, progress: Progress
) -> tuple[list[Framed], list[Edge]]:
    framed_all: list[Framed] = []
    edges: list[Edge] = []
    offset, half = 0, len(chunks) // 2

    def written(done: tuple[Any, list[Edge]] | None) -> None:
        if done is not None:
            (framed, count), run_edges = done
            framed_all.append(framed)
            edges.extend(run_edges)
            progress.advance(count)

    with ImageReader(frame.sources) as reader, _WriteBehind(out) as behind:
        for index, chunk in enumerate(chunks):
            started = time.monotonic()
            framed, buffers = frame(reader, chunk)
            framed.seconds = time.monotonic() - started
            written(behind.write(buffers, offset, framed.size, (framed, len(chunk.items))))
            del buffers  # staged: the next run is framed without this one's records
            offset += framed.size
            if index == half:
                failpoint("unit-half")
        written(behind.wait())
    return framed_all, edges


def _run_in_pool(
    ctx: Any,
    frame: _Framer,
    chunks: list[_Chunk],
    out: DirectFile,
    split: str,
    processes: int,
    env: Mapping[str, str],
    progress: Progress,
) -> tuple[list[Framed], list[Edge]]:
    n = len(chunks)
    cond = ctx.Condition()
    next_chunk = ctx.RawValue("q", 0)
    sizes = ctx.RawArray("q", n)  # a chunk's size; -1 until framed
    starts = ctx.RawArray("q", n + 1)  # starts[i] is valid once frontier >= i
    frontier = ctx.RawValue("q", 0)  # chunks [0, frontier) have known sizes
    for i in range(n):
        sizes[i] = -1
    results: Any = ctx.Queue()

    parent = os.getpid()

    def worker() -> None:
        start_worker(parent, env)

        def report(done: tuple[Any, list[Edge]] | None) -> None:
            if done is not None:
                (index, framed), edges = done
                results.put(("ok", (index, framed, edges)))

        try:
            with ImageReader(frame.sources) as reader, _WriteBehind(out) as behind:
                while True:
                    with cond:
                        index = next_chunk.value
                        if index >= n:
                            break
                        next_chunk.value = index + 1
                    started = time.monotonic()
                    framed, buffers = frame(reader, chunks[index])
                    framed.seconds = time.monotonic() - started  # waiting for earlier sizes is not work
                    with cond:
                        sizes[index] = framed.size
                        while frontier.value < n and sizes[frontier.value] >= 0:
                            f = frontier.value
                            starts[f + 1] = starts[f] + sizes[f]
                            frontier.value = f + 1
                        cond.notify_all()
                        cond.wait_for(lambda i=index: frontier.value >= i)
                        start = starts[index]
                    report(behind.write(buffers, start, framed.size, (index, framed)))
                    del buffers  # staged: the next run is framed without this one's records
                    if index == n // 2:
                        failpoint("unit-half")
                report(behind.wait())
        except BaseException as exc:  # reported to the parent, which stops the others
            results.put(("error", portable_error(exc)))
            results.close()
            results.join_thread()
            os._exit(1)
        results.close()
        results.join_thread()
        os._exit(0)

    procs = [ctx.Process(target=worker, daemon=True) for _ in range(processes)]
    for proc in procs:
        proc.start()
    framed_all: dict[int, Framed] = {}
    edges: list[Edge] = []
    try:
        while len(framed_all) < n:
            try:
                kind, value = results.get(timeout=0.5)
            except queue.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    time.sleep(0.2)  # let an error report that is on its way arrive first
                    if results.empty():
                        raise PrepError(
                            f"a process writing {split}.rec died abruptly (exit code {dead[0].exitcode}); "
                            "nothing was finished, rerun to start the split again"
                        ) from None
                continue
            if kind == "error":
                raise value
            index, framed, run_edges = value
            framed_all[index] = framed
            edges += run_edges
            progress.advance(len(chunks[index].items))
            failpoint("direct-parent")
    finally:
        for proc in procs:
            if proc.is_alive() and len(framed_all) < n:
                proc.kill()
        for proc in procs:
            proc.join()
    return [framed_all[i] for i in range(n)], edges


def _save_done(plan: Plan, units: list[Unit], chunks: list[_Chunk], framed: list[Framed]) -> None:
    """Every unit's done record, from its runs (offsets relative to the unit, as a unit's own)."""
    runs: dict[int, list[Framed]] = {}
    for chunk, f in zip(chunks, framed, strict=True):
        runs.setdefault(chunk.unit, []).append(f)
    for position, unit in enumerate(units):
        result = unit_result(unit, runs.get(position, []))
        result.extra["written"] = "direct"
        plan.save_done(result)
