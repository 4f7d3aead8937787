"""Gather the report's data (manifest, catalogs, output records) and write ``report/index.html``.

Everything is read and written through the data_dir's :class:`~airflow_resnet_prep.storage.Store`, so a
data_dir in a bucket (``s3://...``, ``gs://...``) gets the same page as a local one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.layout import CATALOG, MANIFEST, DataDir
from airflow_resnet_prep.report.html import Page, render
from airflow_resnet_prep.report.listed import MAX_LISTED_THUMBS, listed_images
from airflow_resnet_prep.report.samples import output_samples
from airflow_resnet_prep.report.stats import (
    Histogram,
    class_stats,
    data_files,
    linear_histogram,
    log_histogram,
    scan_catalogs,
)
from airflow_resnet_prep.report.stored import locate, stored_thumbs

log = logging.getLogger(__name__)

REPORT_DIR = "report"
REPORT_FILE = "index.html"
REPORT_KEY = f"{REPORT_DIR}/{REPORT_FILE}"  # relative to data_dir
# Which Airflow run published the report (dag_id, run_id): the UI's report view serves a report only to
# the run this record names, whatever an (editable) XCom claims.
RUN_RECORD_KEY = f"{REPORT_DIR}/run.json"
#: The files of a report (relative to ``report/``), listed in the run record: the report view serves
#: these and nothing else of the folder, whoever else wrote there.
REPORT_FILES = (REPORT_FILE,)
# Up to this many output files get a bar each; more (TFRecord shards) get a size histogram.
MAX_FILE_BARS = 16


class ReportError(PrepError):
    """The report cannot be made: there is no finished output to describe."""


def report_path(data_dir: str | os.PathLike[str] | DataDir) -> Path:
    """Where the report of a local ``data_dir`` lives: ``data_dir/report/index.html`` (see
    :func:`report_uri` for a data_dir in a bucket)."""
    return DataDir.at(data_dir).path(REPORT_KEY)


def report_uri(data_dir: str | os.PathLike[str] | DataDir, conn_id: str | None = None) -> str:
    """The path or URI (without its connection) of the report of ``data_dir``, local or in a bucket."""
    return DataDir.at(data_dir, conn_id).uri(REPORT_KEY)


def build_page(layout: DataDir) -> Page:
    """Read everything the page shows. Parts that cannot be read become ``problems`` on the page."""
    manifest = layout.read_json(MANIFEST)
    if not isinstance(manifest, dict):
        raise ReportError(
            f"{layout.uri(MANIFEST)}: no manifest: the output is not complete, nothing to report"
        )
    problems: list[str] = []
    reencoded = [e for e in manifest.get("reencoded", []) if isinstance(e, dict)]
    skipped = [e for e in manifest.get("skipped", []) if isinstance(e, dict)]
    wanted = [(str(e.get("synset", "")), str(e.get("name", ""))) for e in reencoded + skipped]
    scan = scan_catalogs(layout.store, CATALOG, wanted)
    problems.extend(f"catalog: {e}" for e in scan.errors)
    files = data_files(manifest)
    n_files = sum(len(f) for f in files.values())
    file_hists: dict[str, Histogram] = {}
    if n_files > MAX_FILE_BARS:
        # One histogram per split, each over its own range: shards of a split should be near-equal, and a
        # shared axis (train shards ~3x the validation ones) would squeeze that spread into one bar.
        file_hists = {
            split: linear_histogram({split: [size for _, size, _ in f]}) for split, f in files.items() if f
        }
    wanted_stored = {
        (str(e.get("synset", "")), str(e.get("name", ""))) for e in reencoded[:MAX_LISTED_THUMBS]
    }
    stored = stored_thumbs(layout, locate(layout, manifest, wanted_stored))
    samples = output_samples(layout.store, str(manifest.get("implementation", "")), files)
    # A record that could not be read or parsed has no class: listed as a problem, left out of the grid.
    problems.extend(f"{s.file} record {s.position}: {s.thumb.error}" for s in samples if not s.synset)
    return Page(
        data_dir=layout.url,
        manifest=manifest,
        classes=class_stats(manifest),
        image_sizes=scan.sizes,
        image_hist=log_histogram({split: stats.sizes for split, stats in scan.sizes.items()}),
        files=files,
        file_hists=file_hists,
        samples=[s for s in samples if s.synset],
        reencoded=listed_images(reencoded, scan.found, scan.sources, stored),
        skipped=listed_images(skipped, scan.found, scan.sources),
        problems=problems,
    )


def write_report(
    data_dir: str | os.PathLike[str] | DataDir, conn_id: str | None = None, *, reused: str | None = None
) -> str:
    """Write (or rewrite) ``report/index.html`` for the finished output of ``data_dir`` (a local path,
    an object-store URI, whose connection is ``conn_id`` when it names none, or a :class:`DataDir`);
    return its path or URI.

    The page is written with the store's atomic put (locally: a temporary name, then a rename), so a
    reader (the Airflow UI) never sees a half-written report. Raises :class:`ReportError` when
    ``data_dir`` has no manifest. ``reused``: the run publishing reused the output, and why (shown on top).
    """
    started = time.monotonic()
    layout = DataDir.at(data_dir, conn_id)
    try:
        page = build_page(layout)
        if reused:
            page = dataclasses.replace(page, reused=reused)
        layout.store.write_bytes(REPORT_KEY, render(page).encode("utf-8"))
    finally:
        if layout is not data_dir:
            layout.store.close()  # files (or a client) opened for this report only
    uri = layout.uri(REPORT_KEY)
    log.info("report: %s (%d sample records, %.1f s)", uri, len(page.samples), time.monotonic() - started)
    return uri
