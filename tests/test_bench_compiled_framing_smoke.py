"""The compiled-framing measurement (benchmarks/compiled_framing.py) runs end to end on a tiny set.

The real script in a subprocess, as a person runs it: it builds the C loop with gcc, frames the sample's
training images with both loops, and fails unless they agree on every run's size and CRC-32C.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_both_loops_frame_the_same_runs(tmp_path: Path) -> None:
    args = ["--images", "300", "--repeat", "1", "--workdir", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.compiled_framing", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line[:1].isalpha()}
    for loop in ("python", "compiled"):
        cpu_us, user_us, system_us, wall_us = map(float, rows[loop])
        assert cpu_us > 0 and wall_us > 0, loop
        assert abs(cpu_us - (user_us + system_us)) < 0.2, loop
    assert "both loops: every run the same size and CRC-32C, the last run the same bytes" in proc.stdout
