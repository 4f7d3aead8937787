"""One skeleton for both output formats: plan -> units -> finish.

- **plan** (one process, holds the data_dir lock): reads the catalogs, decides the order of every
  image and which output it goes to, groups outputs into independent *units*, writes each unit's
  item list and then ``plan.json`` (last, atomically) under ``work/<implementation>/``.
- **unit** (any worker, any order, any number of times): reads its item list, writes its outputs
  so that they appear whole or not at all (a temporary name renamed; an upload completed), then
  writes a done record. A unit whose done record exists is skipped, so a rerun after a crash redoes
  only what was unfinished.
- **finish** (one process): checks every unit's done record, lets the format join or name its
  outputs, and returns what was written.

Everything goes through the data_dir's :class:`~airflow_resnet_prep.layout.DataDir` (a local folder or
a bucket prefix), so units of one plan, which never write the same output, can be shared by workers
that see the same folder or only the same bucket. A plan is identified by a hash of the
implementation, its params and the catalogs: a different plan meets the outputs of an interrupted
one only with ``force``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from airflow_resnet_prep.catalog.model import ImageReader, ImageRef, Source, SplitCatalog, export_connections
from airflow_resnet_prep.errors import BadImageError, OutputConflictError, PrepError
from airflow_resnet_prep.layout import MANIFEST, DataDir, catalog_key, work_key

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
# Units writing to a bucket hold at least this many source bytes (but the last of a split), so that a
# piece of a multipart upload stays above S3's 5 MiB minimum even with images left out or re-encoded.
MIN_REMOTE_UNIT_BYTES = 16 << 20
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
    output_key: ClassVar[str]  # the folder of the outputs under data_dir ("tfrecords", "recordio")
    #: set by :func:`plan` before ``plan_split``: the smallest output a unit may write (a bucket's
    #: multipart upload wants parts of at least 5 MiB but the last), 0 for a local data_dir
    min_unit_bytes: int = 0

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

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

    def prepare_plan(self, plan: Plan) -> None:
        """Set up what the units of a new plan share (kept in ``plan.extra``), before it is saved."""

    def discard_plan(self, layout: DataDir, plan: dict[str, Any] | None) -> None:
        """Free what an abandoned plan (its saved form, when there is one) holds outside its work folder."""

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
    work_dir: str  # key of the plan's folder under data_dir: work/<implementation>
    extra: dict[str, Any] = field(default_factory=dict)  # what a format keeps for its units
    layout: DataDir = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "layout"}

    @classmethod
    def load(cls, layout: DataDir, implementation: str) -> Plan:
        """The plan of ``implementation`` in ``layout``. Loading it also puts the Airflow connections of
        the data_dir and of sources in a bucket into this process's environment
        (:func:`~airflow_resnet_prep.catalog.model.export_connections`): every path that runs units loads
        the plan before it starts worker processes, which then reach the bucket without asking the
        task's supervisor."""
        key = f"{work_key(implementation)}/plan.json"
        data = layout.read_json(key)
        if data is None:
            raise PrepError(f"{layout.uri(key)}: no conversion plan; run the plan step first")
        data["work_dir"] = work_key(implementation)  # plans of older versions held a local path
        plan = cls(**data, layout=layout)
        export_connections(
            [Source("dir", layout.address)]
            + [Source(s["kind"], s["path"]) for srcs in plan.sources.values() for s in srcs]
        )
        return plan

    def unit_items_key(self, unit_id: int) -> str:
        return f"{self.work_dir}/units/{unit_id:05d}.tsv"

    def unit_done_key(self, unit_id: int) -> str:
        return f"{self.work_dir}/done/{unit_id:05d}.json"

    def unit_done_path(self, unit_id: int) -> Path:
        """The done record's local path (local data_dir only: the one-machine path and tests)."""
        return self.layout.path(self.unit_done_key(unit_id))

    def done(self, unit_id: int) -> UnitResult | None:
        data = self.layout.read_json(self.unit_done_key(unit_id))
        return None if data is None else UnitResult.from_dict(data)

    def split_sources(self, split: str) -> list[Source]:
        return [Source(s["kind"], s["path"]) for s in self.sources[split]]

    def load_items(self, unit_id: int) -> list[WorkItem]:
        items = []
        text = self.layout.store.read_bytes(self.unit_items_key(unit_id)).decode("utf-8")
        for line in text.splitlines():
            s, n, src, off, size, member, label, index, output = line.split("\t")
            items.append(
                WorkItem(s, n, int(src), int(off), int(size), member, int(label), int(index), int(output))
            )
        return items


def _items_text(items: Iterable[WorkItem]) -> str:
    return "".join("\t".join(map(str, item)) + "\n" for item in items)


def _digest(layout: DataDir, key: str) -> str:
    h = hashlib.sha256()
    with layout.store.open_read(key, block_size=1 << 20) as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def plan(
    converter: Converter,
    data_dir: str | os.PathLike[str] | DataDir,
    *,
    force: bool = False,
) -> Plan:
    """Decide every unit of the conversion and write the plan (see the module doc)."""
    layout = as_layout(data_dir)
    work_dir = work_key(converter.implementation)
    with layout.hold(wait_s=5):
        catalogs = {split: SplitCatalog.load(layout.store, catalog_key(split)) for split in SPLITS}
        if not catalogs["val"].labelled:
            raise PrepError(
                f"{layout.uri(catalog_key('val'))}: validation images have no classes yet; run relabel first"
            )
        for split, catalog in catalogs.items():
            if len(catalog) == 0:
                raise PrepError(
                    f"{layout.uri(catalog_key(split))}: the {split} split has no images; nothing to convert"
                )
        classes = catalogs["train"].synsets
        key = {
            "implementation": converter.implementation,
            "params": converter.params,
            "catalogs": {split: _digest(layout, catalog_key(split)) for split in SPLITS},
        }
        plan_id = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

        existing = layout.read_json(f"{work_dir}/plan.json")
        if existing is not None and existing.get("plan_id") == plan_id and not force:
            log.info("resuming plan %s in %s", plan_id, layout.uri(work_dir))
            return Plan(**existing, layout=layout)
        _clear_previous(layout, converter, existing, force)

        units: list[dict[str, Any]] = []
        specs: list[UnitSpec] = []
        converter.min_unit_bytes = MIN_REMOTE_UNIT_BYTES if layout.store.requests_are_costly else 0
        for split in SPLITS:
            specs.extend(converter.plan_split(split, catalogs[split], classes))
        result = Plan(
            implementation=converter.implementation,
            plan_id=plan_id,
            params=converter.params,
            classes=classes,
            sources={s: [{"kind": x.kind, "path": x.path} for x in catalogs[s].sources] for s in SPLITS},
            units=units,
            counts={s: len(catalogs[s]) for s in SPLITS},
            work_dir=work_dir,
            layout=layout,
        )
        for unit_id, spec in enumerate(specs):
            layout.write_text(result.unit_items_key(unit_id), _items_text(spec.items))
            units.append(
                {"id": unit_id, "split": spec.split, "outputs": spec.outputs, "items": len(spec.items)}
            )
        converter.prepare_plan(result)
        layout.write_json(f"{work_dir}/plan.json", result.to_dict())
        log.info(
            "plan %s: %d units for %s images (%s)",
            plan_id,
            len(units),
            " + ".join(f"{result.counts[s]:,} {s}" for s in SPLITS),
            converter.implementation,
        )
        return result


def as_layout(data_dir: str | os.PathLike[str] | DataDir) -> DataDir:
    return data_dir if isinstance(data_dir, DataDir) else DataDir.of(data_dir)


def _clear_previous(layout: DataDir, converter: Converter, existing: dict | None, force: bool) -> None:
    """Make room for a new plan, refusing to overwrite what is not clearly ours and finished."""
    work_dir, out_key = work_key(converter.implementation), converter.output_key
    manifest = layout.read_json(MANIFEST)
    finished = (
        existing is not None
        and manifest is not None
        and manifest.get("conversion", {}).get("plan_id") == existing.get("plan_id")
    )
    if existing is not None and not finished and not force:
        raise OutputConflictError(
            f"{layout.uri(work_dir)}: holds an unfinished conversion with different inputs or params (plan "
            f"{existing.get('plan_id')}); rerun that conversion to finish it, or set force=true to discard it"
        )
    foreign = sorted(
        o.key
        for o in layout.store.list(out_key)
        if "/" not in o.key[len(out_key) + 1 :] and converter.is_output_name(o.key.rpartition("/")[2])
    )
    if foreign and existing is None and not force:
        raise OutputConflictError(
            f"{layout.uri(out_key)}: already holds {len(foreign)} output files (e.g. "
            f"{foreign[0].rpartition('/')[2]}) that no plan of this tool describes; move them away or set "
            "force=true to replace them"
        )
    if existing is not None or foreign:
        log.info("replacing the previous %s output in %s", converter.implementation, layout.uri(out_key))
        if manifest and manifest.get("implementation") == converter.implementation:
            layout.delete(MANIFEST)
        for key in foreign:
            layout.delete(key)
        # Killed units' partial writes: no unit of the discarded plan will rerun.
        layout.discard_partial(out_key)
        converter.discard_plan(layout, existing)
        layout.delete_tree(work_dir)


def run_unit(converter: Converter, data_dir: str | os.PathLike[str] | DataDir, unit_id: int) -> UnitResult:
    """Run one unit unless its done record exists; safe to call again after a crash."""
    layout = as_layout(data_dir)
    work_plan = Plan.load(layout, converter.implementation)
    done = work_plan.done(unit_id)
    if done is not None:
        return done
    lock = work_plan.unit_done_key(unit_id).removesuffix(".json") + ".lock"
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(layout.hold(lock, wait_s=0, transient=True))
        except OutputConflictError as exc:
            # Another process (a second run on this data_dir) is writing this unit: wait for it rather
            # than fail, or two runs that each hold a unit the other needs would both fail. The lock
            # dies with its holder, so this wait ends when the holder finishes or is killed.
            log.info("unit %d: %s; waiting for it", unit_id, exc)
            held.enter_context(layout.hold(lock, wait_s=math.inf, transient=True))
        done = work_plan.done(unit_id)  # another worker may have finished it while we waited
        if done is not None:
            return done
        items = work_plan.load_items(unit_id)
        started = time.monotonic()
        result = converter.run_unit(layout, work_plan, unit_id, items)
        result.seconds = round(time.monotonic() - started, 3)
        layout.write_json(work_plan.unit_done_key(unit_id), result.to_dict())
    return result


def finish(converter: Converter, data_dir: str | os.PathLike[str] | DataDir) -> dict[str, Any]:
    """Check every unit is done, then let the format finalise its outputs; return the summary."""
    layout = as_layout(data_dir)
    work_plan = Plan.load(layout, converter.implementation)
    results = []
    missing = []
    for unit in work_plan.units:
        done = work_plan.done(unit["id"])
        if done is None:
            missing.append(unit["id"])
        else:
            results.append(done)
    if missing:
        raise PrepError(
            f"{layout.uri(work_plan.work_dir)}: {len(missing)} of {len(work_plan.units)} units are not done "
            f"(first: {missing[:5]}); run them before finishing"
        )
    with layout.hold(wait_s=5):
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
    # The split too: verify compares per-class counts per split, and a val file name may repeat a train one.
    result.skipped.append(
        {"name": item.name, "synset": item.synset, "split": result.split, "reason": exc.reason}
    )
    return None


def check_on_bad_image(value: str) -> str:
    if value not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image must be one of {ON_BAD_IMAGE}, got {value!r}")
    return value
