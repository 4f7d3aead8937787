"""Gather the report's data (manifest, catalogs, output records) and write ``report/index.html``."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.fsutil import atomic_write_text, read_json
from airflow_resnet_prep.layout import DataDir
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
# Up to this many output files get a bar each; more (TFRecord shards) get a size histogram.
MAX_FILE_BARS = 16


class ReportError(PrepError):
    """The report cannot be made: there is no finished output to describe."""


def report_path(data_dir: str | os.PathLike[str]) -> Path:
    """Where the report of ``data_dir`` lives: ``data_dir/report/index.html``."""
    return DataDir.of(data_dir).root / REPORT_DIR / REPORT_FILE


def build_page(data_dir: str | os.PathLike[str]) -> Page:
    """Read everything the page shows. Parts that cannot be read become ``problems`` on the page."""
    layout = DataDir.of(data_dir)
    manifest = read_json(layout.manifest)
    if not isinstance(manifest, dict):
        raise ReportError(f"{layout.manifest}: no manifest: the output is not complete, nothing to report")
    problems: list[str] = []
    reencoded = [e for e in manifest.get("reencoded", []) if isinstance(e, dict)]
    skipped = [e for e in manifest.get("skipped", []) if isinstance(e, dict)]
    wanted = [(str(e.get("synset", "")), str(e.get("name", ""))) for e in reencoded + skipped]
    scan = scan_catalogs(layout.catalog, wanted)
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
    stored = stored_thumbs(layout.root, locate(layout.root, manifest, wanted_stored))
    samples = output_samples(layout.root, str(manifest.get("implementation", "")), files)
    # A record that could not be read or parsed has no class: listed as a problem, left out of the grid.
    problems.extend(f"{s.file} record {s.position}: {s.thumb.error}" for s in samples if not s.synset)
    return Page(
        data_dir=layout.root,
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


def write_report(data_dir: str | os.PathLike[str]) -> Path:
    """Write (or rewrite) ``data_dir/report/index.html`` for the finished output of ``data_dir``.

    The file is written under a temporary name and renamed, so a reader (the Airflow UI) never sees a
    half-written report. Raises :class:`ReportError` when ``data_dir`` has no manifest.
    """
    started = time.monotonic()
    page = build_page(data_dir)
    path = report_path(data_dir)
    path.parent.mkdir(exist_ok=True)
    atomic_write_text(path, render(page))
    log.info("report: %s (%d sample records, %.1f s)", path, len(page.samples), time.monotonic() - started)
    return path
