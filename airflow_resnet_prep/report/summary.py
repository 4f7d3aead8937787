"""The short text summary of a finished output, from its manifest (what ``make demo`` prints)."""

from __future__ import annotations

import os

from airflow_resnet_prep.layout import MANIFEST, RECORDIO, TFRECORDS, WEBDATASET, DataDir
from airflow_resnet_prep.report.build import REPORT_KEY


def summary(data_dir: str | os.PathLike[str] | DataDir, conn_id: str | None = None) -> str:
    """A few lines: implementation and output folder, counts, files, steps, the manifest and the report.

    ``data_dir`` is a local path or an object-store URI (``conn_id``: its connection when it names none),
    or a :class:`DataDir`.
    """
    layout = DataDir.at(data_dir, conn_id)
    manifest = layout.read_json(MANIFEST)
    if manifest is None:
        return f"{layout.uri(MANIFEST)}: no manifest: the output is not complete"
    outputs = manifest["outputs"]
    size = sum(o["size"] for o in outputs.values())
    folder = {"reference": TFRECORDS, "webdataset": WEBDATASET}.get(manifest["implementation"], RECORDIO)
    lines = [
        f"{manifest['implementation']}: {layout.uri(folder)}",
        f"  images: {manifest['images']['train']:,} train, {manifest['images']['val']:,} val, "
        f"{len(manifest['classes']['train'])} classes",
        f"  files:  {len(outputs)} ({size / 1e6:.1f} MB)",
        f"  re-encoded: {len(manifest['reencoded'])}, left out: {len(manifest['skipped'])}",
        f"  checks: {_checks(manifest)}",
    ]
    for step, stats in manifest.get("steps", {}).items():
        lines.append(f"  {step}: " + ", ".join(f"{k}={v}" for k, v in stats.items()))
    lines.append(f"  manifest: {layout.uri(MANIFEST)}")
    if layout.exists(REPORT_KEY):
        lines.append(f"  report: {layout.uri(REPORT_KEY)}")
    return "\n".join(lines)


def _checks(manifest: dict) -> str:
    """What was checked while writing, in one line (the report's Checks section in short)."""
    outputs = manifest.get("outputs", {})
    summed = sum(1 for o in outputs.values() if o.get("crc32c"))
    checks = manifest.get("checks", {})
    crc = (
        "CRC-32C recorded"
        if summed == len(outputs) and outputs
        else f"CRC-32C for {summed}/{len(outputs)} files"
    )
    if checks.get("decode_check"):
        decode = f"decode check on ({checks.get('decode_failures', 0)} failed)"
    else:
        decode = "decode check off"
    return f"{crc}, {decode}; check a copy with: python -m airflow_resnet_prep.verify DIR_OR_URI [--decode]"
