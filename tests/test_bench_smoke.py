"""The benchmark script (benchmarks/bench.py) runs end to end on a tiny set and writes the JSON it promises.

Runs the real script in a subprocess (``python -m benchmarks.bench``), as ``make bench`` does, at a size where the figures mean nothing but
every code path runs: the table (every row, each job in its own process), the scale-out check, and the
scale check on a small synthetic tar.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TABLE_ROWS = {"cat", "nvidia", "reference", "nvidia_from_tars", "reference_from_tars"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


def _run(workdir: Path, *args: str) -> tuple[dict, str]:
    out = workdir / "bench.json"
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench", "--workdir", str(workdir), "--json", str(out), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_table_and_scale_out(workdir: Path) -> None:
    # Two worker counts, not three: each reference worker process loads TensorFlow, which costs seconds.
    report, stdout = _run(
        workdir, "--images", "200", "--repeat", "1", "--skip-scale", "--scale-out-workers", "1,2"
    )

    rows = {r["name"]: r for r in report["rows"]}
    assert set(rows) >= TABLE_ROWS
    assert report["sample"]["images"] == 200
    for name, row in rows.items():
        assert row["images_per_s"] > 0, name
        assert row["peak_rss_mb"] > 0, name
        assert row["ratio_to_cat"] > 0, name
        assert row["images"] == 200
    assert rows["cat"]["ratio_to_cat"] == 1.0
    assert rows["nvidia_from_tars"]["baseline"] == "cat_tars_sync"
    assert rows["cat_tars_sync"]["phases_s"].keys() == {"fsync"}
    assert rows["nvidia"]["baseline"] == "cat"
    assert rows["nvidia"]["target"] == 0.8 and isinstance(rows["nvidia"]["met"], bool)
    # The from-tars rows timed the whole path, catalog building included.
    assert set(rows["reference_from_tars"]["phases_s"]) == {"fetch", "relabel", "plan", "units", "finish"}
    assert report["machine"]["usable_cores"] >= 1
    for name in TABLE_ROWS:
        assert name in stdout

    scale_out = report["scale_out"]
    assert {(r["implementation"], r["workers"]) for r in scale_out} == {
        (impl, n) for impl in ("nvidia", "reference") for n in (1, 2)
    }
    for r in scale_out:
        assert r["units_s"] > 0 and r["units"] >= 1
        assert r["processes"] == min(r["workers"], r["units"])
        assert 1.0 <= r["balance_bound"] <= r["workers"] + 1e-9
    assert "scale" not in report


def test_scale_check(workdir: Path) -> None:
    report, stdout = _run(workdir, "--scale", "--scale-entries", "4000")

    levels = report["scale"]["levels"]
    assert [lv["train"] for lv in levels] == [1000, 2000, 4000]
    for lv in levels:
        assert set(lv["steps"]) == {"fetch", "relabel", "plan nvidia", "plan reference"}
        assert lv["val"] >= lv["classes"]
        assert all(s["seconds"] > 0 and s["peak_rss_mb"] > 0 for s in lv["steps"].values())
    assert levels[-1]["catalog_mb"] > levels[0]["catalog_mb"]
    assert report["scale"]["peak_rss_met"] is True
    assert "rows" not in report and "scale_out" not in report
    assert "time per entry" in stdout
