"""Running a conversion's units on this machine: a process pool over units, and the one-call form.

The skeleton itself (plan, unit, finish) is in :mod:`.base`; these functions decide how many local
processes run which units, and let a format use a faster one-machine path when it has one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from airflow_resnet_prep.converters import base
from airflow_resnet_prep.converters.base import Converter, Plan, run_plan_unit
from airflow_resnet_prep.converters.pool import portable_error, process_pool, resolve_workers
from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.layout import DataDir
from airflow_resnet_prep.progress import Progress

# What a pool worker converts, handed over when it starts (forked: nothing is pickled).
_worker_job: tuple[Converter, Plan] | None = None


def _take_job(converter: Converter, plan: Plan) -> None:
    global _worker_job
    _worker_job = (converter, plan)


def _run_in_worker(unit_id: int) -> int:
    """Run one unit in a pool worker; how many images it took."""
    assert _worker_job is not None
    converter, plan = _worker_job
    try:
        result = run_plan_unit(converter, plan, unit_id)
    except Exception as exc:
        raise portable_error(exc) from None
    return result.records + len(result.skipped)


def run_units(
    converter: Converter, plan: Plan, unit_ids: Sequence[int] | None = None, workers: int = 0
) -> None:
    """Run the given units of ``plan`` (all when None) with ``workers`` processes, logging progress."""
    ids = [u.id for u in plan.units] if unit_ids is None else list(unit_ids)
    progress = Progress(f"{converter.implementation} conversion", sum(plan.units[i].items for i in ids))
    n = min(resolve_workers(workers), len(ids)) if ids else 1
    if n <= 1:
        for unit_id in ids:
            result = run_plan_unit(converter, plan, unit_id)
            progress.advance(result.records + len(result.skipped))
        progress.finish()
        return
    converter.prepare_process()
    try:
        with process_pool(
            n, env=plan.connection_env(), initializer=_take_job, initargs=(converter, plan)
        ) as pool:
            futures = [pool.submit(_run_in_worker, unit_id) for unit_id in ids]
            try:
                for future in as_completed(futures):
                    progress.advance(future.result())
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # units already running finish whole
                raise
    except BrokenProcessPool:
        raise PrepError(
            f"{plan.data_dir.uri(plan.work_dir)}: a worker process converting units died abruptly (killed, e.g. "
            "by the out-of-memory killer); finished units are kept, rerun to resume"
        ) from None
    progress.finish()


def run_all(converter: Converter, plan: Plan, workers: int = 0) -> None:
    """Run every unit of ``plan`` on this machine: the format's one-machine path when it has one
    (and no unit has started elsewhere), else unit by unit."""
    if not converter.run_local(plan, workers):
        run_units(converter, plan, workers=workers)


def convert(
    converter: Converter,
    data_dir: DataDir | str | os.PathLike[str],
    *,
    workers: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Plan, run every unit locally with ``workers`` processes, finish. The one-call form; ``data_dir``
    may be a path or URI for callers that have not parsed it (the tests, the benchmark)."""
    started = time.monotonic()
    plan = base.plan(converter, data_dir, force=force)
    t_plan = time.monotonic() - started
    run_all(converter, plan, workers=workers)
    summary = base.finish(converter, plan)
    elapsed = time.monotonic() - started
    images = sum(s["records"] for s in summary["splits"].values())
    summary["timing"] = {
        "plan_s": round(t_plan, 3),
        "total_s": round(elapsed, 3),
        "images_per_s": round(images / elapsed, 1) if elapsed > 0 else None,
    }
    return summary
