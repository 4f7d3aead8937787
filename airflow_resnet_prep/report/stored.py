"""Find where the ``reference`` output stored the images the manifest lists as re-encoded.

A TFRecord shard has no index by name, and reading every shard to find 23 images (at full scale) would
read the whole 140 GB. The conversion plan (``work/reference/``) says which shard each image went to
and in what order, so the record's position is known without reading any shard: it is the number of
images before it in its unit's list that went to the same shard and were not left out. Each record
found is then checked against its own ``image/filename`` and ``image/class/synset``; anything that
does not match (a plan from another run, a format change) is dropped, and the page falls back to the
source image alone.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from airflow_resnet_prep.formats.tfexample import parse_example
from airflow_resnet_prep.report.samples import read_many
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
    if manifest.get("implementation") != "reference" or not wanted:
        return {}
    # Imported here: the report package stays light to import, and only this path needs the plan.
    from airflow_resnet_prep.converters.base import Plan

    try:
        plan = Plan.load(layout, "reference")
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
                found[key] = (f"tfrecords/{unit.outputs[item.output]}", written[item.output])
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
    read = read_many(layout.store, [(shard, sorted(wanted)) for shard, wanted in shards])
    for (shard, wanted), records in zip(shards, read, strict=True):
        if isinstance(records, Exception):  # a damaged shard: the source preview stays
            log.warning("report: cannot read %s: %s", shard, records)
            continue
        for position, key in wanted.items():
            try:
                features = parse_example(records[position])
            except Exception:
                continue
            synset = (features.get("image/class/synset") or [b""])[0]
            name = (features.get("image/filename") or [b""])[0]
            image = (features.get("image/encoded") or [b""])[0]
            if (synset, name) == (key[0].encode(), key[1].encode()) and isinstance(image, bytes):
                out[key] = (shard, position, make_thumb(image))
    return out
