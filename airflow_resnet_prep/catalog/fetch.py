"""The fetch step: make the sources readable (download a URL, use a local path or a bucket object in
place, or copy the object first with ``download_sources``), then catalog every image.

A rerun whose sources have the same fingerprints reuses the saved catalogs without rescanning (and the
working copies they read, :mod:`.inflated`, while those are whole).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from airflow_resnet_prep import config
from airflow_resnet_prep.catalog.build import build_split_catalog
from airflow_resnet_prep.catalog.copies import HUGGINGFACE, OFFICIAL
from airflow_resnet_prep.catalog.extract import extract_split, is_on_disk
from airflow_resnet_prep.catalog.inflated import WorkingCopies
from airflow_resnet_prep.catalog.model import SplitCatalog
from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.failpoints import failpoint
from airflow_resnet_prep.layout import FETCH_RECORD, INFLATED, DataDir, catalog_key
from airflow_resnet_prep.sources.credentials import HttpCredentials
from airflow_resnet_prep.sources.download import UrlGuard, resolve_source
from airflow_resnet_prep.storage import display_uri, is_object_uri
from airflow_resnet_prep.urls import mask_url

log = logging.getLogger(__name__)


@dataclass
class FetchResult:
    data_dir: str
    train_catalog: str
    val_catalog: str
    imagenet_path: str  # raw/train when extracted, else the train tar (or folder)
    fingerprints: dict[str, dict[str, Any]]
    counts: dict[str, int]
    layouts: dict[str, str] = field(default_factory=dict)  # which copy each source is (catalog/copies.py)
    reused: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_remote_data_dir(layout: DataDir, sources: list[str], download_sources: bool, extract: bool) -> None:
    """Refuse what an object-store data_dir cannot give every worker: a copy on this machine's disk."""
    where = f"data_dir {layout.url} is in object storage"
    if extract:
        raise PrepError(f"{where}: extract=true would unpack 1.28 M images to a local disk; turn extract off")
    if download_sources:
        raise PrepError(
            f"{where}: download_sources=true would copy the sources to this machine's disk, which other "
            "workers do not see; turn it off (sources in a bucket are read in place)"
        )
    for source in sources:
        if "://" in source and not is_object_uri(source) and not source.startswith("file://"):
            raise PrepError(
                f"{mask_url(display_uri(source))}: a URL is downloaded to a local disk, which the workers of an "
                f"object-store data_dir ({layout.url}) do not share; copy it into a bucket and give its "
                "s3:// or gs:// URI"
            )


def _copies_still_serve(record: dict[str, Any], copies: WorkingCopies, inflate: bool) -> bool:
    """Whether saved catalogs may be reused, as far as working copies go: the copies they read are still
    whole, and a compressed source is read the way ``inflate`` asks (from a working copy, or in place)."""
    used = record.get("inflated", [])
    compressed = HUGGINGFACE in record.get("layouts", {}).values()
    return (not compressed or bool(used) == inflate) and all(copies.finished(name) for name in used)


def fetch(
    data_dir: DataDir | str | os.PathLike[str],
    train_source: str,
    val_source: str,
    *,
    train_checksum: str | None = None,
    val_checksum: str | None = None,
    credentials: HttpCredentials | None = None,
    extract: bool = False,
    storage_conn_id: str | None = None,
    download_sources: bool = False,
    url_guards: Mapping[str, UrlGuard] | None = None,
    inflate: bool | None = None,
) -> FetchResult:
    """Resolve both sources, build (or reuse) their catalogs, optionally extract; see the module doc.

    Sources in a bucket (``s3://[conn_id@]bucket/key``, ``gs://...``) use the connection of their URI,
    else ``storage_conn_id``; they are read in place unless ``download_sources`` copies them to
    ``downloads/`` first. ``data_dir`` is a :class:`DataDir`, or text naming one. ``url_guards``
    (``{"train_source": guard, "val_source": guard}``) refuse a URL before it is requested, the source's
    and each redirect hop's (see :func:`resolve_source`). ``inflate``: whether compressed sources get a
    working copy (None: ``[resnet_prep] inflate_compressed_sources``)."""
    if inflate is None:
        inflate = config.get_bool("inflate_compressed_sources", load_airflow=False)
    layout = DataDir.at(data_dir, storage_conn_id).ensure()
    if layout.disk is None:
        check_remote_data_dir(layout, [train_source, val_source], download_sources, extract)
    started = time.monotonic()
    with layout.hold(wait_s=5):
        bucket = {"storage_conn_id": storage_conn_id or None, "download": bool(download_sources)}
        downloads = layout.local_downloads
        guards = url_guards or {}
        train = resolve_source(
            train_source,
            downloads,
            checksum=train_checksum,
            credentials=credentials,
            url_guard=guards.get("train_source"),
            **bucket,
        )
        val = resolve_source(
            val_source,
            downloads,
            checksum=val_checksum,
            credentials=credentials,
            url_guard=guards.get("val_source"),
            **bucket,
        )
        fingerprints = {"train": train.fingerprint, "val": val.fingerprint}
        # Where the catalogs read from: the same object read in place or from its downloaded copy has
        # one fingerprint (same output), but a catalog of the other is not reused.
        paths = {"train": str(train.path), "val": str(val.path)}
        t_download = time.monotonic() - started

        record = layout.read_json(FETCH_RECORD)
        copies = WorkingCopies(layout.store.child(INFLATED))
        reused = (
            record is not None
            and record.get("fingerprints") == fingerprints
            and record.get("paths", paths) == paths
            and all(layout.exists(catalog_key(s)) for s in ("train", "val"))
            and _copies_still_serve(record, copies, inflate)
        )
        if reused:
            log.info(
                "sources unchanged since %s: reusing the catalogs in %s",
                record.get("at"),
                layout.uri("catalog"),
            )
            counts = record["counts"]
            layouts = record.get("layouts", {})
        else:
            layout.delete(FETCH_RECORD)  # the catalogs below are about to change
            if inflate and copies.discard_partial():  # we hold the lock: no writer of them is alive
                log.info("%s: removed what a killed fetch left of its working copies", copies.store.url)
            catalogs: dict[str, SplitCatalog] = {}
            # An archive in a bucket is indexed by a chain of small requests (each header gives the next
            # one's offset): index the two splits at the same time, so the latencies overlap.
            with ThreadPoolExecutor(2, thread_name_prefix="index") as pool:
                pending = {
                    split: pool.submit(
                        build_split_catalog, split, f.path, inflated=copies if inflate else None
                    )
                    for split, f in (("train", train), ("val", val))
                }
            for split in ("train", "val"):
                catalogs[split] = pending[split].result()
                catalogs[split].save(layout.store, catalog_key(split))
                if split == "train":
                    failpoint("fetch-train-catalog")
                log.info(
                    "%s: %d images in %d classes", split, len(catalogs[split]), len(catalogs[split].synsets)
                )
            counts = {split: len(c) for split, c in catalogs.items()}
            layouts = {split: c.layout for split, c in catalogs.items()}
            layout.write_json(
                FETCH_RECORD,
                {
                    "fingerprints": fingerprints,
                    "paths": paths,
                    "counts": counts,
                    "layouts": layouts,
                    "inflated": copies.used,  # the working copies the catalogs read
                    "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                },
            )
            copies.remove_unused()
        t_catalog = time.monotonic() - started - t_download

        imagenet_path = display_uri(train.path)  # a bucket URI without its connection id
        if extract:
            for split in ("train", "val"):
                catalog = SplitCatalog.load(layout.store, catalog_key(split))
                if not is_on_disk(catalog):
                    extract_split(catalog, layout.raw(split))
                    if split == "train":
                        imagenet_path = str(layout.raw("train"))
    # A copy's layout goes into its fingerprint (so into the manifest and the report); the official
    # layout adds nothing, so data sets made before copies were read keep their cache keys.
    fingerprints = {
        split: {**fp, "layout": layouts[split]} if layouts.get(split, OFFICIAL) != OFFICIAL else fp
        for split, fp in fingerprints.items()
    }
    return FetchResult(
        data_dir=layout.url,
        train_catalog=layout.uri(catalog_key("train")),
        val_catalog=layout.uri(catalog_key("val")),
        imagenet_path=imagenet_path,
        fingerprints=fingerprints,
        counts=counts,
        layouts=layouts,
        reused=reused,
        timings={
            "download_s": round(t_download, 3),
            "catalog_s": round(t_catalog, 3),
            "total_s": round(time.monotonic() - started, 3),
        },
    )
