"""``manifest.json``: written last, atomically; its presence means the output is complete (docs/formats.md, manifest.json).

It also makes reruns cheap: when the recorded implementation, params and source fingerprints equal
the current ones and every output file still has its recorded size, the output is reused as it is.
"""

from __future__ import annotations

import importlib.metadata
import time
from typing import Any

from airflow_resnet_prep import __version__
from airflow_resnet_prep.catalog.model import SplitCatalog
from airflow_resnet_prep.layout import MANIFEST, DataDir, catalog_key

MANIFEST_VERSION = 1
# Params that change what is written; the rest (workers, force, ...) change only how.
OUTPUT_PARAMS = {
    "reference": ("train_shards", "val_shards", "shuffle_seed", "on_bad_image", "dali_index", "decode_check"),
    "nvidia": ("resize", "quality", "on_bad_image", "mxnet_version", "decode_check"),
}
OUTPUT_PARAMS["webdataset"] = OUTPUT_PARAMS["reference"]  # the same plan, other bytes
# Recorded only when on, so that an output written before the check existed (or with it off) is
# still reused as it is; turning it on converts again (images may be left out).
_ONLY_WHEN_ON = ("decode_check",)
# What the decode check writes as a left-out image's reason (formats/tfdecode.py): how the manifest
# and the report tell decode failures from other bad images.
DECODE_FAILURE = "TensorFlow cannot decode it"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def output_params(implementation: str, params: dict[str, Any]) -> dict[str, Any]:
    return {
        k: params[k]
        for k in OUTPUT_PARAMS[implementation]
        if k in params and (k not in _ONLY_WHEN_ON or params[k])
    }


def checks_of(params: dict[str, Any], outputs: dict[str, dict[str, Any]], skipped: list[dict]) -> dict:
    """What was checked while writing (docs/formats.md, Checks), for the report and for ``verify``: whether every
    output file has a CRC-32C, whether each image was decoded with TensorFlow before it was written,
    and how many images that decoding refused (listed, with reasons, under ``skipped``)."""
    return {
        "crc32c": bool(outputs) and all("crc32c" in stats for stats in outputs.values()),
        "decode_check": bool(params.get("decode_check")),
        "decode_failures": sum(1 for s in skipped if str(s.get("reason", "")).startswith(DECODE_FAILURE)),
    }


def build_manifest(
    layout: DataDir,
    *,
    implementation: str,
    params: dict[str, Any],
    fingerprints: dict[str, Any],
    conversion: dict[str, Any],
    steps: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """Everything a user (or a rerun) needs to know about this output. ``params`` must hold no secret."""
    classes = {
        split: SplitCatalog.load(layout.store, catalog_key(split)).class_counts()
        for split in ("train", "val")
    }
    return {
        "manifest_version": MANIFEST_VERSION,
        "implementation": implementation,
        "params": output_params(implementation, params),
        "sources": fingerprints,
        "images": {split: sum(counts.values()) for split, counts in classes.items()},
        "classes": classes,
        "outputs": conversion["outputs"],
        "reencoded": conversion["reencoded"],
        "skipped": conversion["skipped"],
        "checks": checks_of(params, conversion["outputs"], conversion["skipped"]),
        "conversion": {k: conversion[k] for k in ("plan_id", "units", "splits") if k in conversion},
        "steps": steps,
        "versions": {
            "airflow-resnet-prep": __version__,
            "tensorflow": _version("tensorflow-cpu") or _version("tensorflow"),
            "pillow": _version("pillow"),
            "apache-airflow": _version("apache-airflow"),
        },
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_manifest(layout: DataDir, manifest: dict[str, Any]) -> str:
    """Write the manifest (one atomic PUT or rename); its path or URI."""
    layout.write_json(MANIFEST, manifest)
    return layout.uri(MANIFEST)


def cached_manifest(
    layout: DataDir, implementation: str, params: dict[str, Any], fingerprints: dict[str, Any]
) -> dict[str, Any] | None:
    """The manifest when it describes exactly this output and every file is still there, else None."""
    manifest = layout.read_json(MANIFEST)
    if manifest is None or manifest.get("manifest_version") != MANIFEST_VERSION:
        return None
    if manifest.get("implementation") != implementation:
        return None
    if (
        manifest.get("params") != output_params(implementation, params)
        or manifest.get("sources") != fingerprints
    ):
        return None
    outputs = manifest.get("outputs", {})
    folders = {name.rpartition("/")[0] for name in outputs}
    present = {o.key: o.size for folder in folders for o in layout.store.list(folder)}
    for name, stats in outputs.items():
        if present.get(name) != stats["size"]:
            return None
    return manifest
