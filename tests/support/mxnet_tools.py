"""Harness that runs the real MXNet tools (in their own venv) to check our RecordIO against them.

MXNet 1.9.1 needs ``numpy<1.24`` and cannot share the main venv (TensorFlow needs a newer numpy), so it
lives in ``.venv-mxnet`` (made by ``make install``) and is driven through subprocesses. Data goes in and
out as JSON with base64 bytes in temporary files, never through stdout, which MXNet and im2rec print to.

Tests must not skip when the venv is missing: they call :func:`require_mxnet`, which fails with a hint.
"""

from __future__ import annotations

import base64
import functools
import json
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MXNET_VENV = REPO / ".venv-mxnet"
MXNET_PYTHON: Path = MXNET_VENV / "bin" / "python"
_TIMEOUT = 600


@functools.lru_cache(maxsize=1)
def _probe() -> str | None:
    """None when MXNet imports in its venv, else the reason it does not."""
    if not MXNET_PYTHON.exists():
        return f"{MXNET_PYTHON} does not exist"
    proc = subprocess.run(
        [str(MXNET_PYTHON), "-c", "import mxnet, cv2"], capture_output=True, text=True, timeout=_TIMEOUT
    )
    if proc.returncode != 0:
        return f"`import mxnet, cv2` fails in {MXNET_VENV}:\n{proc.stderr[-2000:]}"
    return None


def mxnet_available() -> bool:
    """True when ``.venv-mxnet`` exists and ``import mxnet`` (and cv2, which im2rec needs) works in it."""
    return _probe() is None


def require_mxnet() -> None:
    """Fail (not skip) with an actionable message when the MXNet venv is unusable."""
    reason = _probe()
    if reason is not None:
        raise AssertionError(
            f"the MXNet cross-check venv is not usable ({reason}); run `make install` to create "
            f"{MXNET_VENV.name} with mxnet 1.9.1"
        )


@functools.lru_cache(maxsize=1)
def im2rec_path() -> Path:
    """``mxnet/tools/im2rec.py`` as shipped in the mxnet wheel installed in the venv."""
    found = sorted(MXNET_VENV.glob("lib/python*/site-packages/mxnet/tools/im2rec.py"))
    if not found:
        raise FileNotFoundError(
            f"im2rec.py not found under {MXNET_VENV}/lib/python*/site-packages/mxnet/tools"
        )
    return found[0]


def _run(args: Sequence[str], what: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(MXNET_PYTHON), *args], capture_output=True, text=True, timeout=_TIMEOUT, cwd=cwd
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{what} failed (exit {proc.returncode}):\n"
            f"stdout:\n{proc.stdout[-4000:]}\nstderr:\n{proc.stderr[-4000:]}"
        )
    return proc


def run_im2rec(root: Path, prefix: Path) -> None:
    """Run im2rec as the NVIDIA MLPerf recipe does: ``--list --recursive``, then ``--pass-through``.

    Produces ``prefix.lst``, ``prefix.rec`` and ``prefix.idx``. Step one writes ``<prefix>.lst``
    (shuffled with ``random.seed(100)``, the default). Step two takes every file of prefix's folder whose
    path starts with its prefix argument and ends in ``.lst``, so it is given ``prefix.lst`` itself
    (a bare prefix would also pick up e.g. ``train_old.lst``); it names the outputs after the list.
    ``--num-thread`` is left at its default of 1: single-process, records in list order.
    """
    root, prefix = Path(root).resolve(), Path(prefix).resolve()
    im2rec = str(im2rec_path())
    _run([im2rec, "--list", "--recursive", str(prefix), str(root)], f"im2rec --list for {root}")
    lst = prefix.with_name(prefix.name + ".lst")
    proc = _run([im2rec, "--pass-through", str(lst), str(root)], f"im2rec --pass-through for {lst}")
    for suffix in (".lst", ".rec", ".idx"):
        out = prefix.with_name(prefix.name + suffix)
        if not out.is_file():
            raise RuntimeError(f"im2rec did not produce {out}; its output:\n{proc.stdout[-4000:]}")


@dataclass(frozen=True)
class MXRecord:
    """One record as MXNet reads it: idx key, the raw payload, and ``mx.recordio.unpack``'s view of it."""

    key: int
    flag: int
    label: float
    id: int
    id2: int
    payload: bytes
    image: bytes


_READ_SCRIPT = """
import base64, json, sys
import mxnet as mx
idx, rec, out = sys.argv[1:4]
r = mx.recordio.MXIndexedRecordIO(idx, rec, "r")
items = []
for key in r.keys:
    s = r.read_idx(key)
    header, image = mx.recordio.unpack(s)
    items.append([key, int(header.flag), float(header.label), int(header.id), int(header.id2),
                  base64.b64encode(s).decode(), base64.b64encode(image).decode()])
r.close()
with open(out, "w") as fh:
    json.dump(items, fh)
"""


def read_records_with_mxnet(rec: Path, idx: Path) -> list[MXRecord]:
    """Every record of ``rec`` in ``idx`` order, read by ``MXIndexedRecordIO.read_idx`` and ``unpack``."""
    with tempfile.TemporaryDirectory(prefix="mxnet-read-") as tmp:
        out = Path(tmp) / "records.json"
        _run(["-c", _READ_SCRIPT, str(idx), str(rec), str(out)], f"reading {rec} with MXNet")
        items = json.loads(out.read_text())
    return [
        MXRecord(key, flag, label, id1, id2, base64.b64decode(payload), base64.b64decode(image))
        for key, flag, label, id1, id2, payload, image in items
    ]


def read_with_mxnet(rec: Path, idx: Path) -> list[tuple[int, float, int, bytes]]:
    """``(idx key, label, header id, image bytes)`` per record, as MXNet's indexed reader sees them."""
    return [(r.key, r.label, r.id, r.image) for r in read_records_with_mxnet(rec, idx)]


_WRITE_SCRIPT = """
import base64, json, sys
import mxnet as mx
idx, rec, inp = sys.argv[1:4]
with open(inp) as fh:
    items = json.load(fh)
w = mx.recordio.MXIndexedRecordIO(idx, rec, "w")
for item in items:
    if "payload" in item:
        s = base64.b64decode(item["payload"])
    else:
        header = mx.recordio.IRHeader(0, item["label"], item["id"], 0)
        s = mx.recordio.pack(header, base64.b64decode(item["image"]))
    w.write_idx(item["key"], s)
w.close()
"""


def write_with_mxnet(rec: Path, idx: Path, records: Sequence[tuple[int, bytes]]) -> None:
    """Write raw payloads ``(key, payload)`` with MXNet's ``MXIndexedRecordIO.write_idx`` (dmlc's writer)."""
    _write([{"key": key, "payload": base64.b64encode(p).decode()} for key, p in records], rec, idx)


def pack_and_write_with_mxnet(rec: Path, idx: Path, items: Sequence[tuple[int, float, int, bytes]]) -> None:
    """For each ``(key, label, id, image)`` write ``mx.recordio.pack(IRHeader(0, label, id, 0), image)``
    with ``write_idx(key, ...)``: exactly what ``im2rec --pass-through`` does per list line."""
    _write(
        [
            {"key": key, "label": label, "id": id1, "image": base64.b64encode(image).decode()}
            for key, label, id1, image in items
        ],
        rec,
        idx,
    )


def _write(items: list[dict], rec: Path, idx: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="mxnet-write-") as tmp:
        inp = Path(tmp) / "records.json"
        inp.write_text(json.dumps(items))
        _run(["-c", _WRITE_SCRIPT, str(idx), str(rec), str(inp)], f"writing {rec} with MXNet")
