"""The publish step: write ``manifest.json`` last, then the dataset report, and report the outputs under
the recipe's names."""

from __future__ import annotations

import logging
from typing import Any

from airflow_resnet_prep.layout import MANIFEST, DataDir
from airflow_resnet_prep.manifest import build_manifest, reuse_note, write_manifest
from airflow_resnet_prep.pipeline import fingerprints_of, output_paths
from airflow_resnet_prep.report import REPORT_FILES, REPORT_KEY, RUN_RECORD_KEY, write_report

log = logging.getLogger(__name__)


def publish_outputs(
    params: dict[str, Any],
    *,
    fetched: dict[str, Any],
    relabelled: dict[str, Any],
    summary: dict[str, Any] | None,
    run: dict[str, str] | None = None,
    data_dir: DataDir | None = None,
) -> dict[str, Any]:
    """With a conversion ``summary``, write the manifest; without one (reused output), read it back.
    ``data_dir``: the params' data_dir, when the caller has it parsed already.

    ``params`` holds ``data_dir``, ``implementation``, ``storage_conn_id`` (optional) and the output
    params recorded in the manifest (this run's values: for a reused output, the task log, the report and
    the XCom ``reused`` say which of them differ from the recorded ones without changing a byte). ``run`` (``dag_id``, ``run_id``: the Airflow run publishing) is
    written to ``report/run.json``, the record by which the UI's report view knows whose report this is.
    Then writes ``report/index.html`` (always: for a reused output with a note saying so on top). Returns the XCom outputs: ``data_path``, ``imagenet_path`` and ``tfrecords_path``,
    ``preprocessed_path`` or ``webdataset_path``, plus ``manifest``, ``cached``, ``reused`` (None, or why the output was reused), ``report`` (the report's path or URI, or None
    when it could not be written) and ``storage_conn_id`` (the data_dir's connection, from its URI or the
    param; None for a local data_dir).
    """
    layout = DataDir.at(params["data_dir"] if data_dir is None else data_dir, params.get("storage_conn_id"))
    implementation = params["implementation"]
    if summary is not None:
        unit_seconds = round(sum(s["unit_seconds"] for s in summary["splits"].values()), 3)
        records = sum(s["records"] for s in summary["splits"].values())
        steps = {
            "fetch": fetched.get("timings", {}),
            "convert": {
                "unit_seconds": unit_seconds,
                "images_per_unit_second": round(records / unit_seconds, 1) if unit_seconds else None,
            },
        }
        manifest = build_manifest(
            layout,
            implementation=implementation,
            params=params,
            fingerprints=fingerprints_of(fetched, relabelled),
            conversion=summary,
            steps=steps,
        )
        write_manifest(layout, manifest)
        reused = None
    else:
        manifest = layout.read_json(MANIFEST) or {}
        reused = reuse_note(implementation, manifest.get("params") or {}, params)
        log.info("reused the %s output in %s: %s", implementation, layout.url, reused)
    if run is not None:
        # "files": what the report view may serve of report/ (nothing else there is this run's).
        layout.write_json(
            RUN_RECORD_KEY, {"dag_id": run["dag_id"], "run_id": run["run_id"], "files": list(REPORT_FILES)}
        )
    report = _report(layout, reused=reused)
    outputs = output_paths(layout, implementation, fetched["imagenet_path"])
    images = manifest.get("images", {})
    total = sum(s.get("size", 0) for s in manifest.get("outputs", {}).values())
    log.info(
        "%s output %s: %s train + %s val images, %d files, %.1f MB (%s)",
        implementation,
        "reused" if summary is None else "written",
        f"{images.get('train', 0):,}",
        f"{images.get('val', 0):,}",
        len(manifest.get("outputs", {})),
        total / 1e6,
        layout.uri(MANIFEST),
    )
    return {
        **outputs,
        "manifest": layout.uri(MANIFEST),
        "cached": summary is None,
        "reused": reused,
        "report": report,
        # the connection of a data_dir in a bucket (its id, never a secret): the UI plugin reads the
        # report through it; None for a local data_dir
        "storage_conn_id": layout.store.conn_id,
    }


def _report(layout: DataDir, *, reused: str | None = None) -> str | None:
    """Write the dataset report ``report/index.html`` through the data_dir's store (a local folder or a
    bucket alike); its path or URI, or None when it failed.

    A report failure is logged, not raised: the output and its manifest are complete by now, and failing
    publish would withhold the Asset update (and the data) from consumers for want of a web page.
    """
    uri = layout.uri(REPORT_KEY)
    try:
        return write_report(layout, reused=reused)
    except Exception:
        log.exception("could not write the dataset report %s; the output itself is complete", uri)
        return None
