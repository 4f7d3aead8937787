"""The fetch step: make the sources readable (download a URL, use a local path or a bucket object in
place, or copy the object first with ``download_sources``), then catalog every image.

A rerun whose sources have the same fingerprints reuses the saved catalogs without rescanning.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_resnet_prep.catalog.build import build_split_catalog
from airflow_resnet_prep.catalog.extract import extract_split
from airflow_resnet_prep.catalog.model import DIR, SplitCatalog
from airflow_resnet_prep.failpoints import failpoint
from airflow_resnet_prep.fsutil import atomic_write_json, exclusive_lock, read_json
from airflow_resnet_prep.layout import DataDir
from airflow_resnet_prep.sources.bucket import display_uri, is_bucket_uri
from airflow_resnet_prep.sources.download import resolve_source

log = logging.getLogger(__name__)


@dataclass
class FetchResult:
    data_dir: str
    train_catalog: str
    val_catalog: str
    imagenet_path: str  # raw/train when extracted, else the train tar (or folder)
    fingerprints: dict[str, dict[str, Any]]
    counts: dict[str, int]
    reused: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fetch(
    data_dir: str | os.PathLike[str],
    train_source: str,
    val_source: str,
    *,
    train_checksum: str | None = None,
    val_checksum: str | None = None,
    auth: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
    extract: bool = False,
    storage_conn_id: str | None = None,
    download_sources: bool = False,
) -> FetchResult:
    """Resolve both sources, build (or reuse) their catalogs, optionally extract; see the module doc.

    Sources in a bucket (``s3://[conn_id@]bucket/key``, ``gs://...``) use the connection of their URI,
    else ``storage_conn_id``; they are read in place unless ``download_sources`` copies them to
    ``downloads/`` first."""
    layout = DataDir.of(data_dir).ensure()
    started = time.monotonic()
    with exclusive_lock(layout.lock, wait_s=5):
        bucket = {"storage_conn_id": storage_conn_id or None, "download": bool(download_sources)}
        train = resolve_source(
            train_source, layout.downloads, checksum=train_checksum, auth=auth, headers=headers, **bucket
        )
        val = resolve_source(
            val_source, layout.downloads, checksum=val_checksum, auth=auth, headers=headers, **bucket
        )
        fingerprints = {"train": train.fingerprint, "val": val.fingerprint}
        # Where the catalogs read from: the same object read in place or from its downloaded copy has
        # one fingerprint (same output), but a catalog of the other is not reused.
        paths = {"train": str(train.path), "val": str(val.path)}
        t_download = time.monotonic() - started

        record = read_json(layout.fetch_record)
        reused = (
            record is not None
            and record.get("fingerprints") == fingerprints
            and record.get("paths", paths) == paths
            and all(layout.catalog_file(s).exists() for s in ("train", "val"))
        )
        if reused:
            log.info(
                "sources unchanged since %s: reusing the catalogs in %s", record.get("at"), layout.catalog
            )
            counts = record["counts"]
        else:
            layout.fetch_record.unlink(missing_ok=True)  # the catalogs below are about to change
            catalogs: dict[str, SplitCatalog] = {}
            # An archive in a bucket is indexed by a chain of small requests (each header gives the next
            # one's offset): index the two splits at the same time, so the latencies overlap. A local
            # archive is indexed at disk speed, one after the other.
            remote = [f.path for f in (train, val) if is_bucket_uri(f.path)]
            pending = {}
            if remote:
                pool = ThreadPoolExecutor(2, thread_name_prefix="index")
                pending = {
                    split: pool.submit(build_split_catalog, split, f.path)
                    for split, f in (("train", train), ("val", val))
                }
                pool.shutdown(wait=False)
            for split, fetched in (("train", train), ("val", val)):
                if split in pending:
                    catalogs[split] = pending[split].result()
                else:
                    catalogs[split] = build_split_catalog(split, fetched.path)
                catalogs[split].save(layout.catalog_file(split))
                if split == "train":
                    failpoint("fetch-train-catalog")
                log.info(
                    "%s: %d images in %d classes", split, len(catalogs[split]), len(catalogs[split].synsets)
                )
            counts = {split: len(c) for split, c in catalogs.items()}
            atomic_write_json(
                layout.fetch_record,
                {
                    "fingerprints": fingerprints,
                    "paths": paths,
                    "counts": counts,
                    "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
            )
        t_catalog = time.monotonic() - started - t_download

        imagenet_path = display_uri(train.path)  # a bucket URI without its connection id
        if extract:
            # A local folder is the extracted layout already; tars, and folders in a bucket, are copied.
            train_catalog = SplitCatalog.load(layout.catalog_file("train"))
            if train_catalog.sources[0].kind != DIR or is_bucket_uri(train_catalog.sources[0].path):
                extract_split(train_catalog, layout.raw("train"))
                imagenet_path = str(layout.raw("train"))
            val_catalog = SplitCatalog.load(layout.catalog_file("val"))
            if val_catalog.sources[0].kind != DIR or is_bucket_uri(val_catalog.sources[0].path):
                extract_split(val_catalog, layout.raw("val"))
    return FetchResult(
        data_dir=str(layout.root),
        train_catalog=str(layout.catalog_file("train")),
        val_catalog=str(layout.catalog_file("val")),
        imagenet_path=imagenet_path,
        fingerprints=fingerprints,
        counts=counts,
        reused=reused,
        timings={
            "download_s": round(t_download, 3),
            "catalog_s": round(t_catalog, 3),
            "total_s": round(time.monotonic() - started, 3),
        },
    )
