"""``airflow dags test`` in a fresh process, as a user runs it: its own AIRFLOW_HOME (SQLite), a DAGs
folder of the test's choice and extra settings; none of the test session's Airflow variables leak in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def dags_test(
    dag_id: str,
    conf: Mapping[str, Any],
    *,
    home: Path,
    dags_folder: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Migrate a fresh metadata DB in ``home``, then ``airflow dags test dag_id -c conf``; the finished
    process (the caller checks ``returncode``)."""
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        **(env or {}),
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=full_env, check=True, capture_output=True, timeout=300)
    return subprocess.run(
        [airflow, "dags", "test", dag_id, "-c", json.dumps(dict(conf))],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
