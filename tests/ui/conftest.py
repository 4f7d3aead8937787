"""Browser tests against a real Airflow: API server, scheduler and DAG processor started once per session.

Airflow runs from the project's venv on 127.0.0.1 and a free port (tests/support/live_airflow.py), with
LocalExecutor, SQLite, the repo's ``dags/`` and the simple auth manager with one admin user whose
password is in a file (not the all-admins mode: that mode authenticates every request, so it could not
show that a request without credentials is refused). Chromium is Debian's ``chromium``, driven by
Playwright for Python. Without either, the tests skip; under CI (``CI=true``) they fail instead.

The form run (``form_run``) is made once: the trigger form filled in the browser, submitted, and the
run waited for; the tests of the report tab, the extra link and the report routes look at that run.
Screenshots go to each test's ``tmp_path``; ``UPDATE_DOCS_SCREENSHOTS=1`` (or a missing file) also
copies the form and report screenshots to ``docs/`` for the README.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any
from urllib.parse import quote, unquote

import pytest

from airflow_resnet_prep.params import PARAMS
from tests.support.live_airflow import REPO, LiveAirflow
from tests.ui.uihelpers import (
    DAG_ID,
    UI_TIMEOUT_MS,
    USER,
    VIEWPORT,
    FormRun,
    chromium_path,
    open_trigger_form,
    run_ids,
    trigger_button,
    unavailable,
)


@pytest.fixture(scope="session")
def airflow_ui(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """A running Airflow with the repo's DAG parsed; stopped at the end of the session, even on failure."""
    password = secrets.token_urlsafe(12)
    airflow = LiveAirflow(
        tmp_path_factory.mktemp("airflow-ui"),
        dags_folder=REPO / "dags",
        auth=(USER, password),
        # Defaults from the developer's environment would change the form: keep the built-in ones.
        env={
            f"{prefix}{name}": ""
            for prefix in ("AIRFLOW__RESNET_PREP__", "MLPERF_RESNET_PREP_")
            for name in ("SCHEDULE", *(param.upper() for param in PARAMS))
        },
    )
    try:
        started = time.monotonic()
        airflow.migrate()
        airflow.start()
        request.getfixturevalue("sample")  # made while Airflow starts
        airflow.wait_healthy(timeout=180)
        airflow.wait_dag(DAG_ID, timeout=180)
        print(f"Airflow up and the DAG parsed in {time.monotonic() - started:.1f} s")
        yield airflow
    finally:
        airflow.stop()


@pytest.fixture(scope="session")
def browser():
    executable = chromium_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed: pip install playwright")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="session")
def signed_in(browser, airflow_ui):
    """One browser context for the session (so the UI's scripts load from its cache after the first
    page), signed in as the admin user through Airflow's login page."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        started = time.monotonic()
        page.goto(f"{airflow_ui.base_url}/dags/{DAG_ID}")
        page.wait_for_url("**/auth/login**")  # not signed in: Airflow sends the browser to its login page
        page.get_by_label("Username").fill(USER)
        page.get_by_label("Password").fill(airflow_ui.auth[1])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"**/dags/{DAG_ID}")
        page.close()
        print(f"signed in through the login page in {time.monotonic() - started:.1f} s")
        yield context
    finally:
        context.close()


@pytest.fixture
def page(signed_in):
    """A new page of the signed-in browser context."""
    page = signed_in.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        yield page
    finally:
        page.close()


@pytest.fixture(scope="session")
def form_run(signed_in, airflow_ui, sample, tmp_path_factory) -> FormRun:
    """Fill only data_dir and the three sources of the sample set, press Trigger, wait for the run."""
    shots = tmp_path_factory.mktemp("form-run")
    data_dir = tmp_path_factory.mktemp("prepared") / "nvidia"
    page = signed_in.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    try:
        dialog = open_trigger_form(page, airflow_ui)
        submit = trigger_button(dialog)
        assert submit.is_disabled(), "Trigger is enabled before the required params are filled"
        dialog.locator("#element_data_dir").fill(str(data_dir))
        dialog.locator("#element_train_source").fill(str(sample.train_tar))
        dialog.locator("#element_val_source").fill(str(sample.val_tar))
        page.screenshot(path=shots / "trigger-form.png")  # the README's: test_airflow_ui.py
        # The labels file's default is a URL; these machines have no internet: give the sample's.
        dialog.get_by_role("button", name="Sources: labels, checksums, credentials").click()
        dialog.locator("#element_labels_source").fill(str(sample.labels))
        page.screenshot(path=shots / "trigger-form-sources.png")
        assert submit.is_enabled(), "Trigger stays disabled with data_dir and the sources filled"

        before = run_ids(airflow_ui)
        started = time.monotonic()
        submit.click()
        # The UI goes to the new run's page.
        page.wait_for_url(f"**/dags/{DAG_ID}/runs/**")
        run_id = unquote(page.url.split("/runs/", 1)[1].split("/", 1)[0])
        assert run_id not in before
        pending = page.request.get(
            f"{airflow_ui.base_url}/resnet-prep/dags/{DAG_ID}/runs/{quote(run_id, safe='')}/report/"
        )
        pending_status, pending_text = pending.status, pending.text()
        state = airflow_ui.wait_run(DAG_ID, run_id, timeout=240)
        seconds = time.monotonic() - started
        print(f"run {run_id} from the form: {state} in {seconds:.1f} s")
        page.reload()
        page.screenshot(path=shots / "run.png")
    finally:
        page.close()
    return FormRun(run_id, data_dir, state, seconds, pending_status, pending_text, shots)


@pytest.fixture(scope="session")
def manifest(form_run) -> dict[str, Any]:
    assert form_run.state == "success"
    return json.loads((form_run.data_dir / "manifest.json").read_text())
