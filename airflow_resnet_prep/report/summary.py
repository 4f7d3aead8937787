"""The short text summary of a finished output, from its manifest (what ``make demo`` prints)."""

from __future__ import annotations

from pathlib import Path

from airflow_resnet_prep.fsutil import read_json
from airflow_resnet_prep.report.build import report_path


def summary(data_dir: str) -> str:
    """A few lines: implementation and output folder, counts, files, steps, the manifest and the report."""
    manifest_path = Path(data_dir) / "manifest.json"
    manifest = read_json(manifest_path)
    if manifest is None:
        return f"{manifest_path}: no manifest: the output is not complete"
    outputs = manifest["outputs"]
    size = sum(o["size"] for o in outputs.values())
    folder = "tfrecords" if manifest["implementation"] == "reference" else "recordio"
    lines = [
        f"{manifest['implementation']}: {Path(data_dir) / folder}",
        f"  images: {manifest['images']['train']:,} train, {manifest['images']['val']:,} val, "
        f"{len(manifest['classes']['train'])} classes",
        f"  files:  {len(outputs)} ({size / 1e6:.1f} MB)",
        f"  re-encoded: {len(manifest['reencoded'])}, left out: {len(manifest['skipped'])}",
    ]
    for step, stats in manifest.get("steps", {}).items():
        lines.append(f"  {step}: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    lines.append(f"  manifest: {manifest_path}")
    report = report_path(data_dir)
    if report.is_file():
        lines.append(f"  report: {report}")
    return "\n".join(lines)
