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
output where the file system cannot share extents. Finish is idempotent: parts are deleted only
after all final names are in place.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Any, ClassVar

from airflow_resnet_prep.catalog.model import ImageReader, SplitCatalog
from airflow_resnet_prep.converters.base import (
    Converter,
    Plan,
    UnitResult,
    UnitSpec,
    WorkItem,
    bad_image,
    check_on_bad_image,
    read_or_report,
)
from airflow_resnet_prep.errors import BadImageError, PrepError
from airflow_resnet_prep.formats.jpeg import probe, resize_short_side
from airflow_resnet_prep.formats.recordio import MAX_RECORD, pack_header, record_buffers
from airflow_resnet_prep.fsutil import atomic_path, atomic_write_text, disk_full_as_error, tmp_name
from airflow_resnet_prep.layout import DataDir

IM2REC_SHUFFLE_SEED = 100
UNIT_RECORDS = 5000
OUTPUT_NAMES = {f"{split}.{ext}" for split in ("train", "val") for ext in ("lst", "rec", "idx")}


def list_split(catalog: SplitCatalog) -> list[tuple[int, str, int]]:
    """im2rec's ``--list --recursive`` for a tree laid out as the catalog: (index, relpath, label), shuffled."""
    folders: dict[str, int] = {}
    listing = []
    for index, ref in enumerate(sorted(catalog.images, key=lambda r: (r.synset, r.name))):
        label = folders.setdefault(ref.synset, len(folders))
        listing.append((index, f"{ref.synset}/{ref.name}", label))
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
        by_relpath = {f"{r.synset}/{r.name}": r for r in catalog.images}
        listing = list_split(catalog)
        units = []
        for first in range(0, len(listing), UNIT_RECORDS):
            chunk = listing[first : first + UNIT_RECORDS]
            items = [WorkItem(*by_relpath[relpath], label, index, 0) for index, relpath, label in chunk]
            units.append(UnitSpec(split, [f"{split}.{len(units):05d}.rec"], items))
        return units

    def _part_path(self, plan: Plan, name: str) -> Path:
        return Path(plan.work_dir) / "parts" / name

    def run_unit(self, layout: DataDir, plan: Plan, unit_id: int, items: list[WorkItem]) -> UnitResult:
        unit = plan.units[unit_id]
        result = UnitResult(unit=unit_id, split=unit["split"])
        on_bad, resize, quality = self.params["on_bad_image"], self.params["resize"], self.params["quality"]
        sources = plan.split_sources(unit["split"])
        path = self._part_path(plan, unit["outputs"][0])
        path.parent.mkdir(parents=True, exist_ok=True)
        offsets: list[list[int]] = []
        position = 0
        with (
            ImageReader(sources) as reader,
            atomic_path(path) as tmp,
            open(tmp, "wb", buffering=1 << 20) as out,
        ):
            for item in items:
                where = sources[item.src].describe(item.ref)
                data = read_or_report(reader, item, where, on_bad, result)
                if data is None:
                    continue
                try:
                    probe(data, where)  # validates (truncation, unknown format) without decoding pixels
                    if resize:
                        data = resize_short_side(data, where, resize, quality)[0]
                except BadImageError as exc:
                    bad_image(exc, item, on_bad, result)
                    continue
                if len(data) + 24 > MAX_RECORD:
                    raise PrepError(
                        f"{where}: {len(data):,} bytes is over RecordIO's record limit of 2^29-1 bytes"
                    )
                buffers = record_buffers(pack_header(float(item.label), item.index), data)
                out.writelines(buffers)
                offsets.append([item.index, position])
                position += sum(len(b) for b in buffers)
                result.records += 1
                result.bytes_in += item.size
        result.outputs[unit["outputs"][0]] = {"size": position, "records": result.records}
        result.extra["offsets"] = offsets
        return result

    def finish(self, layout: DataDir, plan: Plan, results: list[UnitResult]) -> dict[str, dict[str, int]]:
        out_dir = layout.recordio
        out_dir.mkdir(parents=True, exist_ok=True)
        outputs: dict[str, dict[str, int]] = {}
        skipped = {(s["synset"], s["name"]) for r in results for s in r.skipped}
        for split in ("train", "val"):
            parts = sorted((r for r in results if r.split == split), key=lambda r: r.unit)
            names = [name for r in parts for name in r.outputs]
            total = sum(r.outputs[n]["size"] for r in parts for n in r.outputs)
            records = sum(r.records for r in parts)
            rec = out_dir / f"{split}.rec"
            done = rec.exists() and rec.stat().st_size == total and (out_dir / f"{split}.lst").exists()
            if not done:
                idx_lines, base = [], 0
                for r in parts:
                    idx_lines.extend(f"{index}\t{base + off}\n" for index, off in r.extra["offsets"])
                    base += r.outputs[next(iter(r.outputs))]["size"]
                lst_lines = [
                    lst_line(item.index, float(item.label), f"{item.synset}/{item.name}")
                    for r in parts
                    for item in plan.load_items(r.unit)
                    if (item.synset, item.name) not in skipped
                ]
                self._join([self._part_path(plan, n) for n in names], rec, total)
                atomic_write_text(out_dir / f"{split}.idx", "".join(idx_lines))
                atomic_write_text(out_dir / f"{split}.lst", "".join(lst_lines))
            for ext in ("lst", "rec", "idx"):
                outputs[f"recordio/{split}.{ext}"] = {
                    "size": (out_dir / f"{split}.{ext}").stat().st_size,
                    "records": records,
                }
        for r in results:
            for name in r.outputs:
                self._part_path(plan, name).unlink(missing_ok=True)
        return outputs

    @staticmethod
    def _join(parts: list[Path], target: Path, total: int) -> None:
        """Concatenate ``parts`` into ``target`` (temporary name, then rename) in the kernel."""
        tmp = tmp_name(target)
        try:
            with disk_full_as_error(target), open(tmp, "wb") as out:
                for part in parts:
                    with open(part, "rb") as src:
                        size = os.fstat(src.fileno()).st_size
                        _copy_all(src.fileno(), out.fileno(), size)
                out.flush()
                os.fsync(out.fileno())
            if tmp.stat().st_size != total:
                raise PrepError(f"{target}: joined {tmp.stat().st_size} bytes, the units wrote {total}")
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def _copy_all(src_fd: int, dst_fd: int, size: int) -> None:
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src_fd, dst_fd, size - done)
            if n == 0:
                break
            done += n
    except OSError:
        pass  # e.g. across file systems on old kernels: fall back to plain reads and writes below
    while done < size:
        chunk = os.pread(src_fd, min(size - done, 8 << 20), done)
        if not chunk:
            raise PrepError(f"part ended {size - done} bytes early")
        os.write(dst_fd, chunk)
        done += len(chunk)


def params_from(values: dict[str, Any]) -> dict[str, Any]:
    keys = ("resize", "quality", "on_bad_image")
    return {k: values[k] for k in keys if k in values}
