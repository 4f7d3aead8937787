"""``manifest.json``: written last, atomically; its presence means the output is complete (docs/formats.md, manifest.json).

It also makes reruns cheap: when the recorded implementation, source fingerprints and cache key equal
the current ones and every output file still has its recorded size, the output is reused as it is. The
cache key (:func:`cache_key`) holds exactly the params that change the output's bytes, as
``params.PARAMS`` declares them (``shapes``/``shapes_if``); a rerun that differs only in other params
reuses the output and says which differences did not matter (:func:`reuse_note`).
"""

from __future__ import annotations

import importlib.metadata
import logging
import time
from collections.abc import Mapping
from typing import Any

from airflow_resnet_prep import __version__
from airflow_resnet_prep.catalog.model import SplitCatalog
from airflow_resnet_prep.layout import MANIFEST, DataDir, catalog_key
from airflow_resnet_prep.params import PARAMS, defaults, recorded, shaping

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1
# What the decode check writes as a left-out image's reason (formats/tfdecode.py): how the manifest
# and the report tell decode failures from other bad images.
DECODE_FAILURE = "TensorFlow cannot decode it"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _with_defaults(params: Mapping[str, Any]) -> dict[str, Any]:
    return {**defaults(), **{k: v for k, v in params.items() if v is not None}}


def output_params(implementation: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """What a manifest of ``implementation`` records under ``params``: the params that may shape its
    bytes, and informative ones (``mxnet_version``); never a credential, never a location."""
    full = _with_defaults(params)
    return {k: full[k] for k in recorded(implementation)}


def cache_key(implementation: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The params whose values change ``implementation``'s output bytes, given ``params`` (missing ones
    take their defaults): each param declared with ``shapes`` for it whose ``shapes_if`` holds."""
    full = _with_defaults(params)
    return {
        name: full[name]
        for name in shaping(implementation)
        if PARAMS[name].shapes_if is None or PARAMS[name].shapes_if(full)
    }


def reuse_note(implementation: str, recorded_params: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """One line for the log and the report: why an output is reused, and which recorded params differ
    from this run's without changing a byte (e.g. ``quality`` with ``resize=0``)."""
    key = cache_key(implementation, params)
    before, now = _with_defaults(recorded_params), _with_defaults(params)
    ignored = [
        f"{name}={now[name]!r} (written with {before[name]!r})"
        for name in recorded(implementation)
        if name not in key and before.get(name) != now.get(name)
    ]
    text = "same sources and " + (
        ", ".join(f"{k}={v!r}" for k, v in key.items()) if key else "no param that shapes the output"
    )
    if ignored:
        text += "; these differ but change no byte here: " + ", ".join(ignored)
    return text


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
        split: SplitCatalog.load_class_counts(layout.store, catalog_key(split)) for split in ("train", "val")
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
    """The manifest when it describes this output (same sources and cache key) and every file is still
    there, else None. Reuse is logged with :func:`reuse_note`."""
    manifest = layout.read_json(MANIFEST)
    if manifest is None or manifest.get("manifest_version") != MANIFEST_VERSION:
        return None
    if manifest.get("implementation") != implementation:
        return None
    written_with = manifest.get("params") or {}
    if (
        cache_key(implementation, written_with) != cache_key(implementation, params)
        or manifest.get("sources") != fingerprints
    ):
        return None
    outputs = manifest.get("outputs", {})
    folders = {name.rpartition("/")[0] for name in outputs}
    present = {o.key: o.size for folder in folders for o in layout.store.list(folder)}
    for name, stats in outputs.items():
        if present.get(name) != stats["size"]:
            return None
    log.info(
        "reusing the %s output in %s: %s",
        implementation,
        layout.url,
        reuse_note(implementation, written_with, params),
    )
    return manifest
