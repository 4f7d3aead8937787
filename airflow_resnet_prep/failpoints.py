"""Named crash points for the kill-and-resume tests: die by SIGKILL at an exact place, on demand.

A test sets ``AIRFLOW_RESNET_PREP_FAILPOINT=<name>`` (or ``<name>:<N>`` for the N-th time the point is
reached, counted per process) in the environment of a pipeline process; when the code reaches
``failpoint("<name>")`` the process kills itself with SIGKILL, exactly as the OOM killer or a node
loss would: no ``finally`` blocks, no exit handlers, no flushing of Python buffers. The test then checks
that no final name holds a partial file and that a rerun produces the same bytes as an uninterrupted
run. Killing at a named point instead of after a delay makes every run of the test hit the same state.

The variable is read once, at import; when it is unset a call costs one string comparison, so the
points stay in production code.

Points (where they are placed and why there):

* ``download-chunk``: after a chunk of a download is written to its ``.part`` (sources/download.py);
* ``fetch-train-catalog``: after the train catalog is saved, before the fetch record (catalog/fetch.py);
* ``inflate-copy``: after a piece of a shard's uncompressed working copy is written (catalog/inflated.py);
* ``unit-half``: after half of a conversion unit's records are written (both converters);
* ``finish``: in the finish step (recordio: after a split's ``.rec`` is joined, before its ``.idx`` and
  ``.lst``; tfrecord: while checking the shards);
* ``before-manifest``: after the conversion, before ``manifest.json`` is written (pipeline.py);
* ``direct-parent``: in the parent of the nvidia one-machine path's processes, after the first chunk
  is written (converters/recordio_direct.py): the workers must not outlive it.
"""

from __future__ import annotations

import os
import signal

ENV = "AIRFLOW_RESNET_PREP_FAILPOINT"
POINTS = (
    "download-chunk",
    "fetch-train-catalog",
    "inflate-copy",
    "unit-half",
    "finish",
    "before-manifest",
    "direct-parent",
)


def _parse(value: str) -> tuple[str, int]:
    """``name`` or ``name:N`` -> (name, N); a malformed count is an error, never silently ignored."""
    name, sep, count = value.strip().partition(":")
    if not sep:
        return name, 1
    try:
        hit = int(count)
    except ValueError:
        raise ValueError(f"{ENV}={value!r}: expected <name> or <name>:<N> with N a whole number") from None
    if hit < 1:
        raise ValueError(f"{ENV}={value!r}: N counts hits from 1, got {hit}")
    return name, hit


_ARMED, _AT_HIT = _parse(os.environ.get(ENV, ""))
_hits = 0


def failpoint(name: str) -> None:
    """SIGKILL this process if ``name`` is the armed point and this is the armed hit; else do nothing."""
    global _hits
    if name != _ARMED:  # the only cost when no point is armed (_ARMED is then "")
        return
    _hits += 1
    if _hits == _AT_HIT:
        os.kill(os.getpid(), signal.SIGKILL)
