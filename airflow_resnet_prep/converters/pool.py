"""Worker processes of a conversion task, started the same way wherever the task runs.

A task may run in a daemonic process: a Celery worker's task process is one, and Python's
``multiprocessing`` refuses to start children from a daemonic process ("daemonic processes are not
allowed to have children"). The rule exists so that a daemon killed with its parent leaves no orphans.
Our workers ask Linux to kill them when their parent dies (``PR_SET_PDEATHSIG``), which gives the same
guarantee, so :func:`children_allowed` lifts the rule while they are started. Every process pool of the
package comes from here: :func:`process_pool` for independent units, :func:`fork_context` for workers
that share memory with their parent. Either way a worker begins with :func:`start_worker`, which is
where it receives the connections the parent resolved for it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.context import BaseContext
from typing import Any

from airflow_resnet_prep import config
from airflow_resnet_prep.errors import PrepError

PR_SET_PDEATHSIG = 1


def max_workers() -> int:
    """``[resnet_prep] max_workers``: the most processes one task may start (default: the CPU count)."""
    if "airflow.configuration" in sys.modules or "airflow.sdk.configuration" in sys.modules:
        text = config.get("max_workers")  # a task: Airflow's config is loaded already
    else:  # the CLI and library callers never import Airflow: the variables alone
        text = (
            os.environ.get(f"AIRFLOW__{config.SECTION.upper()}__MAX_WORKERS")
            or os.environ.get(f"{config.LEGACY_ENV_PREFIX}MAX_WORKERS")
            or ""
        ).strip()
    if not text:
        return len(os.sched_getaffinity(0))
    if not text.isdigit() or int(text) < 1:
        raise PrepError(f"[{config.SECTION}] max_workers must be a whole number of at least 1")
    return int(text)


def resolve_workers(workers: int, work: int | None = None) -> int:
    """``workers`` as the number of processes: 0 means one per available core; never more than
    ``[resnet_prep] max_workers`` (a param is whoever triggers' choice) nor than ``work`` units."""
    if workers < 0:
        raise ValueError(f"workers must be 0 (all cores) or more, got {workers}")
    n = min(workers or len(os.sched_getaffinity(0)), max_workers())
    return max(1, min(n, work)) if work is not None else n


def portable_error(exc: BaseException) -> BaseException:
    """``exc`` if it survives the trip back to the parent process, else a PrepError with its message."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return PrepError(f"{type(exc).__name__}: {exc}")
    return exc


def die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this worker when ``parent`` dies (e.g. the OOM killer takes it): an orphan
    would wait for results nobody reads, holding the data_dir lock it inherited."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def start_worker(parent: int, env: Mapping[str, str]) -> None:
    """What a worker does first: die with ``parent``, then take the environment its parent resolved for it
    (the Airflow connections, ``Plan.connection_env``), which a forked worker must not ask the task's
    supervisor for."""
    die_with_parent(parent)
    os.environ.update(env)
    # What the worker inherited (the plan, the item lists) lives as long as it does: keep the garbage
    # collector from walking it again at every collection (and from touching its copy-on-write pages).
    gc.freeze()
    _keep_freed_memory()


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _keep_freed_memory() -> None:
    """Let the worker's heap keep what it frees. A worker frees a run's images (~14 MB) as it reads
    the next run's: glibc would hand the freed top of the heap back to the kernel, and get it back
    page by page, zeroed, for the next run (on the benchmark machine four times the page faults and
    15 % more CPU for ``nvidia``); images over its mmap threshold would be mapped and unmapped one by
    one. The heap then stays at the worker's peak, which it reaches anyway."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its allocator's own ways
        mallopt = ctypes.CDLL(None).mallopt
        mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest


def _start_pool_worker(
    parent: int, env: Mapping[str, str], initializer: Callable[..., None] | None, initargs: tuple[Any, ...]
) -> None:
    start_worker(parent, env)
    if initializer is not None:
        initializer(*initargs)


@contextlib.contextmanager
def children_allowed() -> Iterator[None]:
    """Let this process start worker processes even when it is itself daemonic (a Celery task)."""
    # multiprocessing keeps the flag in the current process's private config; there is no public way.
    config = multiprocessing.current_process()._config  # type: ignore[attr-defined]
    daemon = config.pop("daemon", None)
    try:
        yield
    finally:
        if daemon is not None:
            config["daemon"] = daemon


@contextlib.contextmanager
def fork_context() -> Iterator[BaseContext]:
    """The ``fork`` context, usable for as long as the block runs. Workers inherit the loaded libraries
    (TensorFlow costs seconds to import) and the parent's objects; each must call :func:`start_worker`
    first."""
    with children_allowed():
        yield multiprocessing.get_context("fork")


@contextlib.contextmanager
def process_pool(
    processes: int,
    env: Mapping[str, str] | None = None,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``processes`` forked workers that die with this process, each started with ``env`` in
    its environment and then ``initializer(*initargs)`` (forked: the arguments are not pickled).

    A ProcessPoolExecutor, not a multiprocessing.Pool: when a worker dies (OOM killer, SIGKILL) a Pool
    replaces it and waits for ever for the lost work; the executor fails what is pending instead.
    """
    with fork_context() as ctx:
        pool = ProcessPoolExecutor(
            processes,
            mp_context=ctx,
            initializer=_start_pool_worker,
            initargs=(os.getpid(), dict(env or {}), initializer, initargs),
        )
        with pool:
            yield pool
