"""The ``nvidia`` converter's local fast path: each split's ``.rec`` written in place, no parts, no join.

When one machine runs the whole conversion (``step="all"``, the CLI, the benchmark) there is no need
for per-unit part files: ``workers`` processes take chunks of the shuffled list in order, frame them
in memory, and write each chunk straight into the split's temporary ``.rec`` at its offset. A chunk's
offset is the sum of the sizes of the chunks before it, which is known as soon as those chunks are
framed (framing, not writing, decides a record's size), so processes wait only for earlier chunks'
*sizes*, never for their writes. Memory stays at about two chunks per process.

The end state is the one units + finish would leave: the final ``.rec`` and a done record per unit
(with the unit's part-relative offsets), so the shared ``finish`` writes ``.idx`` and ``.lst`` and
the manifest sees the same summary. A crash leaves only temporary names; the rerun starts the split
again. The path is taken only when no unit of the plan is done yet (a conversion started as units,
e.g. by the DAG's mapped tasks, is resumed as units).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from airflow_resnet_prep.catalog.model import ImageReader
from airflow_resnet_prep.converters.base import Plan, Unit, UnitResult, WorkItem
from airflow_resnet_prep.converters.pool import fork_context, portable_error, resolve_workers, start_worker
from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.failpoints import failpoint
from airflow_resnet_prep.formats.crc32c import combine_all, crc32c_of
from airflow_resnet_prep.fsutil import (
    disk_full_as_error,
    fsync_dir,
    tmp_name,
)
from airflow_resnet_prep.progress import Progress


class ItemFramer(Protocol):
    """What this path needs of the converter: one item's framed record (None when left out)."""

    def frame_item(
        self,
        reader: ImageReader | None,
        sources: list,
        item: WorkItem,
        result: UnitResult,
        data: bytes | None = None,
    ) -> list | None: ...


CHUNK_RECORDS = 256  # ~28 MB of ImageNet images: large writes, little memory


@dataclass
class _Chunk:
    unit: int  # position of the unit among the split's units
    items: list[WorkItem]


@dataclass
class _Framed:
    """What a chunk produced, without its bytes (those went to the file)."""

    chunk: int
    size: int = 0
    offsets: list[list[int]] = field(default_factory=list)  # [index, offset within the chunk]
    crc: int = 0  # CRC-32C of the chunk's bytes, computed by the process that framed them
    seconds: float = 0.0  # reading, framing and writing the chunk: its share of the units' time
    result: UnitResult | None = None


def write_direct(converter: ItemFramer, plan: Plan, workers: int) -> bool:
    """Write both splits' ``.rec`` directly; False (nothing done) when some unit is done or being
    written by another process: that conversion goes on unit by unit."""
    data_dir = plan.data_dir
    if data_dir.disk is None:
        return False  # in a bucket, units upload the pieces of one multipart upload instead
    # The data_dir lock keeps another run's finish (which clears in-progress files) and conversion out
    # while the .rec files are written; a second run waits a few seconds, then fails clearly.
    with data_dir.hold(wait_s=5):
        if any(plan.unit_done_path(u.id).exists() for u in plan.units) or _units_busy(plan):
            return False
        processes = resolve_workers(workers, sum(u.items for u in plan.units))
        env = plan.connection_env() if processes > 1 else {}  # for sources in a bucket
        progress = Progress("nvidia conversion (direct)", sum(u.items for u in plan.units))
        for split in ("train", "val"):
            _write_split(converter, plan, split, processes, env, progress)
        failpoint("finish")
        progress.finish()
    return True


def _units_busy(plan: Plan) -> bool:
    """Whether another process holds a unit's lock (e.g. a mapped Airflow task converting it now)."""
    for unit in plan.units:
        lock = plan.data_dir.path(plan.unit_lock_key(unit.id))
        try:
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing releases a lock taken here
    return False


def _write_split(
    converter: ItemFramer,
    plan: Plan,
    split: str,
    processes: int,
    env: Mapping[str, str],
    progress: Progress,
) -> None:
    units = [u for u in plan.units if u.split == split]
    # Small splits get small chunks, so that every process has work.
    size = max(1, min(CHUNK_RECORDS, -(-sum(u.items for u in units) // (4 * processes))))
    chunks: list[_Chunk] = []
    for position, unit in enumerate(units):
        items = plan.load_items(unit.id)
        chunks.extend(_Chunk(position, items[i : i + size]) for i in range(0, len(items), size))
    rec = plan.data_dir.recordio / f"{split}.rec"
    rec.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(rec)
    sources = plan.split_sources(split)
    try:
        with disk_full_as_error(rec):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                if processes <= 1 or len(chunks) <= 1:
                    framed = _run_in_process(converter, sources, chunks, fd, split, progress)
                else:
                    with fork_context() as ctx:
                        framed = _run_in_pool(
                            ctx, converter, sources, chunks, fd, split, processes, env, progress
                        )
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, rec)
        fsync_dir(rec.parent)
    finally:
        tmp.unlink(missing_ok=True)
    _write_done_records(plan, units, chunks, framed)


def _frame_chunk(
    converter: ItemFramer, reader: ImageReader, sources: list, chunk: _Chunk, index: int, split: str
) -> tuple[_Framed, list]:
    result = UnitResult(unit=-1, split=split)
    framed = _Framed(index, result=result)
    buffers: list = []
    before = reader.stats()
    # The chunk's images read ahead: from a bucket coalesced and concurrent, locally one pread each.
    with contextlib.closing(reader.iter_read(chunk.items)) as reads:
        for item, data in reads:
            record = converter.frame_item(reader, sources, item, result, data)
            if record is None:
                continue
            framed.offsets.append([item.index, framed.size])
            framed.size += sum(len(b) for b in record)
            buffers.extend(record)
    # Summed here, in the process that framed the chunk, from the buffers about to be written: the
    # parent joins the chunks' CRCs into the unit's (and finish the units' into the file's).
    framed.crc = crc32c_of(buffers)
    after = reader.stats()
    if after["requests"] > before["requests"]:  # from a bucket: what the chunk cost
        result.extra["source_reads"] = {k: after[k] - before[k] for k in ("requests", "bytes_read")}
    return framed, buffers


def _pwrite_all(fd: int, buffers: list, offset: int) -> None:
    """Write ``buffers`` at ``offset``; os.pwritev may write less than asked (and takes at most IOV_MAX).

    Then ``POSIX_FADV_DONTNEED`` over the whole file: Linux starts writing back the new dirty pages
    without waiting, and drops the pages already written back. The disk works while later chunks are
    framed, the final fsync has little left to wait for, and the output does not fill the page cache
    (on the benchmark machine, letting it do so tripled the kernel time spent per written byte).
    """
    pending = [memoryview(b) for b in buffers if len(b)]
    while pending:
        batch = pending[:512]
        written = os.pwritev(fd, batch, offset)
        offset += written
        while written:
            if written >= len(pending[0]):
                written -= len(pending.pop(0))
            else:
                pending[0] = pending[0][written:]
                written = 0
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _run_in_process(
    converter: ItemFramer, sources: list, chunks: list[_Chunk], fd: int, split: str, progress: Progress
) -> list[_Framed]:
    framed_all, offset, half = [], 0, len(chunks) // 2
    with ImageReader(sources) as reader:
        for index, chunk in enumerate(chunks):
            started = time.monotonic()
            framed, buffers = _frame_chunk(converter, reader, sources, chunk, index, split)
            _pwrite_all(fd, buffers, offset)
            framed.seconds = time.monotonic() - started
            offset += framed.size
            framed_all.append(framed)
            progress.advance(len(chunk.items))
            if index == half:
                failpoint("unit-half")
    return framed_all


def _run_in_pool(
    ctx: Any,
    converter: ItemFramer,
    sources: list,
    chunks: list[_Chunk],
    fd: int,
    split: str,
    processes: int,
    env: Mapping[str, str],
    progress: Progress,
) -> list[_Framed]:
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
        try:
            with ImageReader(sources) as reader:
                while True:
                    with cond:
                        index = next_chunk.value
                        if index >= n:
                            break
                        next_chunk.value = index + 1
                    started = time.monotonic()
                    framed, buffers = _frame_chunk(converter, reader, sources, chunks[index], index, split)
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
                    started = time.monotonic()
                    _pwrite_all(fd, buffers, start)
                    framed.seconds += time.monotonic() - started
                    results.put(("ok", framed))
                    if index == n // 2:
                        failpoint("unit-half")
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
    framed_all: dict[int, _Framed] = {}
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
            framed_all[value.chunk] = value
            progress.advance(len(chunks[value.chunk].items))
            failpoint("direct-parent")
    finally:
        for proc in procs:
            if proc.is_alive() and len(framed_all) < n:
                proc.kill()
        for proc in procs:
            proc.join()
    return [framed_all[i] for i in range(n)]


def _write_done_records(plan: Plan, units: list[Unit], chunks: list[_Chunk], framed: list[_Framed]) -> None:
    """One done record per unit, as ``run_plan_unit`` would have written it (offsets part-relative)."""
    by_unit: dict[int, list[_Framed]] = {}
    for chunk, f in zip(chunks, framed, strict=True):
        by_unit.setdefault(chunk.unit, []).append(f)
    for position, unit in enumerate(units):
        result = UnitResult(unit=unit.id, split=unit.split)
        offset = 0
        offsets: list[list[int]] = []
        crc = combine_all((f.crc, f.size) for f in by_unit.get(position, []))
        for f in by_unit.get(position, []):
            offsets.extend([index, offset + off] for index, off in f.offsets)
            offset += f.size
            assert f.result is not None
            result.records += f.result.records
            result.bytes_in += f.result.bytes_in
            result.skipped.extend(f.result.skipped)
            result.reencoded.extend(f.result.reencoded)
            result.seconds += f.seconds
            reads = f.result.extra.get("source_reads")
            if reads:
                total = result.extra.setdefault("source_reads", {"requests": 0, "bytes_read": 0})
                for k in total:
                    total[k] += reads[k]
        result.add_output(unit.outputs[0], offset, result.records, crc)
        result.extra["offsets"] = offsets
        result.seconds = round(result.seconds, 3)
        result.extra["written"] = "direct"
        plan.save_done(result)
