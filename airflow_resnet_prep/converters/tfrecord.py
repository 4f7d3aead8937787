"""``reference``: TFRecord shards as the MLPerf reference TensorFlow ResNet reads them (docs/formats.md, TFRecords).

Differences from upstream ``imagenet_to_gcs.py``, on purpose:
- JPEGs in RGB or grayscale are stored byte for byte; their size comes from the header. Only images
  that are not JPEG, or are CMYK/YCCK JPEGs, are decoded and re-encoded (RGB, quality 100), found by
  content rather than a list of names, and each is listed in the manifest with the reason.
- Shards are written flat in ``tfrecords/`` (``train-%05d-of-%05d``, ``validation-%05d-of-%05d``),
  which is where the reference trainer looks for them.
- Train order is Python's ``random.Random(shuffle_seed).shuffle`` of the catalog order (class, then
  file name), so shards mix classes and reruns are identical; validation is sorted by file name.
- A split with fewer images than shards is an error instead of empty shards.
- Records are framed by the package (``formats/tfrecord.py``, byte-identical to ``tf.io.TFRecordWriter``),
  so writing shards needs no TensorFlow: workers skip its import (seconds, hundreds of MB each) and the
  same framing writes to object storage, for which TensorFlow 2.21 has no file system.
"""

from __future__ import annotations

import contextlib
import random
import re
from collections.abc import Iterator
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any, ClassVar

from airflow_resnet_prep.catalog.model import ImageReader, SplitCatalog
from airflow_resnet_prep.converters.base import (
    Converter,
    Plan,
    Unit,
    UnitResult,
    UnitSpec,
    WorkItem,
    bad_image,
    check_on_bad_image,
    read_or_report,
    record_source_reads,
    work_items,
)
from airflow_resnet_prep.converters.decodecheck import decode_check_param, make_decoder, prepare_decoder
from airflow_resnet_prep.errors import BadImageError, PrepError
from airflow_resnet_prep.failpoints import failpoint
from airflow_resnet_prep.formats.crc32c import crc32c
from airflow_resnet_prep.formats.jpeg import probe, to_rgb_jpeg
from airflow_resnet_prep.formats.tfexample import example_parts
from airflow_resnet_prep.formats.tfrecord import OVERHEAD as TFRECORD_OVERHEAD
from airflow_resnet_prep.formats.tfrecord import TFRecordWriter
from airflow_resnet_prep.layout import TFRECORDS, DataDir
from airflow_resnet_prep.params import PARAMS

if TYPE_CHECKING:
    from airflow_resnet_prep.formats.tfdecode import JpegDecoder

SHARD_PREFIX = {"train": "train", "val": "validation"}
_SYNSET, _NAME = itemgetter(0), itemgetter(1)  # of an ImageRef
# %05d prints more digits past 99,999 shards.
_OUTPUT_NAME = re.compile(r"(train|validation)-\d{5,}-of-\d{5,}(\.idx)?")
# Units hold whole shards; a unit of about this many images keeps the number of units (and of Airflow
# mapped tasks' bookkeeping) moderate without making a retry expensive.
UNIT_IMAGES = 1000
# ... but a split gets at least this many units (or one per shard, if fewer), so a small set still
# spreads over the workers (the plan must not depend on the machine, so this is a constant).
MIN_UNITS = 16
REENCODE_QUALITY = 100
#: A shard's images as stored: the item, where it was read (for messages), and (JPEG bytes, height, width).
StoredImages = Iterator[tuple[WorkItem, str, tuple[bytes, int, int]]]


def refuse_empty(data_dir: DataDir, key: str, records: list) -> None:
    """Refuse a shard every image of which was left out (inside its writer, so nothing is committed)."""
    if not records:
        raise PrepError(
            f"{data_dir.uri(key)}: every image of this shard was left out; refusing an empty shard"
        )


def shard_name(split: str, shard: int, shards: int) -> str:
    return f"{SHARD_PREFIX[split]}-{shard:05d}-of-{shards:05d}"


class TFRecordConverter(Converter):
    """Write TFRecord shards. Params: ``train_shards``, ``val_shards``, ``shuffle_seed``,
    ``on_bad_image`` ("fail" | "skip"), ``dali_index`` (write ``<shard>.idx`` for NVIDIA DALI),
    ``decode_check`` (decode every image with TensorFlow before writing it; see :mod:`.decodecheck`)."""

    implementation: ClassVar[str] = "reference"
    output_key: ClassVar[str] = TFRECORDS
    first_label: ClassVar[int] = 1  # imagenet_to_gcs.py counts classes from 1

    def __init__(
        self,
        train_shards: int = PARAMS["train_shards"].default,
        val_shards: int = PARAMS["val_shards"].default,
        shuffle_seed: int = PARAMS["shuffle_seed"].default,
        on_bad_image: str = PARAMS["on_bad_image"].default,
        dali_index: bool = PARAMS["dali_index"].default,
        decode_check: bool = PARAMS["decode_check"].default,
    ) -> None:
        for name, value in (("train_shards", train_shards), ("val_shards", val_shards)):
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        super().__init__(
            {
                "train_shards": int(train_shards),
                "val_shards": int(val_shards),
                "shuffle_seed": int(shuffle_seed),
                "on_bad_image": check_on_bad_image(on_bad_image),
                "dali_index": bool(dali_index),
                **decode_check_param(decode_check),
            }
        )

    def is_output_name(self, name: str) -> bool:
        return _OUTPUT_NAME.fullmatch(name) is not None

    @staticmethod
    def shard_name(split: str, shard: int, shards: int) -> str:
        return shard_name(split, shard, shards)

    def prepare_process(self) -> None:
        prepare_decoder(self.params)

    def plan_split(self, split: str, catalog: SplitCatalog, classes: list[str]) -> list[UnitSpec]:
        shards = self.params["train_shards" if split == "train" else "val_shards"]
        refs = list(catalog.images)  # catalog order: class, then name
        if split == "train":
            random.Random(self.params["shuffle_seed"]).shuffle(refs)
        else:
            refs.sort(key=_NAME)
        if len(refs) < shards:
            raise PrepError(
                f"{split}: {len(refs):,} images cannot fill {shards:,} shards without empty ones; "
                f"lower {'train_shards' if split == 'train' else 'val_shards'}"
            )
        label_of = {synset: i + self.first_label for i, synset in enumerate(classes)}
        labels = list(map(label_of.__getitem__, map(_SYNSET, refs)))
        bounds = [len(refs) * i // shards for i in range(shards + 1)]
        per_unit = max(1, min(round(UNIT_IMAGES / (len(refs) / shards)), shards // MIN_UNITS))
        units = []
        for first in range(0, shards, per_unit):
            last = min(first + per_unit, shards)
            items: list[WorkItem] = []
            for shard in range(first, last):
                start, end = bounds[shard], bounds[shard + 1]
                items += work_items(
                    refs[start:end], labels[start:end], range(start, end), repeat(shard - first)
                )
            outputs = [self.shard_name(split, s, shards) for s in range(first, last)]
            units.append(UnitSpec(split, outputs, items))
        return units

    def write_unit(self, plan: Plan, unit: Unit, items: list[WorkItem]) -> UnitResult:
        """Write the unit's shards one after another; :meth:`write_shard` puts the format's bytes."""
        data_dir = plan.data_dir
        result = UnitResult(unit=unit.id, split=unit.split)
        on_bad = self.params["on_bad_image"]
        half = max(1, len(items) // 2)  # where the kill-and-resume tests crash a unit
        by_output: dict[int, list[WorkItem]] = {}
        for item in items:
            by_output.setdefault(item.output, []).append(item)
        for name in unit.outputs:
            # What a killed run of this unit left (the caller holds the unit's lock: no live writer).
            data_dir.discard_partial(f"{self.output_key}/{name}")
        sources = plan.split_sources(unit.split)
        decoder = make_decoder(self.params)

        def stored(shard_items: list[WorkItem], reads: Iterator[tuple[Any, bytes]]) -> StoredImages:
            """The shard's images as they are stored, those left out skipped."""
            for item in shard_items:
                _, data = next(reads)
                image = self.stored_image(data, sources, item, on_bad, result, decoder)
                if image is None:
                    continue
                yield item, sources[item.src].describe(item.ref), image
                result.bytes_in += item.size
                result.records += 1
                if result.records == half:
                    failpoint("unit-half")

        # Every image of the unit in the order written, read ahead (from a bucket: close ones coalesced
        # into large requests, several in flight; from a local disk: one pread each, as it is consumed).
        ordered = [item for index in range(len(unit.outputs)) for item in by_output.get(index, [])]
        with ImageReader(sources) as reader, contextlib.closing(reader.iter_read(ordered)) as reads:
            for index, name in enumerate(unit.outputs):
                self.write_shard(data_dir, name, stored(by_output.get(index, []), reads), result)
            record_source_reads(reader, result)
        return result

    def write_shard(self, data_dir: DataDir, name: str, images: StoredImages, result: UnitResult) -> None:
        """One TFRecord shard (and its DALI index) from ``images``; listed in ``result``."""
        key = f"{self.output_key}/{name}"
        sizes: list[int] = []
        with data_dir.store.writer(key) as fh:
            writer = TFRecordWriter(fh)  # sums the shard's CRC-32C as it writes
            for item, _, (data, height, width) in images:
                record = example_parts(
                    encoded=data,
                    filename=item.name,
                    label=item.label,
                    synset=item.synset,
                    height=height,
                    width=width,
                )
                sizes.append(writer.write_parts(record) - TFRECORD_OVERHEAD)
            refuse_empty(data_dir, key, sizes)
        result.add_output(name, sum(sizes) + TFRECORD_OVERHEAD * len(sizes), len(sizes), writer.crc)
        if self.params["dali_index"]:
            lines, offset = [], 0
            for size in sizes:
                lines.append(f"{offset} {size + TFRECORD_OVERHEAD}\n")
                offset += size + TFRECORD_OVERHEAD
            raw = "".join(lines).encode()
            data_dir.store.write_bytes(f"{key}.idx", raw)
            result.add_output(f"{name}.idx", len(raw), len(sizes), crc32c(raw))

    @staticmethod
    def stored_image(
        data: bytes,
        sources: list,
        item: WorkItem,
        on_bad: str,
        result: UnitResult,
        decoder: JpegDecoder | None = None,
    ) -> tuple[bytes, int, int] | None:
        """The JPEG to store for ``item`` (its bytes unchanged, or re-encoded and listed) with its height
        and width; None when it is left out (``on_bad_image=skip``)."""
        where = sources[item.src].describe(item.ref)
        data = read_or_report(None, item, where, on_bad, result, data)
        if data is None:
            return None
        try:
            info = probe(data, where)
            width, height = info.width, info.height
            if info.reencode_reason is not None:
                data, width, height = to_rgb_jpeg(data, where, quality=REENCODE_QUALITY)
                result.reencoded.append(
                    {"name": item.name, "synset": item.synset, "reason": info.reencode_reason}
                )
            if decoder is not None:
                decoder.check(data, where)
        except BadImageError as exc:
            return bad_image(exc, item, on_bad, result)
        return data, height, width

    def finish(self, plan: Plan, results: list[UnitResult]) -> dict[str, dict[str, int]]:
        outputs: dict[str, dict[str, int]] = {}
        failpoint("finish")
        present = {o.key: o.size for o in plan.data_dir.store.list(self.output_key)}
        for r in sorted(results, key=lambda r: r.unit):
            for name, stats in r.outputs.items():
                key = f"{self.output_key}/{name}"
                if present.get(key) != stats["size"]:
                    raise PrepError(
                        f"{plan.data_dir.uri(key)}: missing or changed since its unit finished; rerun with force=true"
                    )
                outputs[key] = stats
        return outputs


def params_from(values: dict[str, Any]) -> dict[str, Any]:
    """Pick this converter's params out of the DAG's params."""
    keys = ("train_shards", "val_shards", "shuffle_seed", "on_bad_image", "dali_index", "decode_check")
    return {k: values[k] for k in keys if k in values}
