"""Helpers of the browser tests (tests/ui): constants, the trigger dialog, the run triggered from the form."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.live_airflow import REPO, LiveAirflow

DAG_ID = "mlperf_resnet_prep"
USER = "admin"
VIEWPORT = {"width": 1400, "height": 1300}
UI_TIMEOUT_MS = 30_000
DOCS = REPO / "docs"


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    """Skip, or fail under CI, where the browser is part of what must be installed."""
    if under_ci():
        pytest.fail(f"{reason} (CI=true: browser tests must run)", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    unavailable("no chromium on PATH: apt-get install -y chromium")
    raise AssertionError("unreachable")


def to_docs(screenshot: Path, name: str) -> None:
    """Copy a screenshot to docs/<name> when asked (UPDATE_DOCS_SCREENSHOTS=1) or when it is missing."""
    target = DOCS / name
    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1" or not target.exists():
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(screenshot, target)


def open_trigger_form(page, airflow: LiveAirflow):
    """Open the DAG page, press *Trigger*; the dialog."""
    page.goto(f"{airflow.base_url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for()
    dialog.locator("#element_data_dir").wait_for()
    return dialog


def trigger_button(dialog):
    return dialog.get_by_role("button", name="Trigger", exact=True)


def run_ids(airflow: LiveAirflow) -> set[str]:
    response = airflow.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns", params={"limit": 100})
    response.raise_for_status()
    return {run["dag_run_id"] for run in response.json()["dag_runs"]}


@dataclass
class FormRun:
    """The run triggered from the form, once per session."""

    run_id: str
    data_dir: Path
    state: str
    seconds: float
    pending_status: int  # the report route while the run was not finished
    pending_text: str
    shots: Path

    @property
    def run_path(self) -> str:
        return f"/dags/{DAG_ID}/runs/{quote(self.run_id, safe='')}"

    @property
    def report_path(self) -> str:
        return f"/resnet-prep/dags/{DAG_ID}/runs/{quote(self.run_id, safe='')}/report/"
