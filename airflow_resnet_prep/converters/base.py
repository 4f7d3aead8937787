"""One skeleton for both output formats: plan -> units -> finish.

- **plan** (one process, holds the data_dir lock): reads the catalogs, decides the order of every
  image and which output it goes to, groups outputs into independent *units*, writes each unit's
  item list and then ``plan.json`` (last, atomically) under ``work/<implementation>/``.
- **unit** (any worker, any order, any number of times): reads its item list, writes its outputs
  under temporary names, renames them when whole, then writes a done record. A unit whose done
  record exists is skipped, so a rerun after a crash redoes only what was unfinished.
- **finish** (one process): checks every unit's done record, lets the format join or name its
  outputs, and returns what was written.

Units of one plan never write the same file, so many workers can share a job over a shared file
system. A plan is identified by a hash of the implementation, its params and the catalogs: a
different plan meets the outputs of an interrupted one only with ``force``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from airflow_resnet_prep.catalog.model import ImageReader, ImageRef, Source, SplitCatalog, export_connections
from airflow_resnet_prep.errors import BadImageError, OutputConflictError, PrepError
from airflow_resnet_prep.fsutil import (
    atomic_path,
    atomic_write_json,
    exclusive_lock,
    read_json,
    remove_stale_tmp,
)
from airflow_resnet_prep.layout import DataDir

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
ON_BAD_IMAGE = ("fail", "skip")


class WorkItem(NamedTuple):
    """One image to write: where its bytes are, its label in the output's convention, its position."""

    synset: str
    name: str
    src: int
    offset: int
    size: int
    member: str
    label: int
    index: int  # record id in the output (the .lst index for RecordIO; position for TFRecords)
    output: int  # which of the unit's outputs it goes to

    @property
    def ref(self) -> ImageRef:
        return ImageRef(self.synset, self.name, self.src, self.offset, self.size, self.member)


@dataclass
class UnitSpec:
    split: str
    outputs: list[str]  # output names, relative to the unit's folder (format decides)
    items: list[WorkItem]


@dataclass
class UnitResult:
    """What a unit wrote; saved as its done record and summed up by finish."""

    unit: int
    split: str
    outputs: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> {"size", "records"}
    reencoded: list[dict[str, str]] = field(default_factory=list)  # {"name", "reason"}
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"name", "reason"}
    records: int = 0
    bytes_in: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UnitResult:
        return cls(**d)


class Converter(ABC):
    """What a format plugs into the skeleton."""

    implementation: ClassVar[str]

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    @abstractmethod
    def output_dir(self, layout: DataDir) -> Path: ...

    @abstractmethod
    def is_output_name(self, name: str) -> bool:
        """Whether a file name in the output folder looks like one this format writes."""

    @abstractmethod
    def plan_split(self, split: str, catalog: SplitCatalog, classes: list[str]) -> list[UnitSpec]: ...

    @abstractmethod
    def run_unit(self, layout: DataDir, plan: Plan, unit_id: int, items: list[WorkItem]) -> UnitResult: ...

    @abstractmethod
    def finish(self, layout: DataDir, plan: Plan, results: list[UnitResult]) -> dict[str, dict[str, int]]:
        """Put the outputs under their final names (if units did not) and return them: name -> stats."""

    def prepare_process(self) -> None:
        """Load heavy libraries once in the parent, before worker processes are forked."""

    def run_local(self, layout: DataDir, plan: Plan, workers: int) -> bool:
        """A format's faster way to run every unit of ``plan`` on this machine, when it has one.

        Must leave the state :func:`.local.run_units` would (outputs and done records) and return True,
        or do nothing and return False; the units are then run one by one.
        """
        return False


@dataclass
class Plan:
    implementation: str
    plan_id: str
    params: dict[str, Any]
    classes: list[str]
    sources: dict[str, list[dict[str, str]]]  # split -> catalog sources
    units: list[dict[str, Any]]  # {"id", "split", "outputs", "items"}
    counts: dict[str, int]
    work_dir: str

    @classmethod
    def load(cls, work_dir: Path) -> Plan:
        """The plan in ``work_dir``. Loading it also puts the Airflow connections of sources in a bucket
        into this process's environment (:func:`~airflow_resnet_prep.catalog.model.export_connections`):
        every path that runs units loads the plan before it starts worker processes, which then reach
        the bucket without asking the task's supervisor."""
        data = read_json(work_dir / "plan.json")
        if data is None:
            raise PrepError(f"{work_dir / 'plan.json'}: no conversion plan; run the plan step first")
        plan = cls(**data)
        export_connections(Source(s["kind"], s["path"]) for srcs in plan.sources.values() for s in srcs)
        return plan

    def unit_items_path(self, unit_id: int) -> Path:
        return Path(self.work_dir) / "units" / f"{unit_id:05d}.tsv"

    def unit_done_path(self, unit_id: int) -> Path:
        return Path(self.work_dir) / "done" / f"{unit_id:05d}.json"

    def split_sources(self, split: str) -> list[Source]:
        return [Source(s["kind"], s["path"]) for s in self.sources[split]]

    def load_items(self, unit_id: int) -> list[WorkItem]:
        items = []
        with open(self.unit_items_path(unit_id), encoding="utf-8", newline="\n") as fh:
            for line in fh:
                s, n, src, off, size, member, label, index, output = line.rstrip("\n").split("\t")
                items.append(
                    WorkItem(s, n, int(src), int(off), int(size), member, int(label), int(index), int(output))
                )
        return items


def _write_items(path: Path, items: Iterable[WorkItem]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.writelines("\t".join(map(str, item)) + "\n" for item in items)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def plan(
    converter: Converter,
    data_dir: str | os.PathLike[str],
    *,
    force: bool = False,
) -> Plan:
    """Decide every unit of the conversion and write the plan (see the module doc)."""
    layout = DataDir.of(data_dir)
    work_dir = layout.work / converter.implementation
    out_dir = converter.output_dir(layout)
    with exclusive_lock(layout.lock, wait_s=5):
        catalogs = {split: SplitCatalog.load(layout.catalog_file(split)) for split in SPLITS}
        if not catalogs["val"].labelled:
            raise PrepError(
                f"{layout.catalog_file('val')}: validation images have no classes yet; run relabel first"
            )
        for split, catalog in catalogs.items():
            if len(catalog) == 0:
                raise PrepError(
                    f"{layout.catalog_file(split)}: the {split} split has no images; nothing to convert"
                )
        classes = catalogs["train"].synsets
        key = {
            "implementation": converter.implementation,
            "params": converter.params,
            "catalogs": {split: _file_digest(layout.catalog_file(split)) for split in SPLITS},
        }
        plan_id = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

        existing = read_json(work_dir / "plan.json")
        if existing is not None and existing.get("plan_id") == plan_id and not force:
            log.info("resuming plan %s in %s", plan_id, work_dir)
            return Plan(**existing)
        _clear_previous(layout, converter, work_dir, out_dir, existing, force)

        units: list[dict[str, Any]] = []
        specs: list[UnitSpec] = []
        for split in SPLITS:
            specs.extend(converter.plan_split(split, catalogs[split], classes))
        (work_dir / "units").mkdir(parents=True, exist_ok=True)
        (work_dir / "done").mkdir(parents=True, exist_ok=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        result = Plan(
            implementation=converter.implementation,
            plan_id=plan_id,
            params=converter.params,
            classes=classes,
            sources={s: [{"kind": x.kind, "path": x.path} for x in catalogs[s].sources] for s in SPLITS},
            units=units,
            counts={s: len(catalogs[s]) for s in SPLITS},
            work_dir=str(work_dir),
        )
        for unit_id, spec in enumerate(specs):
            _write_items(result.unit_items_path(unit_id), spec.items)
            units.append(
                {"id": unit_id, "split": spec.split, "outputs": spec.outputs, "items": len(spec.items)}
            )
        atomic_write_json(work_dir / "plan.json", result.__dict__)
        log.info(
            "plan %s: %d units for %s images (%s)",
            plan_id,
            len(units),
            " + ".join(f"{result.counts[s]:,} {s}" for s in SPLITS),
            converter.implementation,
        )
        return result


def _clear_previous(
    layout: DataDir, converter: Converter, work_dir: Path, out_dir: Path, existing: dict | None, force: bool
) -> None:
    """Make room for a new plan, refusing to overwrite what is not clearly ours and finished."""
    manifest = read_json(layout.manifest)
    finished = (
        existing is not None
        and manifest is not None
        and manifest.get("conversion", {}).get("plan_id") == existing.get("plan_id")
    )
    if existing is not None and not finished and not force:
        raise OutputConflictError(
            f"{work_dir}: holds an unfinished conversion with different inputs or params (plan "
            f"{existing.get('plan_id')}); rerun that conversion to finish it, or set force=true to discard it"
        )
    foreign = (
        sorted(p.name for p in out_dir.iterdir() if converter.is_output_name(p.name))
        if out_dir.is_dir()
        else []
    )
    if foreign and existing is None and not force:
        raise OutputConflictError(
            f"{out_dir}: already holds {len(foreign)} output files (e.g. {foreign[0]}) that no plan of this "
            "tool describes; move them away or set force=true to replace them"
        )
    if existing is not None or foreign:
        log.info("replacing the previous %s output in %s", converter.implementation, out_dir)
        if (
            layout.manifest.exists()
            and manifest
            and manifest.get("implementation") == converter.implementation
        ):
            layout.manifest.unlink()
        for name in foreign:
            (out_dir / name).unlink()
        remove_stale_tmp(out_dir)  # killed units' temp files: no unit of the discarded plan will rerun
        shutil.rmtree(work_dir, ignore_errors=True)


def run_unit(converter: Converter, data_dir: str | os.PathLike[str], unit_id: int) -> UnitResult:
    """Run one unit unless its done record exists; safe to call again after a crash."""
    layout = DataDir.of(data_dir)
    work_plan = Plan.load(layout.work / converter.implementation)
    done_path = work_plan.unit_done_path(unit_id)
    done = read_json(done_path)
    if done is not None:
        return UnitResult.from_dict(done)
    with contextlib.ExitStack() as held:
        lock = done_path.with_suffix(".lock")
        try:
            held.enter_context(exclusive_lock(lock, wait_s=0))
        except OutputConflictError as exc:
            # Another process (a second run on this data_dir) is writing this unit: wait for it rather
            # than fail, or two runs that each hold a unit the other needs would both fail. The lock
            # dies with its holder, so this wait ends when the holder finishes or is killed.
            log.info("unit %d: %s; waiting for it", unit_id, exc)
            held.enter_context(exclusive_lock(lock, wait_s=math.inf))
        done = read_json(done_path)  # another worker may have finished it while we waited
        if done is not None:
            return UnitResult.from_dict(done)
        items = work_plan.load_items(unit_id)
        started = time.monotonic()
        result = converter.run_unit(layout, work_plan, unit_id, items)
        result.seconds = round(time.monotonic() - started, 3)
        atomic_write_json(done_path, result.to_dict())
    done_path.with_suffix(".lock").unlink(missing_ok=True)
    return result


def finish(converter: Converter, data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every unit is done, then let the format finalise its outputs; return the summary."""
    layout = DataDir.of(data_dir)
    work_plan = Plan.load(layout.work / converter.implementation)
    results = []
    missing = []
    for unit in work_plan.units:
        done = read_json(work_plan.unit_done_path(unit["id"]))
        if done is None:
            missing.append(unit["id"])
        else:
            results.append(UnitResult.from_dict(done))
    if missing:
        raise PrepError(
            f"{work_plan.work_dir}: {len(missing)} of {len(work_plan.units)} units are not done "
            f"(first: {missing[:5]}); run them before finishing"
        )
    with exclusive_lock(layout.lock, wait_s=5):
        outputs = converter.finish(layout, work_plan, results)
    return summarize(work_plan, results, outputs)


def summarize(
    work_plan: Plan, results: list[UnitResult], outputs: dict[str, dict[str, int]]
) -> dict[str, Any]:
    per_split: dict[str, dict[str, Any]] = {}
    for r in results:
        s = per_split.setdefault(r.split, {"records": 0, "bytes_in": 0, "unit_seconds": 0.0})
        s["records"] += r.records
        s["bytes_in"] += r.bytes_in
        s["unit_seconds"] = round(s["unit_seconds"] + r.seconds, 3)
    return {
        "implementation": work_plan.implementation,
        "plan_id": work_plan.plan_id,
        "params": work_plan.params,
        "units": len(work_plan.units),
        "splits": per_split,
        "outputs": outputs,
        "reencoded": [x for r in results for x in r.reencoded],
        "skipped": [x for r in results for x in r.skipped],
    }


# -- helpers shared by the formats -------------------------------------------------------------------
def read_or_report(
    reader: ImageReader | None,
    item: WorkItem,
    where: str,
    on_bad_image: str,
    result: UnitResult,
    data: bytes | None = None,
) -> bytes | None:
    """An image's bytes (``data`` when already read, e.g. by :meth:`ImageReader.iter_read`, else read
    now); a zero-byte image follows ``on_bad_image`` like any unreadable one."""
    if data is None:
        assert reader is not None
        data = reader.read(item.ref)
    if not data:
        return bad_image(BadImageError(where, "empty file (0 bytes)"), item, on_bad_image, result)
    return data


def record_source_reads(reader: ImageReader, result: UnitResult) -> None:
    """Note in the unit's done record how many requests and bytes its images cost from a bucket
    (nothing for local sources): the coalescing of close images shows as fewer requests than images."""
    stats = reader.stats()
    if stats["requests"]:
        result.extra["source_reads"] = stats


def bad_image(exc: BadImageError, item: WorkItem, on_bad_image: str, result: UnitResult) -> None:
    """Fail (default) or record the image as left out, per ``on_bad_image``."""
    if on_bad_image != "skip":
        raise exc
    log.warning("leaving out %s: %s", exc.name, exc.reason)
    result.skipped.append({"name": item.name, "synset": item.synset, "reason": exc.reason})
    return None


def check_on_bad_image(value: str) -> str:
    if value not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image must be one of {ON_BAD_IMAGE}, got {value!r}")
    return value
