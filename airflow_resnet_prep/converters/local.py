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

from airflow_resnet_prep.converters.base import Converter, Plan, as_layout, finish, plan, run_unit
from airflow_resnet_prep.converters.pool import portable_error, process_pool, resolve_workers
from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.layout import DataDir
from airflow_resnet_prep.progress import Progress

_POOL_CONVERTER: Converter | None = None
_POOL_DATA_DIR: str = ""


def _pool_run(unit_id: int) -> tuple[int, int]:
    assert _POOL_CONVERTER is not None
    try:
        result = run_unit(_POOL_CONVERTER, _POOL_DATA_DIR, unit_id)
    except Exception as exc:
        raise portable_error(exc) from None
    return unit_id, result.records + len(result.skipped)


def run_units(
    converter: Converter,
    data_dir: str | os.PathLike[str] | DataDir,
    unit_ids: Sequence[int] | None = None,
    workers: int = 0,
    progress_label: str | None = None,
) -> None:
    """Run the given units (all when None) with ``workers`` processes, logging progress."""
    global _POOL_CONVERTER, _POOL_DATA_DIR
    layout = as_layout(data_dir)
    work_plan = Plan.load(layout, converter.implementation)
    ids = [u["id"] for u in work_plan.units] if unit_ids is None else list(unit_ids)
    sizes = {u["id"]: u["items"] for u in work_plan.units}
    progress = Progress(
        progress_label or f"{converter.implementation} conversion", sum(sizes[i] for i in ids)
    )
    n = min(resolve_workers(workers), len(ids)) if ids else 1
    if n <= 1:
        for unit_id in ids:
            result = run_unit(converter, layout, unit_id)
            progress.advance(result.records + len(result.skipped))
    else:
        converter.prepare_process()
        _POOL_CONVERTER, _POOL_DATA_DIR = converter, layout.address
        try:
            with process_pool(n) as pool:
                futures = [pool.submit(_pool_run, unit_id) for unit_id in ids]
                try:
                    for future in as_completed(futures):
                        progress.advance(future.result()[1])
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)  # units already running finish whole
                    raise
        except BrokenProcessPool:
            raise PrepError(
                f"{layout.uri(work_plan.work_dir)}: a worker process converting units died abruptly (killed, e.g. by "
                "the out-of-memory killer); finished units are kept, rerun to resume"
            ) from None
        finally:
            _POOL_CONVERTER = None
    progress.finish()


def run_all(converter: Converter, data_dir: str | os.PathLike[str] | DataDir, workers: int = 0) -> None:
    """Run every unit of the plan on this machine: the format's one-machine path when it has one
    (and no unit has started elsewhere), else unit by unit."""
    layout = as_layout(data_dir)
    work_plan = Plan.load(layout, converter.implementation)
    if not converter.run_local(layout, work_plan, workers):
        run_units(converter, layout, workers=workers)


def convert(
    converter: Converter,
    data_dir: str | os.PathLike[str] | DataDir,
    *,
    workers: int = 0,
    force: bool = False,
) -> dict[str, Any]:
    """Plan, run every unit locally with ``workers`` processes, finish. The one-call form."""
    layout = as_layout(data_dir)
    started = time.monotonic()
    plan(converter, layout, force=force)
    t_plan = time.monotonic() - started
    run_all(converter, layout, workers=workers)
    summary = finish(converter, layout)
    elapsed = time.monotonic() - started
    images = sum(s["records"] for s in summary["splits"].values())
    summary["timing"] = {
        "plan_s": round(t_plan, 3),
        "total_s": round(elapsed, 3),
        "images_per_s": round(images / elapsed, 1) if elapsed > 0 else None,
    }
    return summary
