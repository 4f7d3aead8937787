"""The publish step: write ``manifest.json`` last and report the outputs under the recipe's names."""

from __future__ import annotations

import logging
from typing import Any

from airflow_resnet_prep.fsutil import read_json
from airflow_resnet_prep.layout import DataDir
from airflow_resnet_prep.manifest import build_manifest, write_manifest
from airflow_resnet_prep.pipeline import fingerprints_of, output_paths

log = logging.getLogger(__name__)


def publish_outputs(
    params: dict[str, Any],
    *,
    fetched: dict[str, Any],
    relabelled: dict[str, Any],
    summary: dict[str, Any] | None,
) -> dict[str, Any]:
    """With a conversion ``summary``, write the manifest; without one (reused output), read it back.

    Returns the XCom outputs: ``data_path``, ``imagenet_path`` and ``tfrecords_path`` or
    ``preprocessed_path``, plus ``manifest`` and ``cached``.
    """
    layout = DataDir.of(params["data_dir"])
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
    else:
        manifest = read_json(layout.manifest) or {}
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
        layout.manifest,
    )
    return {**outputs, "manifest": str(layout.manifest), "cached": summary is None}
