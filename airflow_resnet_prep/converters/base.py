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
one only with ``force``. A task reads ``plan.json`` once, into a :class:`Plan` that carries its data_dir,
and hands that to whatever runs its units (:mod:`.local`), worker processes included.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import math
import operator
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from airflow_resnet_prep.catalog.model import (
    DIR,
    ImageReader,
    ImageRef,
    Source,
    SplitCatalog,
    connection_env,
    gc_paused,
)
from airflow_resnet_prep.errors import BadImageError, OutputConflictError, PrepError
from airflow_resnet_prep.formats.crc32c import to_hex
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
    """A unit as a format proposes it, with its items; the plan numbers it and keeps it as a :class:`Unit`."""

    split: str
    outputs: list[str]  # output names, relative to the unit's folder (format decides)
    items: list[WorkItem]


@dataclass
class Unit:
    """A unit of a plan, as ``plan.json`` lists it (its items are in a file of their own)."""

    id: int
    split: str
    outputs: list[str]
    items: int  # how many


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

    def add_output(self, name: str, size: int, records: int, crc: int) -> None:
        """List an output the unit wrote; finish checks its size and the manifest carries its CRC-32C."""
        self.outputs[name] = {"size": size, "records": records, "crc32c": to_hex(crc)}


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
    def write_unit(self, plan: Plan, unit: Unit, items: list[WorkItem]) -> UnitResult:
        """Write the outputs of ``unit`` (whole or not at all); :func:`run_plan_unit` records it done."""

    @abstractmethod
    def finish(self, plan: Plan, results: list[UnitResult]) -> dict[str, dict[str, int]]:
        """Put the outputs under their final names (if units did not) and return them: name -> stats."""

    def prepare_process(self) -> None:
        """Load heavy libraries once in the parent, before worker processes are forked."""

    def prepare_plan(self, plan: Plan) -> None:
        """Set up what the units of a new plan share (kept in ``plan.extra``), before it is saved."""

    def discard_plan(self, data_dir: DataDir, saved: dict[str, Any] | None) -> None:
        """Free what an abandoned plan (its saved form, when there is one) holds outside its work folder."""

    def run_local(self, plan: Plan, workers: int) -> bool:
        """A format's faster way to run every unit of ``plan`` on this machine, when it has one.

        Must leave the state :func:`.local.run_units` would (outputs and done records) and return True,
        or do nothing and return False; the units are then run one by one.
        """
        return False


@dataclass
class Plan:
    """A conversion plan as ``plan.json`` holds it, and the data_dir it belongs to."""

    implementation: str
    plan_id: str
    params: dict[str, Any]
    classes: list[str]
    sources: dict[str, list[dict[str, str]]]  # split -> catalog sources
    units: list[Unit]  # unit i is units[i]
    counts: dict[str, int]
    work_dir: str  # key of the plan's folder under data_dir: work/<implementation>
    extra: dict[str, Any] = field(default_factory=dict)  # what a format keeps for its units
    data_dir: DataDir = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        saved = {k: v for k, v in self.__dict__.items() if k != "data_dir"}
        saved["units"] = [asdict(unit) for unit in self.units]
        return saved

    @classmethod
    def from_dict(cls, saved: dict[str, Any], data_dir: DataDir) -> Plan:
        return cls(
            **{
                **saved,
                "units": [Unit(**unit) for unit in saved["units"]],
                # plans of older versions held a local path
                "work_dir": work_key(saved["implementation"]),
            },
            data_dir=data_dir,
        )

    @classmethod
    def load(cls, data_dir: DataDir, implementation: str) -> Plan:
        """The plan of ``implementation`` in ``data_dir``."""
        key = plan_key(implementation)
        saved = data_dir.read_json(key)
        if saved is None:
            raise PrepError(f"{data_dir.uri(key)}: no conversion plan; run the plan step first")
        return cls.from_dict(saved, data_dir)

    def save(self) -> None:
        self.data_dir.write_json(plan_key(self.implementation), self.to_dict())

    def connection_env(self) -> dict[str, str]:
        """What a worker process needs in its environment to reach the data_dir and the sources in a
        bucket (:meth:`~airflow_resnet_prep.storage.Store.connection_env`): a forked worker must not ask
        the task's supervisor for a connection, a spawned one cannot."""
        data_dir = Source(DIR, self.data_dir.address)
        return connection_env([data_dir, *(s for split in self.sources for s in self.split_sources(split))])

    def unit_items_key(self, unit_id: int) -> str:
        return f"{self.work_dir}/units/{unit_id:05d}.tsv"

    def unit_done_key(self, unit_id: int) -> str:
        return f"{self.work_dir}/done/{unit_id:05d}.json"

    def unit_lock_key(self, unit_id: int) -> str:
        """Held while the unit is written (:func:`run_plan_unit`); a one-machine path that writes every
        unit at once checks that nobody holds one."""
        return f"{self.work_dir}/done/{unit_id:05d}.lock"

    def unit_done_path(self, unit_id: int) -> Path:
        """The done record's local path (local data_dir only: the one-machine path and tests)."""
        return self.data_dir.path(self.unit_done_key(unit_id))

    def done(self, unit_id: int) -> UnitResult | None:
        saved = self.data_dir.read_json(self.unit_done_key(unit_id))
        return None if saved is None else UnitResult.from_dict(saved)

    def save_done(self, result: UnitResult) -> None:
        """Record the unit ``result.unit`` done: it will not run again, and finish counts it."""
        # On one line: a RecordIO unit's record holds an offset per image.
        self.data_dir.write_json(self.unit_done_key(result.unit), result.to_dict(), indent=None)

    def split_sources(self, split: str) -> list[Source]:
        return [Source(s["kind"], s["path"]) for s in self.sources[split]]

    def load_items(self, unit_id: int) -> list[WorkItem]:
        with gc_paused():
            return parse_items(self.unit_item_columns(unit_id))

    def unit_item_columns(self, unit_id: int) -> list[list[str]]:
        """The fields of the unit's item list, a list per :class:`WorkItem` field (as text)."""
        key = self.unit_items_key(unit_id)
        lines = self.data_dir.store.read_bytes(key).decode("utf-8").split("\n")
        if not lines[-1]:  # split at line feeds only: a name may hold any other line separator
            lines.pop()
        if set(map(str.count, lines, itertools.repeat("\t"))) - {_ITEM_FIELDS - 1}:
            raise PrepError(
                f"{self.data_dir.uri(key)}: damaged item list; rerun the plan step with force=true"
            )
        fields = "\t".join(lines).split("\t") if lines else []
        return [fields[i::_ITEM_FIELDS] for i in range(_ITEM_FIELDS)]


def plan_key(implementation: str) -> str:
    return f"{work_key(implementation)}/plan.json"


# A unit's item list: a line per WorkItem, its fields in order, tab-separated.
_ITEM_FIELDS = len(WorkItem._fields)
_ITEM_LINE = "\t".join(["%s"] * _ITEM_FIELDS) + "\n"
# A WorkItem made in C from a tuple of its fields (the class's own __new__ is a Python call per item).
_new_item = functools.partial(tuple.__new__, WorkItem)


def work_items(
    refs: Sequence[ImageRef], labels: Iterable[int], indexes: Iterable[int], outputs: Iterable[int]
) -> list[WorkItem]:
    """``WorkItem(*ref, label, index, output)`` for each image, made without a Python call per image
    (``outputs`` may run on past the images: ``itertools.repeat``)."""
    return list(map(_new_item, map(operator.add, refs, zip(labels, indexes, outputs, strict=False))))


def parse_items(columns: list[list[str]]) -> list[WorkItem]:
    """The WorkItems whose fields (as text, see :meth:`Plan.unit_item_columns`) are ``columns``."""
    synsets, names, members = columns[0], columns[1], columns[5]
    srcs, offsets, sizes, labels, indexes, outputs = (map(int, columns[i]) for i in (2, 3, 4, 6, 7, 8))
    rows = zip(synsets, names, srcs, offsets, sizes, members, labels, indexes, outputs, strict=True)
    return list(map(_new_item, rows))


def _items_text(items: list[WorkItem]) -> str:
    return "".join(map(_ITEM_LINE.__mod__, items))


def plan(
    converter: Converter,
    data_dir: DataDir | str | os.PathLike[str],
    *,
    force: bool = False,
) -> Plan:
    """Decide every unit of the conversion and write the plan (see the module doc). ``data_dir`` may be
    a path or URI for callers that have not parsed it (the tests, the benchmark)."""
    data_dir = as_data_dir(data_dir)
    work_dir = work_key(converter.implementation)
    with data_dir.hold(wait_s=5):
        with gc_paused():
            catalogs = {split: SplitCatalog.load(data_dir.store, catalog_key(split)) for split in SPLITS}
        if not catalogs["val"].labelled:
            raise PrepError(
                f"{data_dir.uri(catalog_key('val'))}: validation images have no classes yet; run relabel first"
            )
        for split, catalog in catalogs.items():
            if len(catalog) == 0:
                raise PrepError(
                    f"{data_dir.uri(catalog_key(split))}: the {split} split has no images; nothing to convert"
                )
        classes = catalogs["train"].synsets
        key = {
            "implementation": converter.implementation,
            "params": converter.params,
            "catalogs": {split: catalogs[split].sha256 for split in SPLITS},  # of the files' bytes
        }
        plan_id = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

        existing = data_dir.read_json(plan_key(converter.implementation))
        if existing is not None and existing.get("plan_id") == plan_id and not force:
            log.info("resuming plan %s in %s", plan_id, data_dir.uri(work_dir))
            return Plan.from_dict(existing, data_dir)
        _clear_previous(data_dir, converter, existing, force)

        converter.min_unit_bytes = MIN_REMOTE_UNIT_BYTES if data_dir.store.requests_are_costly else 0
        with gc_paused():  # a WorkItem per image, no cycles among them
            specs = [
                spec for split in SPLITS for spec in converter.plan_split(split, catalogs[split], classes)
            ]
        result = Plan(
            implementation=converter.implementation,
            plan_id=plan_id,
            params=converter.params,
            classes=classes,
            sources={s: [{"kind": x.kind, "path": x.path} for x in catalogs[s].sources] for s in SPLITS},
            units=[Unit(i, spec.split, spec.outputs, len(spec.items)) for i, spec in enumerate(specs)],
            counts={s: len(catalogs[s]) for s in SPLITS},
            work_dir=work_dir,
            data_dir=data_dir,
        )
        for unit_id, spec in enumerate(specs):
            data_dir.write_text(result.unit_items_key(unit_id), _items_text(spec.items))
        converter.prepare_plan(result)
        result.save()  # last: a plan.json names only units whose item lists exist
        log.info(
            "plan %s: %d units for %s images (%s)",
            plan_id,
            len(result.units),
            " + ".join(f"{result.counts[s]:,} {s}" for s in SPLITS),
            converter.implementation,
        )
        return result


def as_data_dir(data_dir: DataDir | str | os.PathLike[str]) -> DataDir:
    return data_dir if isinstance(data_dir, DataDir) else DataDir.of(data_dir)


def _clear_previous(data_dir: DataDir, converter: Converter, existing: dict | None, force: bool) -> None:
    """Make room for a new plan, refusing to overwrite what is not clearly ours and finished."""
    work_dir, out_key = work_key(converter.implementation), converter.output_key
    manifest = data_dir.read_json(MANIFEST)
    finished = (
        existing is not None
        and manifest is not None
        and manifest.get("conversion", {}).get("plan_id") == existing.get("plan_id")
    )
    if existing is not None and not finished and not force:
        raise OutputConflictError(
            f"{data_dir.uri(work_dir)}: holds an unfinished conversion with different inputs or params (plan "
            f"{existing.get('plan_id')}); rerun that conversion to finish it, or set force=true to discard it"
        )
    foreign = sorted(
        o.key
        for o in data_dir.store.list(out_key)
        if "/" not in o.key[len(out_key) + 1 :] and converter.is_output_name(o.key.rpartition("/")[2])
    )
    if foreign and existing is None and not force:
        raise OutputConflictError(
            f"{data_dir.uri(out_key)}: already holds {len(foreign)} output files (e.g. "
            f"{foreign[0].rpartition('/')[2]}) that no plan of this tool describes; move them away or set "
            "force=true to replace them"
        )
    if existing is not None or foreign:
        log.info("replacing the previous %s output in %s", converter.implementation, data_dir.uri(out_key))
        if manifest and manifest.get("implementation") == converter.implementation:
            data_dir.delete(MANIFEST)
        for key in foreign:
            data_dir.delete(key)
        # Killed units' partial writes: no unit of the discarded plan will rerun.
        data_dir.discard_partial(out_key)
        converter.discard_plan(data_dir, existing)
        data_dir.delete_tree(work_dir)


def run_plan_unit(converter: Converter, plan: Plan, unit_id: int) -> UnitResult:
    """Run one unit of ``plan`` unless its done record exists; safe to call again after a crash."""
    data_dir = plan.data_dir
    done = plan.done(unit_id)
    if done is not None:
        return done
    lock = plan.unit_lock_key(unit_id)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(data_dir.hold(lock, wait_s=0, transient=True))
        except OutputConflictError as exc:
            # Another process (a second run on this data_dir) is writing this unit: wait for it rather
            # than fail, or two runs that each hold a unit the other needs would both fail. The lock
            # dies with its holder, so this wait ends when the holder finishes or is killed.
            log.info("unit %d: %s; waiting for it", unit_id, exc)
            held.enter_context(data_dir.hold(lock, wait_s=math.inf, transient=True))
        done = plan.done(unit_id)  # another worker may have finished it while we waited
        if done is not None:
            return done
        items = plan.load_items(unit_id)
        started = time.monotonic()
        result = converter.write_unit(plan, plan.units[unit_id], items)
        result.seconds = round(time.monotonic() - started, 3)
        plan.save_done(result)
    return result


def finish(converter: Converter, plan: Plan) -> dict[str, Any]:
    """Check every unit is done, then let the format finalise its outputs; return the summary."""
    results = []
    missing = []
    with gc_paused():  # a RecordIO unit's record holds a list per image
        for unit in plan.units:
            done = plan.done(unit.id)
            if done is None:
                missing.append(unit.id)
            else:
                results.append(done)
    if missing:
        raise PrepError(
            f"{plan.data_dir.uri(plan.work_dir)}: {len(missing)} of {len(plan.units)} units are not done "
            f"(first: {missing[:5]}); run them before finishing"
        )
    with plan.data_dir.hold(wait_s=5):
        outputs = converter.finish(plan, results)
    return summarize(plan, results, outputs)


def summarize(plan: Plan, results: list[UnitResult], outputs: dict[str, dict[str, int]]) -> dict[str, Any]:
    per_split: dict[str, dict[str, Any]] = {}
    for r in results:
        s = per_split.setdefault(r.split, {"records": 0, "bytes_in": 0, "unit_seconds": 0.0})
        s["records"] += r.records
        s["bytes_in"] += r.bytes_in
        s["unit_seconds"] = round(s["unit_seconds"] + r.seconds, 3)
    return {
        "implementation": plan.implementation,
        "plan_id": plan.plan_id,
        "params": plan.params,
        "units": len(plan.units),
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
