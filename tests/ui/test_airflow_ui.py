"""The Airflow UI as a person meets it, in Chromium: the trigger form, the run, its Dataset report tab,
the publish task's extra link, and the report routes' access checks (see conftest.py for the set-up)."""

from __future__ import annotations

import http.client
import json
from urllib.parse import quote, unquote, urlsplit

from airflow_resnet_prep.params import PARAMS
from tests.ui.uihelpers import DAG_ID, open_trigger_form, run_ids, to_docs, trigger_button


def test_form_submits_with_only_the_required_params_and_the_run_succeeds(form_run):
    assert form_run.state == "success", f"the run triggered from the form ended {form_run.state}"
    # While the run was queued or running, the report route said so, plainly.
    assert form_run.pending_status == 404
    assert "not written yet" in form_run.pending_text
    assert "still" in form_run.pending_text


def test_report_tab_shows_charts_thumbnails_and_the_manifest_counts(
    form_run, manifest, page, airflow_ui, tmp_path
):
    page.goto(airflow_ui.base_url + form_run.run_path)
    tab = page.get_by_role("link", name="Dataset report")
    assert unquote(tab.get_attribute("href")).endswith(f"/runs/{form_run.run_id}/plugin/dataset-report")
    tab.click()
    page.wait_for_url("**/plugin/dataset-report")
    frame = page.frame_locator("iframe[title='Dataset report']")
    frame.locator("header h1").wait_for()

    # The image counts it shows are the manifest's.
    images = manifest["images"]
    for key, count in (("train images", images["train"]), ("validation images", images["val"])):
        shown = frame.locator(f".card .value[data-key='{key}']").inner_text()
        assert int(shown.replace(",", "")) == count, key
    assert images["train"] + images["val"] > 0

    # Charts (inline SVG) and thumbnails (decoded from the written records) are there and render.
    assert frame.locator("svg.chart").count() >= 2
    thumbs = frame.locator("figure.thumb[data-split] img")
    assert thumbs.count() >= 1
    decoded = frame.locator("body").evaluate(
        """async (body) => {
            const imgs = [...body.querySelectorAll('figure.thumb img')];
            imgs.forEach((img) => { img.loading = 'eager'; });
            await Promise.all(imgs.map((img) => img.decode().catch(() => null)));
            return imgs.map((img) => img.naturalWidth);
        }"""
    )
    assert decoded and all(width > 0 for width in decoded), decoded

    page.screenshot(path=tmp_path / "report.png")
    to_docs(tmp_path / "report.png", "report.png")
    # The thumbnails, from the report opened on its own (an element screenshot inside the iframe
    # would be clipped by it).
    page.goto(airflow_ui.base_url + form_run.report_path)
    grid = page.locator("#samples .grid").first
    grid.evaluate(
        "async (grid) => { for (const img of grid.querySelectorAll('img')) { img.loading = 'eager'; "
        "await img.decode().catch(() => null); } }"
    )
    grid.screenshot(path=tmp_path / "report-samples.png")
    to_docs(tmp_path / "report-samples.png", "report-samples.png")


def test_publish_extra_link_opens_the_report_tab(form_run, page, airflow_ui, tmp_path):
    # Airflow 3.3 lists a task's extra links at the top of its Details tab.
    page.goto(f"{airflow_ui.base_url}{form_run.run_path}/tasks/publish/details")
    link = page.get_by_role("link", name="Dataset report")
    link.wait_for()
    assert (
        unquote(link.get_attribute("href")) == f"/dags/{DAG_ID}/runs/{form_run.run_id}/plugin/dataset-report"
    )
    link.click()
    page.wait_for_url("**/plugin/dataset-report")
    page.frame_locator("iframe[title='Dataset report']").locator("header h1").wait_for()
    page.screenshot(path=tmp_path / "extra-link.png")


SECTIONS: dict[str, list[str]] = {}
for _name, _spec in PARAMS.items():
    SECTIONS.setdefault(_spec.section or "Run Parameters", []).append(_name)


def test_every_form_section_renders_its_params(page, airflow_ui, tmp_path):
    dialog = open_trigger_form(page, airflow_ui)
    for number, (section, names) in enumerate(SECTIONS.items()):
        if number:  # "Run Parameters" starts expanded; the others start collapsed
            dialog.get_by_role("button", name=section, exact=True).click()
        for name in names:
            field = dialog.locator(f"[name=element_{name}]").first
            field.wait_for(state="attached")
            row = dialog.locator(f"label:text-is('{name}')")
            assert row.first.is_visible(), f"{name} is not shown in section {section!r}"
        page.screenshot(path=tmp_path / f"section-{number}.png")


def test_the_form_shows_implementation_first_and_says_what_trainers_expect(page, airflow_ui, tmp_path):
    """``implementation`` is the first field, in the expanded block, before the required three; the shard
    fields say what the MLPerf reference reads and ``on_bad_image`` says when ``force`` is needed. The
    screenshot is the README's (docs/trigger-form.png with UPDATE_DOCS_SCREENSHOTS=1)."""
    dialog = open_trigger_form(page, airflow_ui)
    implementation = dialog.locator("[name=element_implementation]").first
    implementation.wait_for(state="attached")
    label = dialog.locator("label:text-is('implementation')").first
    assert label.is_visible(), "implementation is not shown without opening a section"
    tops = {
        name: dialog.locator(f"label:text-is('{name}')").first.bounding_box()["y"]
        for name in ("implementation", "data_dir", "train_source", "val_source")
    }
    assert sorted(tops, key=tops.get) == ["implementation", "data_dir", "train_source", "val_source"], tops
    assert "MLPerf reference TensorFlow ResNet" in dialog.inner_text()
    # As a user fills it (paths of the README's examples; this form is never submitted).
    for name, value in (
        ("data_dir", "/data/imagenet/prepared"),
        ("train_source", "/data/imagenet/ILSVRC2012_img_train.tar"),
        ("val_source", "/data/imagenet/ILSVRC2012_img_val.tar"),
    ):
        dialog.locator(f"#element_{name}").fill(value)
    assert trigger_button(dialog).is_enabled()
    page.screenshot(path=tmp_path / "trigger-form.png")
    to_docs(tmp_path / "trigger-form.png", "trigger-form.png")

    dialog.get_by_role("button", name="reference: TFRecord options", exact=True).click()
    dialog.get_by_text("reads exactly 1024 train and 128 validation shards").first.wait_for()
    dialog.get_by_role("button", name="Output", exact=True).click()
    dialog.get_by_text("switching to skip needs force=true").first.wait_for()
    page.screenshot(path=tmp_path / "trigger-form-sections.png")


def test_the_rest_api_refuses_a_run_without_the_required_params(airflow_ui, sample, tmp_path):
    """An empty conf, or an empty data_dir, is refused by the REST API with a message naming the param;
    no run is created."""
    before = run_ids(airflow_ui)
    path = f"/api/v2/dags/{DAG_ID}/dagRuns"
    full = {
        "data_dir": str(tmp_path / "never"),
        "train_source": str(sample.train_tar),
        "val_source": str(sample.val_tar),
    }
    for conf, name in (
        ({}, "data_dir"),
        ({**full, "data_dir": ""}, "data_dir"),
        ({**full, "val_source": ""}, "val_source"),
    ):
        response = airflow_ui.api("POST", path, json={"logical_date": None, "conf": conf})
        assert response.status_code == 400, (conf, response.status_code, response.text[:500])
        assert f"Invalid input for param {name}" in response.text, response.text[:500]
    assert run_ids(airflow_ui) == before
    assert not (tmp_path / "never").exists()


def test_a_shard_count_of_zero_shows_its_error_and_creates_no_run(page, airflow_ui, sample, tmp_path):
    dialog = open_trigger_form(page, airflow_ui)
    submit = trigger_button(dialog)
    conf = {
        "data_dir": str(tmp_path / "never"),
        "train_source": str(sample.train_tar),
        "val_source": str(sample.val_tar),
    }
    dialog.locator("#element_data_dir").fill(conf["data_dir"])
    dialog.locator("#element_train_source").fill(conf["train_source"])
    dialog.locator("#element_val_source").fill(conf["val_source"])

    # The number field never holds 0: the form shows an error and disables Trigger, or (Airflow 3.3)
    # puts the value back to the schema's minimum when the field is left.
    dialog.get_by_role("button", name="reference: TFRecord options", exact=True).click()
    shards = dialog.locator("[name=element_train_shards]")
    shards.fill("0")
    shards.blur()
    assert shards.input_value() == "1" or (submit.is_disabled() and "train_shards" in dialog.inner_text()), (
        f"train_shards holds {shards.input_value()!r} and Trigger is enabled"
    )
    page.screenshot(path=tmp_path / "shards-field.png")

    # The configuration JSON can say 0: Trigger is refused with the error naming the param, and the
    # dialog stays open with the values entered.
    before = run_ids(airflow_ui)
    dialog.get_by_role("button", name="Advanced Options", exact=True).click()
    dialog.locator(".monaco-editor").click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(json.dumps({**conf, "train_shards": 0}))
    page.keyboard.press("Shift+Control+End")  # the editor closes the brace by itself: drop its copy
    page.keyboard.press("Delete")
    dialog.get_by_text("Configuration JSON").click()  # leave the editor: the form takes the JSON
    submit.click()
    error = dialog.get_by_text("Invalid input for param train_shards")
    error.wait_for()
    assert "0 is less than the minimum of 1" in dialog.inner_text()
    assert dialog.is_visible()
    page.screenshot(path=tmp_path / "shards-refused.png")
    assert run_ids(airflow_ui) == before


def raw_get(base_url: str, path: str, token: str | None = None) -> tuple[int, bytes]:
    """GET exactly ``path`` (no client-side normalisation of ``..`` or percent-escapes)."""
    host = urlsplit(base_url)
    connection = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_report_routes_refuse_requests_without_credentials(form_run, manifest, airflow_ui, browser):
    for path in (form_run.report_path, form_run.report_path + "index.html", form_run.report_path[:-1]):
        status, body = raw_get(airflow_ui.base_url, path)
        assert status == 401, (path, status, body[:200])
        status, body = raw_get(airflow_ui.base_url, path, token="not-a-token")
        assert status in (401, 403), (path, status, body[:200])
    # The same with a browser that has not signed in.
    context = browser.new_context()
    try:
        response = context.request.get(airflow_ui.base_url + form_run.report_path)
        assert response.status == 401
        assert b"Dataset report" not in response.body()
    finally:
        context.close()
    # Control: with credentials, the report is served, sandboxed.
    response = airflow_ui.api("GET", form_run.report_path)
    assert response.status_code == 200 and "dataset report" in response.text
    assert "sandbox" in response.headers["Content-Security-Policy"]


def test_report_routes_never_leave_the_run_report_folder(form_run, manifest, airflow_ui):
    report_dir = form_run.data_dir / "report"
    secret = (form_run.data_dir / "manifest.json").read_bytes()
    (report_dir / "notes.txt").write_text("inside\n")
    (report_dir / "escape.json").symlink_to(form_run.data_dir / "manifest.json")
    (report_dir / "up").symlink_to(form_run.data_dir)
    try:
        token = airflow_ui.token()
        base = form_run.report_path
        # The files the run's publish listed are served (its report/run.json); a file planted beside them,
        # inside the folder but not listed, is not.
        status, body = raw_get(airflow_ui.base_url, base + "index.html", token)
        assert status == 200 and b"Dataset report" in body
        status, body = raw_get(airflow_ui.base_url, base + "notes.txt", token)
        assert status == 404 and b"inside" not in body
        outside = [
            "../manifest.json",
            "%2e%2e/manifest.json",
            "..%2fmanifest.json",
            "%2e%2e%2fmanifest.json",
            "%2E%2E%2Fmanifest.json",
            "./../manifest.json",
            "notes.txt/../../manifest.json",
            "..%5cmanifest.json",
            quote(str(form_run.data_dir / "manifest.json"), safe=""),
            "/" + str(form_run.data_dir / "manifest.json").lstrip("/"),
            "escape.json",
            "up/manifest.json",
            "%00",
        ]
        for path in outside:
            status, body = raw_get(airflow_ui.base_url, base + path, token)
            assert status in (400, 404), (path, status)
            assert secret not in body and b'"fingerprints"' not in body, path
    finally:
        for name in ("notes.txt", "escape.json", "up"):
            (report_dir / name).unlink(missing_ok=True)
