"""Find where the ``reference`` (or ``webdataset``) output stored the images the manifest lists as re-encoded.

A TFRecord shard has no index by name, and reading every shard to find 23 images (at full scale) would
read the whole 140 GB. The conversion plan (``work/reference/``) says which shard each image went to
and in what order, so the record's position is known without reading any shard: it is the number of
images before it in its unit's list that went to the same shard and were not left out. Each record
found is then checked against its own ``image/filename`` and ``image/class/synset``; anything that
does not match (a plan from another run, a format change) is dropped, and the page falls back to the
source image alone.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from airflow_resnet_prep.formats.tfexample import parse_example
from airflow_resnet_prep.report.samples import read_many, tar_samples_at
from airflow_resnet_prep.report.thumbs import Thumb, make_thumb

if TYPE_CHECKING:
    from airflow_resnet_prep.layout import DataDir

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (synset, file name)


def locate(layout: DataDir, manifest: dict[str, Any], wanted: set[Key]) -> dict[Key, tuple[str, int]]:
    """``(synset, name) -> (shard key in the data_dir, position)`` for the ``wanted`` images found in the
    plan (read through the data_dir's store).

    Empty for ``nvidia`` (it stores images as they are), without a plan, or with a plan that is not the
    one the manifest describes.
    """
    implementation = manifest.get("implementation")
    folder = {"reference": "tfrecords", "webdataset": "webdataset"}.get(str(implementation))
    if folder is None or not wanted:
        return {}
    # Imported here: the report package stays light to import, and only this path needs the plan.
    from airflow_resnet_prep.converters.base import Plan

    try:
        plan = Plan.load(layout, str(implementation))
    except Exception as exc:  # no plan (cleaned up) or an unreadable one: the source preview stays
        log.info("report: no conversion plan to find re-encoded images in the shards (%s)", exc)
        return {}
    if plan.plan_id != manifest.get("conversion", {}).get("plan_id"):
        return {}
    skipped = {(str(s.get("synset")), str(s.get("name"))) for s in manifest.get("skipped", [])}
    found: dict[Key, tuple[str, int]] = {}
    for unit in plan.units:
        written: dict[int, int] = defaultdict(int)  # output index -> records written before this item
        for item in plan.load_items(unit.id):
            key = (item.synset, item.name)
            if key in skipped:
                continue
            if key in wanted:
                found[key] = (f"{folder}/{unit.outputs[item.output]}", written[item.output])
            written[item.output] += 1
        if len(found) == len(wanted):
            break
    return found


def stored_thumbs(layout: DataDir, where: dict[Key, tuple[str, int]]) -> dict[Key, tuple[str, int, Thumb]]:
    """The stored image of each located record, as ``(shard, position, thumbnail)``; records whose
    name or class differ from what the plan said are left out."""
    by_shard: dict[str, dict[int, Key]] = defaultdict(dict)
    for key, (shard, position) in where.items():
        by_shard[shard][position] = key
    out: dict[Key, tuple[str, int, Thumb]] = {}
    shards = sorted(by_shard.items())
    tars = any(shard.endswith(".tar") for shard in by_shard)
    jobs = [(shard, sorted(wanted)) for shard, wanted in shards]
    read = read_many(layout.store, jobs, tar_samples_at) if tars else read_many(layout.store, jobs)
    for (shard, wanted), records in zip(shards, read, strict=True):
        if isinstance(records, Exception):  # a damaged shard: the source preview stays
            log.warning("report: cannot read %s: %s", shard, records)
            continue
        for position, key in wanted.items():
            try:
                synset, name, image = _stored(records[position], tars)
            except Exception:
                continue
            if (synset, name) == (key[0].encode(), key[1].encode()) and isinstance(image, bytes):
                out[key] = (shard, position, make_thumb(image))
    return out


def _stored(record: Any, tar: bool) -> tuple[bytes, bytes, bytes]:
    """(synset, file name, image) a record says: a tf.train.Example, or a WebDataset sample's members."""
    if tar:
        meta = json.loads(record["json"])
        return str(meta["wnid"]).encode(), str(meta["filename"]).encode(), record["jpg"]
    features = parse_example(record)
    return tuple(
        (features.get(k) or [b""])[0] for k in ("image/class/synset", "image/filename", "image/encoded")
    )
