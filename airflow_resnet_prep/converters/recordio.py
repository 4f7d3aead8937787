"""``nvidia``: MXNet RecordIO as ``im2rec.py --list --recursive`` then ``--pass-through`` write it (docs/formats.md, RecordIO).

Listing: synset folders in sorted order, files sorted within each; ``index`` counts in that walk
from 0; ``label`` is the 0-based index of the folder among the split's folders holding images; then
the list is shuffled as im2rec does by default (``random.seed(100)``, ``random.shuffle``). Each
``.lst`` line becomes one record: ``<IfQQ`` header (0, label, index, 0) + the image's bytes.

Design of the parallel write (one ``train.rec`` is what NVIDIA's readers want): a record's size
depends on its content (escaped magic words), so offsets are only known once payloads are scanned.
Units take contiguous runs of the shuffled list; each writes its run as piece N of the split's
*assembly* (:class:`~airflow_resnet_prep.storage.Assembly`: on a local disk a part file joined by
``os.copy_file_range``; on S3 one part of a multipart upload; on GCS an object composed at the end)
plus the part-relative offsets; ``finish`` completes the assembly and writes ``.idx`` from the
offsets. This reads every source byte once and needs no pre-scan; on a bucket no byte is copied
twice. When one machine runs the whole conversion on a local data_dir (``local.convert``: the
operator's ``step="all"``, the CLI, the benchmark), :mod:`.recordio_direct` writes each ``.rec`` in
place instead, with no parts and no join. Both frame with the one loop of :mod:`.recordio_frame` and
build a unit's done record from its runs the same way. Finish is idempotent, and a rerun that finds a final
``.rec`` lost or cut short converts that split's units again (their done records would otherwise hide
the loss).

Because im2rec numbers only the class folders that hold images, separately per split, the plan
refuses a class folder without images and a validation split that lacks a training class: either
would silently give labels that mean something else.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import logging
import operator
import os
import random
import time
from typing import Any, ClassVar

from airflow_resnet_prep.catalog.model import DIR, ImageReader, ImageRef, SplitCatalog
from airflow_resnet_prep.converters.base import (
    Converter,
    Plan,
    Unit,
    UnitResult,
    UnitSpec,
    WorkItem,
    check_on_bad_image,
    record_source_reads,
    run_plan_unit,
    work_items,
)
from airflow_resnet_prep.converters.decodecheck import decode_check_param, prepare_decoder
from airflow_resnet_prep.converters.recordio_direct import write_in_place
from airflow_resnet_prep.converters.recordio_frame import (
    UNIT_RUN_RECORDS,
    Framed,
    chunked,
    frame_run,
    unit_result,
)
from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.failpoints import failpoint
from airflow_resnet_prep.formats.crc32c import combine_all, crc32c, from_hex, to_hex
from airflow_resnet_prep.layout import RECORDIO, DataDir, work_key
from airflow_resnet_prep.params import MAX_RESIZE, PARAMS
from airflow_resnet_prep.storage import Assembly, Part, is_object_uri

log = logging.getLogger(__name__)

IM2REC_SHUFFLE_SEED = 100
UNIT_RECORDS = 5000
SCRATCH = f"{work_key('nvidia')}/parts"  # where the assemblies of .rec files keep their pieces
OUTPUT_NAMES = {f"{split}.{ext}" for split in ("train", "val") for ext in ("lst", "rec", "idx")}


def list_split(catalog: SplitCatalog) -> list[tuple[int, ImageRef, int]]:
    """im2rec's ``--list --recursive`` for a tree laid out as the catalog: (index, image, label), shuffled.

    The walk order (class folders sorted, files sorted within each) is the catalog's own order.
    """
    refs = catalog.images
    keys = map(_CLASS_AND_NAME, refs)  # made as compared: no list of a tuple per image
    if not all(map(operator.lt, keys, map(_CLASS_AND_NAME, itertools.islice(refs, 1, None)))):
        refs = sorted(refs, key=_CLASS_AND_NAME)  # not sorted, or a name twice
        for previous, ref in itertools.pairwise(refs):
            if (previous.synset, previous.name) == (ref.synset, ref.name):
                raise PrepError(
                    f"{catalog.where(ref)}: a second {catalog.split} image named {ref.synset}/{ref.name}"
                )
    # A folder's label is its rank among the folders (the walk meets them in sorted order).
    folders = {synset: label for label, synset in enumerate(sorted(set(map(_SYNSET, refs))))}
    listing = list(zip(range(len(refs)), refs, map(folders.__getitem__, map(_SYNSET, refs)), strict=True))
    random.Random(IM2REC_SHUFFLE_SEED).shuffle(listing)
    return listing


# A .lst line (index, label as a float, path "<synset>/<name>") and an .idx line (index, offset): formats
# applied to a whole tuple of fields, so that writing them takes no Python call per line. A label is a
# whole number: "%d.000000" writes it as "%f" would write it as a float, without making the float.
_LST_LINE = "%d\t%d.000000\t%s/%s\n"
_IDX_LINE = "%d\t%d\n"
_SYNSET = operator.itemgetter(0)  # of an ImageRef
_INDEX, _OFFSET = operator.itemgetter(0), operator.itemgetter(1)  # of a unit's .idx pair
_SIZE = operator.itemgetter(4)
_CLASS_AND_NAME = operator.itemgetter(0, 1)


class RecordIOConverter(Converter):
    """Write ``recordio/{train,val}.{lst,rec,idx}``. Params: ``resize`` (short side, 0 = pass-through),
    ``quality`` (JPEG quality when resizing), ``on_bad_image`` ("fail" | "skip"), ``decode_check``
    (decode every image with TensorFlow before writing it; see :mod:`.decodecheck`)."""

    implementation: ClassVar[str] = "nvidia"
    output_key: ClassVar[str] = RECORDIO

    def __init__(
        self,
        resize: int = PARAMS["resize"].default,
        quality: int = PARAMS["quality"].default,
        on_bad_image: str = PARAMS["on_bad_image"].default,
        decode_check: bool = PARAMS["decode_check"].default,
    ) -> None:
        if not 0 <= int(resize) <= MAX_RESIZE:
            raise ValueError(
                f"resize must be 0 (keep the images as they are) or a short side from 1 to {MAX_RESIZE}, "
                f"got {resize}"
            )
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"quality must be between 1 and 100, got {quality}")
        super().__init__(
            {
                "resize": int(resize),
                "quality": int(quality),
                "on_bad_image": check_on_bad_image(on_bad_image),
                **decode_check_param(decode_check),
            }
        )

    def is_output_name(self, name: str) -> bool:
        return name in OUTPUT_NAMES

    def prepare_process(self) -> None:
        prepare_decoder(self.params)

    def plan_split(self, split: str, catalog: SplitCatalog, classes: list[str]) -> list[UnitSpec]:
        check_class_folders(split, catalog, classes)
        listing = list_split(catalog)
        if not listing:
            return []
        indexes, refs, labels = zip(*listing, strict=True)
        del listing  # a tuple per image: not kept while the items are made
        items = work_items(refs, labels, indexes, itertools.repeat(0))
        # A unit ends at its UNIT_RECORDS-th image, or later at the first one that brings it to
        # min_unit_bytes: found on the running total of the sizes, with no Python step per image.
        ends = list(itertools.accumulate(map(_SIZE, refs))) if self.min_unit_bytes else None
        units: list[UnitSpec] = []
        start = 0
        while start < len(items):
            end = start + UNIT_RECORDS
            if ends is not None:
                before = ends[start - 1] if start else 0
                end = max(end, bisect.bisect_left(ends, before + self.min_unit_bytes) + 1)
            units.append(UnitSpec(split, [f"{split}.{len(units):05d}.rec"], items[start:end]))
            start = end
        return units

    def prepare_plan(self, plan: Plan) -> None:
        store = plan.data_dir.store
        plan.extra["assemblies"] = {
            split: store.begin_assembly(_rec_key(split), SCRATCH).token for split in ("train", "val")
        }

    def discard_plan(self, data_dir: DataDir, saved: dict[str, Any] | None) -> None:
        for split in ("train", "val"):
            data_dir.store.abort_assemblies(_rec_key(split), SCRATCH, keep=())

    def _assembly(self, plan: Plan, split: str) -> Assembly:
        token = plan.extra["assemblies"][split]
        return plan.data_dir.store.resume_assembly(_rec_key(split), SCRATCH, token)

    def write_unit(self, plan: Plan, unit: Unit, items: list[WorkItem]) -> UnitResult:
        sources = plan.split_sources(unit.split)
        runs: list[Framed] = []
        chunks = chunked(items, UNIT_RUN_RECORDS)
        with (
            ImageReader(sources) as reader,
            # One read-ahead over the whole unit: from a bucket, close images coalesced across runs.
            contextlib.closing(reader.iter_read(items)) as reads,
            self._assembly(plan, unit.split).piece_writer(_piece_number(plan, unit)) as out,
        ):
            for number, chunk in enumerate(chunks):
                started = time.monotonic()
                framed, buffers = frame_run(
                    self.params, sources, unit.split, itertools.islice(reads, len(chunk))
                )
                out.writelines(buffers)
                framed.seconds = time.monotonic() - started
                runs.append(framed)
                if number == len(chunks) // 2:
                    failpoint("unit-half")
            result = unit_result(unit, runs)
            record_source_reads(reader, result)
        result.extra["part"] = list(out.part)
        return result

    def run_local(self, plan: Plan, workers: int) -> bool:
        self.prepare_process()  # the in-place path forks its writers too: load TensorFlow once, before
        return write_in_place(plan, workers)

    def finish(self, plan: Plan, results: list[UnitResult]) -> dict[str, dict[str, int]]:
        data_dir = plan.data_dir
        outputs: dict[str, dict[str, int]] = {}
        for split in ("train", "val"):
            parts = sorted((r for r in results if r.split == split), key=lambda r: r.unit)
            rec, idx, lst = (f"{RECORDIO}/{split}.{ext}" for ext in ("rec", "idx", "lst"))
            # A .rec of the right size was completed by an earlier finish of this plan (a new plan deletes
            # the old outputs first); .idx and .lst are rewritten whenever the .rec is.
            rec_done = _size(data_dir, rec) == _parts_size(parts)
            if not rec_done:
                parts = self._complete(plan, split, parts)
                failpoint("finish")
            # .idx and .lst are made in memory (their CRC-32C from the same bytes), written when needed.
            idx_text = _idx_text(parts)
            if not rec_done or not data_dir.exists(idx):
                data_dir.write_text(idx, idx_text)
            lst_text = _lst_text(plan, parts)
            if not rec_done or not data_dir.exists(lst):
                data_dir.write_text(lst, lst_text)
            records = sum(r.records for r in parts)
            checksums = {
                lst: to_hex(crc32c(lst_text.encode())),
                rec: _joined_crc(parts),
                idx: to_hex(crc32c(idx_text.encode())),
            }
            for key in (lst, rec, idx):
                outputs[key] = {"size": data_dir.store.size(key), "records": records}
                if checksums[key] is not None:
                    outputs[key]["crc32c"] = checksums[key]
        # What killed units or a killed finish left: every unit is done and finish holds the data_dir's
        # lock, so no writer is left.
        for split in ("train", "val"):
            data_dir.store.abort_assemblies(_rec_key(split), SCRATCH, keep=())
        data_dir.delete_tree(SCRATCH)
        data_dir.discard_partial(RECORDIO)
        return outputs

    def _complete(self, plan: Plan, split: str, parts: list[UnitResult]) -> list[UnitResult]:
        """Complete the split's assembly from the units' pieces. When its pieces are gone for good (the
        .rec was completed once and has since been lost or cut short, or the units wrote it directly),
        convert the split's units again into a new assembly, so the rerun heals the output. Any other
        failure of ``complete`` (a network error) is raised: the pieces stay, a rerun completes them."""
        spent = split in plan.extra.get("completed", []) or not all("part" in r.extra for r in parts)
        if spent:
            data_dir = plan.data_dir
            log.warning(
                "%s: missing or cut short; converting the %s units again",
                data_dir.uri(_rec_key(split)),
                split,
            )
            plan.extra["assemblies"][split] = data_dir.store.begin_assembly(_rec_key(split), SCRATCH).token
            plan.extra["completed"] = [s for s in plan.extra.get("completed", []) if s != split]
            plan.save()
            for r in parts:
                data_dir.delete(plan.unit_done_key(r.unit))
            parts = [run_plan_unit(self, plan, r.unit) for r in parts]
        self._assembly(plan, split).complete([Part(*r.extra["part"]) for r in parts])
        plan.extra.setdefault("completed", []).append(split)
        plan.save()
        return parts


def _idx_text(parts: list[UnitResult]) -> str:
    lines, start = [], 0  # start: where the unit's part begins in the joined file
    for r in parts:
        pairs = r.extra["offsets"]  # [index, offset in the part]
        indexes, offsets = map(_INDEX, pairs), map(start.__add__, map(_OFFSET, pairs))
        lines.extend(map(_IDX_LINE.__mod__, zip(indexes, offsets, strict=True)))
        start += _parts_size([r])
    return "".join(lines)


def _lst_text(plan: Plan, parts: list[UnitResult]) -> str:
    """The .lst of the split's units: a line per item, in unit order, but those left out."""
    # Skipped images are keyed per split: a val folder source may reuse a train file name.
    skipped = {(s["synset"], s["name"]) for r in parts for s in r.skipped}
    lines: list[str] = []
    for r in parts:
        columns = plan.unit_item_columns(r.unit)
        synsets, names = columns[0], columns[1]
        rows = zip(map(int, columns[7]), map(int, columns[6]), synsets, names, strict=True)
        if skipped:
            kept = [(s, n) not in skipped for s, n in zip(synsets, names, strict=True)]
            rows = itertools.compress(rows, kept)  # type: ignore[assignment]
        lines.extend(map(_LST_LINE.__mod__, rows))
    return "".join(lines)


def _joined_crc(parts: list[UnitResult]) -> str | None:
    """The joined .rec's CRC-32C from its pieces' (in unit order), with no read of the file; None when
    a unit was done by a version that recorded none (a conversion resumed across an upgrade)."""
    pieces = [stats for r in parts for stats in r.outputs.values()]
    if not all("crc32c" in p for p in pieces):
        return None
    return to_hex(combine_all((from_hex(p["crc32c"]), p["size"]) for p in pieces))


def _rec_key(split: str) -> str:
    return f"{RECORDIO}/{split}.rec"


def _piece_number(plan: Plan, unit: Unit) -> int:
    """A unit's piece of its split's .rec: its position among the split's units, from 1."""
    return 1 + sum(1 for u in plan.units[: unit.id] if u.split == unit.split)


def _size(data_dir: DataDir, key: str) -> int | None:
    try:
        return data_dir.store.size(key)
    except FileNotFoundError:
        return None


def _parts_size(parts: list[UnitResult]) -> int:
    return sum(stats["size"] for r in parts for stats in r.outputs.values())


def check_class_folders(split: str, catalog: SplitCatalog, classes: list[str]) -> None:
    """Refuse trees where im2rec's labels would silently mean something else.

    im2rec numbers only the folders that hold images, per split: a class folder without images
    would shift every later label (and one missing from val would make val's labels disagree with
    train's). A folder source laid out by class is checked for class folders without images.
    """
    present = set(map(_SYNSET, catalog.images))
    for src, source in enumerate(catalog.sources):
        if source.kind != DIR or is_object_uri(source.path):
            continue  # a tar has no class folders; a bucket has no empty ones (a prefix exists only through its objects)
        if not all("/" in r.member for r in catalog.images if r.src == src):
            continue  # a flat validation folder: no class folders to check
        for entry in sorted(os.scandir(source.path), key=lambda e: e.name):
            if entry.is_dir() and not entry.name.startswith(".") and entry.name not in present:
                raise PrepError(
                    f"{entry.path}: class folder holds no images (.JPEG/.jpg/.png); im2rec would skip it "
                    "and number the later classes differently; remove it or add its images"
                )
    missing = sorted(set(classes) - present)
    if missing:
        raise PrepError(
            f"{catalog.sources[0].path}: the {split} split has no images of class {missing[0]}"
            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}, which the training set has; "
            f"its labels would not match the training labels"
        )


def params_from(values: dict[str, Any]) -> dict[str, Any]:
    keys = ("resize", "quality", "on_bad_image", "decode_check")
    return {k: values[k] for k in keys if k in values}
