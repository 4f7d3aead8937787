"""The whole job as plain function calls (a library): :func:`run` does fetch -> relabel -> convert ->
manifest in one process, with the same caching as the DAG; the operators, ``publish`` and the factory
share its helpers. The command line is :mod:`airflow_resnet_prep.cli` (``python -m airflow_resnet_prep``;
``python -m airflow_resnet_prep.pipeline`` still runs it).
"""

from __future__ import annotations

import time
from typing import Any

from airflow_resnet_prep.catalog.fetch import fetch
from airflow_resnet_prep.catalog.relabel import relabel
from airflow_resnet_prep.converters import local
from airflow_resnet_prep.converters.base import Converter
from airflow_resnet_prep.failpoints import failpoint
from airflow_resnet_prep.layout import MANIFEST, RECORDIO, TFRECORDS, WEBDATASET, DataDir
from airflow_resnet_prep.manifest import build_manifest, cached_manifest, reuse_note, write_manifest
from airflow_resnet_prep.params import IMPLEMENTATIONS, resolved
from airflow_resnet_prep.sources.credentials import HttpCredentials


def make_converter(implementation: str, params: dict[str, Any]) -> Converter:
    """The converter of ``implementation`` configured from the pipeline's params."""
    if implementation == "reference":
        from airflow_resnet_prep.converters.tfrecord import TFRecordConverter, params_from

        return TFRecordConverter(**params_from(params))
    if implementation == "nvidia":
        from airflow_resnet_prep.converters.recordio import RecordIOConverter, params_from

        return RecordIOConverter(**params_from(params))
    if implementation == "webdataset":
        from airflow_resnet_prep.converters.webdataset import WebDatasetConverter, params_from

        return WebDatasetConverter(**params_from(params))
    raise ValueError(f"implementation must be one of {', '.join(IMPLEMENTATIONS)}, got {implementation!r}")


def output_paths(data_dir: DataDir, implementation: str, imagenet_path: str) -> dict[str, str]:
    """The XCom outputs, named after the recipe's ``CM_MLPERF_TRAINING_*`` outputs."""
    paths = {"data_path": data_dir.url, "imagenet_path": imagenet_path}
    if implementation == "reference":
        paths["tfrecords_path"] = data_dir.uri(TFRECORDS)
    elif implementation == "webdataset":
        paths["webdataset_path"] = data_dir.uri(WEBDATASET)
    else:
        paths["preprocessed_path"] = data_dir.uri(RECORDIO)
    return paths


def fingerprints_of(fetched: dict[str, Any], relabelled: dict[str, Any]) -> dict[str, Any]:
    return {**fetched["fingerprints"], "labels": relabelled.get("labels_fingerprint")}


def run(values: dict[str, Any], *, credentials: HttpCredentials | None = None) -> dict[str, Any]:
    """Run the whole pipeline; return the output paths plus ``cached`` and ``manifest`` (and, for a reused
    output, ``reused``: why, and which params differ without changing a byte).

    ``values`` are params (built-in defaults for the rest); ``credentials`` authenticate downloads (the
    DAG's ``http_conn_id``, resolved by the caller)."""
    p = resolved(values)
    data_dir = DataDir.of(p["data_dir"], p["storage_conn_id"] or None)
    steps: dict[str, dict[str, float]] = {}
    t0 = time.monotonic()
    fetched = fetch(
        p["data_dir"],
        p["train_source"],
        p["val_source"],
        train_checksum=p["train_checksum"] or None,
        val_checksum=p["val_checksum"] or None,
        credentials=credentials,
        extract=p["extract"],
        storage_conn_id=p["storage_conn_id"] or None,
        download_sources=p["download_sources"],
    ).to_dict()
    steps["fetch"] = {"seconds": round(time.monotonic() - t0, 3)}
    t1 = time.monotonic()
    relabelled = relabel(
        p["data_dir"],
        p["labels_source"],
        credentials=credentials,
        extract=p["extract"],
        storage_conn_id=p["storage_conn_id"] or None,
        download_sources=p["download_sources"],
    ).to_dict()
    steps["relabel"] = {"seconds": round(time.monotonic() - t1, 3)}
    fingerprints = fingerprints_of(fetched, relabelled)
    paths = output_paths(data_dir, p["implementation"], fetched["imagenet_path"])
    if not p["force"]:
        manifest = cached_manifest(data_dir, p["implementation"], p, fingerprints)
        if manifest is not None:
            note = reuse_note(p["implementation"], manifest.get("params") or {}, p)
            return {**paths, "cached": True, "manifest": data_dir.uri(MANIFEST), "reused": note}
    converter = make_converter(p["implementation"], p)
    t2 = time.monotonic()
    summary = local.convert(converter, data_dir, workers=p["workers"], force=p["force"])
    seconds = time.monotonic() - t2
    images = sum(s["records"] for s in summary["splits"].values())
    steps["convert"] = {
        "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 1) if seconds else 0,
    }
    manifest = build_manifest(
        data_dir,
        implementation=p["implementation"],
        params=p,
        fingerprints=fingerprints,
        conversion=summary,
        steps=steps,
    )
    failpoint("before-manifest")
    return {**paths, "cached": False, "manifest": write_manifest(data_dir, manifest)}


if __name__ == "__main__":  # the command of 0.2.0, kept working
    from airflow_resnet_prep.cli import main

    raise SystemExit(main(prog="python -m airflow_resnet_prep.pipeline"))
