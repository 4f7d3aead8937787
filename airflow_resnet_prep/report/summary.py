"""``python -m airflow_resnet_prep.report DATA_DIR``: a short summary of a finished output, from its manifest."""

from __future__ import annotations

import sys
from pathlib import Path

from airflow_resnet_prep.fsutil import read_json


def summary(data_dir: str) -> str:
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
    return "\n".join(lines)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(summary(arg))
