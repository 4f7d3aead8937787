"""The short text summary of a finished output, from its manifest (what ``make demo`` prints)."""

from __future__ import annotations

import os

from airflow_resnet_prep.layout import MANIFEST, RECORDIO, TFRECORDS, DataDir
from airflow_resnet_prep.report.build import REPORT_KEY


def summary(data_dir: str | os.PathLike[str], conn_id: str | None = None) -> str:
    """A few lines: implementation and output folder, counts, files, steps, the manifest and the report.

    ``data_dir`` is a local path or an object-store URI (``conn_id``: its connection when it names none).
    """
    layout = DataDir.of(data_dir, conn_id)
    manifest = layout.read_json(MANIFEST)
    if manifest is None:
        return f"{layout.uri(MANIFEST)}: no manifest: the output is not complete"
    outputs = manifest["outputs"]
    size = sum(o["size"] for o in outputs.values())
    folder = TFRECORDS if manifest["implementation"] == "reference" else RECORDIO
    lines = [
        f"{manifest['implementation']}: {layout.uri(folder)}",
        f"  images: {manifest['images']['train']:,} train, {manifest['images']['val']:,} val, "
        f"{len(manifest['classes']['train'])} classes",
        f"  files:  {len(outputs)} ({size / 1e6:.1f} MB)",
        f"  re-encoded: {len(manifest['reencoded'])}, left out: {len(manifest['skipped'])}",
    ]
    for step, stats in manifest.get("steps", {}).items():
        lines.append(f"  {step}: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    lines.append(f"  manifest: {layout.uri(MANIFEST)}")
    if layout.exists(REPORT_KEY):
        lines.append(f"  report: {layout.uri(REPORT_KEY)}")
    return "\n".join(lines)
