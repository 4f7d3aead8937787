"""``nvidia``: MXNet RecordIO as ``im2rec.py --list --recursive`` then ``--pass-through`` write it (SPEC §4).

Listing: synset folders in sorted order, files sorted within each; ``index`` counts in that walk
from 0; ``label`` is the 0-based index of the folder among the split's folders holding images; then
the list is shuffled as im2rec does by default (``random.seed(100)``, ``random.shuffle``). Each
``.lst`` line becomes one record: ``<IfQQ`` header (0, label, index, 0) + the image's bytes.

Design of the parallel write (one ``train.rec`` is what NVIDIA's readers want): a record's size
depends on its content (escaped magic words), so offsets are only known once payloads are scanned.
Units take contiguous runs of the shuffled list and write their own part file plus the part-relative
offsets; ``finish`` joins the parts in order into the final file with ``os.copy_file_range`` (done in
the kernel, and shared extents on file systems with reflinks) and writes ``.idx`` from the offsets.
This reads every source byte once and needs no pre-scan; the join costs one in-kernel copy of the
output where the file system cannot share extents. When one machine runs the whole conversion
(``local.convert``: the operator's ``step="all"``, the CLI, the benchmark), :mod:`.recordio_direct`
writes each ``.rec`` in place instead, with no parts and no join. Finish is idempotent: parts are deleted only
after all final names are in place, and a rerun that finds a final ``.rec`` lost or cut short writes
the missing parts again (their units' done records would otherwise hide the loss).

Because im2rec numbers only the class folders that hold images, separately per split, the plan
refuses a class folder without images and a validation split that lacks a training class: either
would silently give labels that mean something else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from pathlib import Path
from typing import Any, ClassVar

from airflow_resnet_prep.catalog.model import DIR, ImageReader, ImageRef, SplitCatalog
from airflow_resnet_prep.converters import base
from airflow_resnet_prep.converters.base import (
    Converter,
    Plan,
    UnitResult,
    UnitSpec,
    WorkItem,
    bad_image,
    check_on_bad_image,
    read_or_report,
    record_source_reads,
)
from airflow_resnet_prep.converters.recordio_direct import write_direct
from airflow_resnet_prep.errors import BadImageError, PrepError
from airflow_resnet_prep.failpoints import failpoint
from airflow_resnet_prep.formats.jpeg import probe, resize_short_side
from airflow_resnet_prep.formats.recordio import MAX_RECORD, pack_header, record_buffers
from airflow_resnet_prep.fsutil import (
    atomic_path,
    atomic_write_text,
    copy_range,
    disk_full_as_error,
    remove_stale_tmp,
    tmp_name,
)
from airflow_resnet_prep.layout import DataDir
from airflow_resnet_prep.sources.bucket import is_bucket_uri

log = logging.getLogger(__name__)

IM2REC_SHUFFLE_SEED = 100
UNIT_RECORDS = 5000
OUTPUT_NAMES = {f"{split}.{ext}" for split in ("train", "val") for ext in ("lst", "rec", "idx")}


def list_split(catalog: SplitCatalog) -> list[tuple[int, ImageRef, int]]:
    """im2rec's ``--list --recursive`` for a tree laid out as the catalog: (index, image, label), shuffled.

    The walk order (class folders sorted, files sorted within each) is the catalog's own order.
    """
    folders: dict[str, int] = {}
    listing = []
    previous: ImageRef | None = None
    for index, ref in enumerate(sorted(catalog.images, key=lambda r: (r.synset, r.name))):
        if previous is not None and (previous.synset, previous.name) == (ref.synset, ref.name):
            raise PrepError(
                f"{catalog.where(ref)}: a second {catalog.split} image named {ref.synset}/{ref.name}"
            )
        label = folders.setdefault(ref.synset, len(folders))
        listing.append((index, ref, label))
        previous = ref
    random.Random(IM2REC_SHUFFLE_SEED).shuffle(listing)
    return listing


def lst_line(index: int, label: float, relpath: str) -> str:
    return f"{index}\t{label:f}\t{relpath}\n"


class RecordIOConverter(Converter):
    """Write ``recordio/{train,val}.{lst,rec,idx}``. Params: ``resize`` (short side, 0 = pass-through),
    ``quality`` (JPEG quality when resizing), ``on_bad_image`` ("fail" | "skip")."""

    implementation: ClassVar[str] = "nvidia"

    def __init__(self, resize: int = 0, quality: int = 95, on_bad_image: str = "fail") -> None:
        if int(resize) < 0:
            raise ValueError(
                f"resize must be 0 (keep the images as they are) or a short side >= 1, got {resize}"
            )
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"quality must be between 1 and 100, got {quality}")
        super().__init__(
            {"resize": int(resize), "quality": int(quality), "on_bad_image": check_on_bad_image(on_bad_image)}
        )

    def output_dir(self, layout: DataDir) -> Path:
        return layout.recordio

    def is_output_name(self, name: str) -> bool:
        return name in OUTPUT_NAMES

    def plan_split(self, split: str, catalog: SplitCatalog, classes: list[str]) -> list[UnitSpec]:
        check_class_folders(split, catalog, classes)
        listing = list_split(catalog)
        units = []
        for first in range(0, len(listing), UNIT_RECORDS):
            chunk = listing[first : first + UNIT_RECORDS]
            items = [WorkItem(*ref, label, index, 0) for index, ref, label in chunk]
            units.append(UnitSpec(split, [f"{split}.{len(units):05d}.rec"], items))
        return units

    def _part_path(self, plan: Plan, name: str) -> Path:
        return Path(plan.work_dir) / "parts" / name

    def run_unit(self, layout: DataDir, plan: Plan, unit_id: int, items: list[WorkItem]) -> UnitResult:
        unit = plan.units[unit_id]
        result = UnitResult(unit=unit_id, split=unit["split"])
        sources = plan.split_sources(unit["split"])
        path = self._part_path(plan, unit["outputs"][0])
        path.parent.mkdir(parents=True, exist_ok=True)
        offsets: list[list[int]] = []
        position = 0
        half = max(1, len(items) // 2)
        # A part is scratch: finish checks its size and fsyncs the joined file, so it is not synced here.
        with (
            ImageReader(sources) as reader,
            contextlib.closing(reader.iter_read(items)) as reads,
            atomic_path(path, sync=False) as tmp,
            open(tmp, "wb", buffering=1 << 20) as out,
        ):
            for item, data in reads:
                buffers = self.frame_item(reader, sources, item, result, data)
                if buffers is None:
                    continue
                out.writelines(buffers)
                offsets.append([item.index, position])
                position += sum(len(b) for b in buffers)
                if result.records == half:
                    failpoint("unit-half")
            record_source_reads(reader, result)
        result.outputs[unit["outputs"][0]] = {"size": position, "records": result.records}
        result.extra["offsets"] = offsets
        return result

    def frame_item(
        self,
        reader: ImageReader | None,
        sources: list,
        item: WorkItem,
        result: UnitResult,
        data: bytes | None = None,
    ) -> list | None:
        """The framed record of ``item`` (a list of buffers), or None when the image is left out.
        ``data``: the image's bytes when already read (else read now through ``reader``)."""
        on_bad, resize, quality = self.params["on_bad_image"], self.params["resize"], self.params["quality"]
        where = sources[item.src].describe(item.ref)
        data = read_or_report(reader, item, where, on_bad, result, data)
        if data is None:
            return None
        try:
            probe(data, where)  # validates (truncation, unknown format) without decoding pixels
            if resize:
                data = resize_short_side(data, where, resize, quality)[0]
        except BadImageError as exc:
            return bad_image(exc, item, on_bad, result)
        if len(data) + 24 > MAX_RECORD:
            raise PrepError(f"{where}: {len(data):,} bytes is over RecordIO's record limit of 2^29-1 bytes")
        result.records += 1
        result.bytes_in += item.size
        return record_buffers(pack_header(float(item.label), item.index), data)

    def run_local(self, layout: DataDir, plan: Plan, workers: int) -> bool:
        return write_direct(self, layout, plan, workers)

    def finish(self, layout: DataDir, plan: Plan, results: list[UnitResult]) -> dict[str, dict[str, int]]:
        out_dir = layout.recordio
        out_dir.mkdir(parents=True, exist_ok=True)
        outputs: dict[str, dict[str, int]] = {}
        for split in ("train", "val"):
            parts = sorted((r for r in results if r.split == split), key=lambda r: r.unit)
            rec, idx, lst = (out_dir / f"{split}.{ext}" for ext in ("rec", "idx", "lst"))
            # A .rec of the right size was joined by an earlier finish of this plan (a new plan deletes
            # the old outputs first); .idx and .lst are rewritten whenever the .rec is.
            rec_done = rec.is_file() and rec.stat().st_size == _parts_size(parts)
            if not rec_done:
                parts = [self._ensure_part(layout, plan, r) for r in parts]
                self._join(
                    [self._part_path(plan, n) for r in parts for n in r.outputs], rec, _parts_size(parts)
                )
                failpoint("finish")
            if not rec_done or not idx.is_file():
                idx_lines, start = [], 0  # start: where the unit's part begins in the joined file
                for r in parts:
                    idx_lines.extend(f"{index}\t{start + off}\n" for index, off in r.extra["offsets"])
                    start += _parts_size([r])
                atomic_write_text(idx, "".join(idx_lines))
            if not rec_done or not lst.is_file():
                # Skipped images are keyed per split: a val folder source may reuse a train file name.
                skipped = {(s["synset"], s["name"]) for r in parts for s in r.skipped}
                lst_lines = [
                    lst_line(item.index, float(item.label), f"{item.synset}/{item.name}")
                    for r in parts
                    for item in plan.load_items(r.unit)
                    if (item.synset, item.name) not in skipped
                ]
                atomic_write_text(lst, "".join(lst_lines))
            records = sum(r.records for r in parts)
            for path in (lst, rec, idx):
                outputs[f"recordio/{path.name}"] = {"size": path.stat().st_size, "records": records}
        # Parts go only after every final name is in place, so a finish killed midway can be rerun.
        parts_dir = self._part_path(plan, "x").parent
        for r in results:
            for name in r.outputs:
                self._part_path(plan, name).unlink(missing_ok=True)
        # In-progress files of killed units or of a killed join: no writer is left (every unit is
        # done and finish holds the data_dir lock), so they are garbage.
        remove_stale_tmp(parts_dir)
        remove_stale_tmp(out_dir)
        with contextlib.suppress(OSError):
            parts_dir.rmdir()
        return outputs

    def _ensure_part(self, layout: DataDir, plan: Plan, result: UnitResult) -> UnitResult:
        """The unit's result, its part file redone if it is gone.

        Parts are deleted once the final files exist; if a final ``.rec`` is later lost (deleted,
        truncated) a rerun of the same plan gets here with done records but no parts: redo the unit
        rather than fail, so the rerun heals the output.
        """
        if all(self._part_path(plan, n).is_file() for n in result.outputs):
            return result
        log.warning("unit %d: part file gone (final file lost?); writing it again", result.unit)
        plan.unit_done_path(result.unit).unlink(missing_ok=True)
        return base.run_unit(self, layout.root, result.unit)

    @staticmethod
    def _join(parts: list[Path], target: Path, total: int) -> None:
        """Concatenate ``parts`` into ``target`` (temporary name, then rename) in the kernel."""
        tmp = tmp_name(target)
        try:
            with disk_full_as_error(target), open(tmp, "wb") as out:
                for part in parts:
                    with open(part, "rb") as src:
                        size = os.fstat(src.fileno()).st_size
                        copy_range(src.fileno(), out.fileno(), size)
                        # The part is read once; the output is written back now (see EarlyWriteback):
                        # neither fills the page cache.
                        os.posix_fadvise(src.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                    os.posix_fadvise(out.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
                out.flush()
                os.fsync(out.fileno())
            if tmp.stat().st_size != total:
                raise PrepError(f"{target}: joined {tmp.stat().st_size} bytes, the units wrote {total}")
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _parts_size(parts: list[UnitResult]) -> int:
    return sum(stats["size"] for r in parts for stats in r.outputs.values())


def check_class_folders(split: str, catalog: SplitCatalog, classes: list[str]) -> None:
    """Refuse trees where im2rec's labels would silently mean something else.

    im2rec numbers only the folders that hold images, per split: a class folder without images
    would shift every later label (and one missing from val would make val's labels disagree with
    train's). A folder source laid out by class is checked for class folders without images.
    """
    present = {r.synset for r in catalog.images}
    for src, source in enumerate(catalog.sources):
        members = [r.member for r in catalog.images if r.src == src]
        if source.kind != DIR or not all("/" in m for m in members) or is_bucket_uri(source.path):
            # a tar, or a flat validation folder: no class folders to check; a bucket has no empty
            # folders (a prefix exists only through the objects below it)
            continue
        for entry in sorted(os.scandir(source.path), key=lambda e: e.name):
            if entry.is_dir() and not entry.name.startswith(".") and entry.name not in present:
                raise PrepError(
                    f"{entry.path}: class folder holds no images (.JPEG/.jpg/.png); im2rec would skip it "
                    "and number the later classes differently; remove it or add its images"
                )
    missing = sorted(set(classes) - set(catalog.synsets))
    if missing:
        raise PrepError(
            f"{catalog.sources[0].path}: the {split} split has no images of class {missing[0]}"
            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}, which the training set has; "
            f"its labels would not match the training labels"
        )


def params_from(values: dict[str, Any]) -> dict[str, Any]:
    keys = ("resize", "quality", "on_bad_image")
    return {k: values[k] for k in keys if k in values}
