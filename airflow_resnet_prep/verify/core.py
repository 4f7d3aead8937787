"""Check a prepared data set against its ``manifest.json`` (docs/formats.md, Checks): the work behind ``verify``.

Meant for a copy (the training nodes' NVMe after ``cp -r``, another bucket, a download of the prefix):
it needs nothing but the data_dir's ``manifest.json`` and output folder, no sources, no catalog, no
work state. Every output byte is read once, spread over processes by segments
(:mod:`airflow_resnet_prep.verify.scan`); what they find is then checked against the manifest here:

- every file the manifest lists is there, with its size, its CRC-32C and its record count;
- no other file that looks like an output sits in the folder (readers glob ``train-*``);
- TFRecords: both framing CRCs of every record, the features docs/formats.md (TFRecords) lists, labels = 1 + the class's
  index, and the DALI ``.idx`` lines equal to the records' offsets and sizes;
- RecordIO: valid framing, ``.lst`` line *i* equal to record *i*'s id and label, ``.idx`` line *i*
  equal to its id and offset, labels = the 0-based index of the class named by the ``.lst`` path;
- per split and class, as many records as the manifest's class counts minus the images it lists as left out;
- with ``decode``: every image decodes with TensorFlow's ``decode_jpeg`` (what the reference trainer uses).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from typing import Any

from airflow_resnet_prep.catalog.model import Source, export_connections
from airflow_resnet_prep.converters.pool import portable_error, process_pool, resolve_workers
from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.formats import recordio
from airflow_resnet_prep.formats.crc32c import combine_all, from_hex, to_hex
from airflow_resnet_prep.layout import MANIFEST, RECORDIO, TFRECORDS, DataDir
from airflow_resnet_prep.layout import WEBDATASET as WEBDATASET_DIR
from airflow_resnet_prep.progress import Progress
from airflow_resnet_prep.verify.scan import (
    NVIDIA,
    REFERENCE,
    WEBDATASET,
    Finding,
    Segment,
    SegmentResult,
    compare_lines,
    scan,
)

log = logging.getLogger(__name__)

# A large file (the nvidia .rec) is cut into segments of about this size, at record heads its .idx
# names, so that several processes share it; never fewer than 4 segments per process when it is large.
SEGMENT_BYTES = 256 << 20
MIN_SEGMENT_BYTES = 16 << 20
LIST_PER_FILE = 20  # record-level findings listed per file and kind before "and N more"


@dataclass
class VerifyReport:
    """What ``verify`` found; ``ok`` only when nothing is wrong."""

    location: str
    implementation: str = "?"
    decode: bool = False
    files: int = 0
    bytes: int = 0
    records: int = 0
    decoded: int = 0
    seconds: float = 0.0
    problems: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not a failure

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        head = (
            f"{self.location}: {self.implementation}, {self.files:,} files, {self.bytes / 1e9:,.2f} GB, "
            f"{self.records:,} records{f', {self.decoded:,} images decoded' if self.decode else ''} "
            f"in {self.seconds:,.1f} s"
        )
        out = [head]
        out += [f"note: {n}" for n in self.notes]
        out += [f"FAIL {p}" for p in self.problems]
        out.append("OK: everything matches the manifest" if self.ok else f"{len(self.problems):,} problems")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "implementation": self.implementation,
            "ok": self.ok,
            "decode": self.decode,
            "files": self.files,
            "bytes": self.bytes,
            "records": self.records,
            "decoded": self.decoded,
            "seconds": round(self.seconds, 3),
            "problems": [str(p) for p in self.problems],
            "notes": self.notes,
        }


def verify(
    data_dir: str | os.PathLike[str] | DataDir,
    *,
    decode: bool = False,
    workers: int = 0,
    conn_id: str | None = None,
    segment_bytes: int | None = None,
) -> VerifyReport:
    """Check the data set at ``data_dir`` (path or ``s3://`` / ``gs://`` URI) against its manifest."""
    started = time.monotonic()
    layout = DataDir.at(data_dir, conn_id)
    report = VerifyReport(layout.url, decode=decode)
    manifest = _manifest(layout, report)
    if manifest is None:
        report.seconds = time.monotonic() - started
        return report
    impl = report.implementation = str(manifest.get("implementation"))
    folder = {REFERENCE: TFRECORDS, NVIDIA: RECORDIO, WEBDATASET: WEBDATASET_DIR}[impl]
    outputs: dict[str, dict[str, Any]] = manifest.get("outputs", {})
    present = {o.key: o.size for o in layout.store.list(folder)}
    report.files = len(outputs)
    _check_files(report, outputs, present, folder, impl)
    if decode:
        from airflow_resnet_prep.formats.tfdecode import load_tensorflow

        load_tensorflow()  # before any fork; a missing TensorFlow fails here, naming the extra
    classes = sorted(manifest.get("classes", {}).get("train", {}))
    segments = _segments(layout, outputs, present, impl, workers, segment_bytes)
    results = _run(layout, segments, classes, decode, workers)
    by_file: dict[str, list[SegmentResult]] = {}
    for r in sorted(results, key=lambda r: (r.segment.key, r.segment.number)):
        by_file.setdefault(r.segment.key, []).append(r)
        report.problems.extend(r.findings)
        report.decoded += r.decoded
        report.bytes += r.size
    for key, parts in by_file.items():
        _check_checksum(report, key, outputs.get(key, {}), present.get(key), parts)
        report.records += sum(p.records for p in parts)
    expected = _expected_counts(manifest)
    if impl == REFERENCE:
        _check_shards(layout, report, outputs, present, by_file, expected, TFRECORDS)
    elif impl == WEBDATASET:
        lengths = _check_shards(layout, report, outputs, present, by_file, expected, WEBDATASET_DIR)
        _check_webdataset_info(layout, report, outputs, present, lengths)
    else:
        _check_nvidia(layout, report, outputs, present, by_file, expected, classes)
    report.seconds = time.monotonic() - started
    return report


# -- the manifest and the files -----------------------------------------------------------------------
def _manifest(layout: DataDir, report: VerifyReport) -> dict[str, Any] | None:
    try:
        raw = layout.store.read_bytes(MANIFEST)
    except FileNotFoundError:
        report.problems.append(
            Finding(
                MANIFEST, "missing: not a finished output (it is written last), or not the data_dir's root"
            )
        )
        return None
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        report.problems.append(Finding(MANIFEST, f"not valid JSON ({exc})"))
        return None
    if not isinstance(manifest, dict) or manifest.get("implementation") not in (
        REFERENCE,
        NVIDIA,
        WEBDATASET,
    ):
        report.problems.append(Finding(MANIFEST, "not a manifest of this tool (no implementation recorded)"))
        return None
    if not manifest.get("checks", {}).get("crc32c"):
        report.notes.append(
            "the manifest records no CRC-32C for some files (written by an older version): those are "
            "checked for size, framing and records, not for every byte"
        )
    return manifest


def _check_files(
    report: VerifyReport, outputs: dict[str, dict], present: dict[str, int], folder: str, impl: str
) -> None:
    from airflow_resnet_prep.pipeline import make_converter

    for key, stats in sorted(outputs.items()):
        size = present.get(key)
        if size is None:
            report.problems.append(Finding(key, "missing"))
        elif size != stats.get("size"):
            what = "cut short" if size < stats.get("size", 0) else "longer than written"
            report.problems.append(
                Finding(key, f"{size:,} bytes, the manifest says {stats.get('size'):,} ({what})")
            )
    is_output = make_converter(impl, {}).is_output_name
    for key in sorted(set(present) - set(outputs)):
        name = key[len(folder) + 1 :]
        if "/" not in name and is_output(name):
            report.problems.append(
                Finding(
                    key,
                    "not in the manifest, but named like an output: a reader listing the folder would read it",
                )
            )


def _segments(
    layout: DataDir,
    outputs: dict[str, dict],
    present: dict[str, int],
    impl: str,
    workers: int,
    segment_bytes: int | None,
) -> list[Segment]:
    """The data files (shards, .rec) cut into segments that start at record heads."""
    data_keys = [k for k in sorted(outputs) if k in present and _is_data_file(k, impl)]
    segments: list[Segment] = []
    for key in data_keys:
        size = present[key]
        target = segment_bytes or max(
            MIN_SEGMENT_BYTES, min(SEGMENT_BYTES, size // (4 * resolve_workers(workers)) + 1)
        )
        cuts = [0]
        if impl == NVIDIA and size > target:
            cuts = _rec_cuts(layout, key, size, target)
        bounds = [*cuts, size]
        segments.extend(Segment(key, bounds[i], bounds[i + 1], impl, i) for i in range(len(cuts)))
    return segments


def _is_data_file(key: str, impl: str) -> bool:
    """The files holding records (scanned by segments); the others are small text files read whole."""
    if impl == NVIDIA:
        return key.endswith(".rec")
    if impl == WEBDATASET:
        return key.endswith(".tar")
    return not key.endswith(".idx")


def _rec_cuts(layout: DataDir, rec: str, size: int, target: int) -> list[int]:
    """Where to cut ``rec``: offsets from its .idx about ``target`` bytes apart, each checked to hold a
    record head (the magic and a first-part flag; RecordIO escapes the magic everywhere else at aligned
    positions), so a damaged .idx only costs parallelism, never a false finding."""
    idx = rec.removesuffix(".rec") + ".idx"
    try:
        text = layout.store.read_bytes(idx).decode("utf-8", "replace")
    except FileNotFoundError:
        return [0]
    cuts = [0]
    for line in text.splitlines():
        try:
            offset = int(line.split("\t")[1])
        except (IndexError, ValueError):
            continue
        if offset - cuts[-1] < target or offset >= size:
            continue
        if offset + 8 <= size and recordio.is_record_head(layout.store.read_range(rec, offset, 8)):
            cuts.append(offset)
    return cuts


def _run(
    layout: DataDir, segments: list[Segment], classes: list[str], decode: bool, workers: int
) -> list[SegmentResult]:
    total_mib = sum(s.end - s.start for s in segments) / (1 << 20)
    progress = Progress(f"verify {layout.url}", max(1, round(total_mib)), unit="MiB")
    n = min(resolve_workers(workers), len(segments)) if segments else 1
    results: list[SegmentResult] = []

    def done(r: SegmentResult) -> None:
        results.append(r)
        progress.advance(round((r.segment.end - r.segment.start) / (1 << 20)))

    if n <= 1:
        for seg in segments:
            done(scan(layout.store, seg, classes, decode))
    else:
        # Worker processes reach a bucket by the connection in their environment (as conversion units do).
        export_connections([Source("dir", layout.address)])
        with process_pool(n) as pool:
            futures = [pool.submit(_scan_in_worker, layout.store, seg, classes, decode) for seg in segments]
            for future in as_completed(futures):
                done(future.result())
    progress.finish()
    return results


def _scan_in_worker(store: Any, segment: Segment, classes: list[str], decode: bool) -> SegmentResult:
    try:
        return scan(store, segment, classes, decode)
    except Exception as exc:
        raise portable_error(exc) from None


# -- checks against the manifest ------------------------------------------------------------------------
def _check_checksum(
    report: VerifyReport, key: str, stats: dict, size: int | None, parts: list[SegmentResult]
) -> None:
    recorded = stats.get("crc32c")
    if recorded is None or size != stats.get("size"):
        return  # nothing recorded, or the size finding already says the bytes differ
    crc = combine_all((p.crc, p.size) for p in parts)
    if crc != from_hex(recorded):
        report.problems.append(
            Finding(
                key,
                f"CRC-32C {to_hex(crc)}, the manifest says {recorded}: its bytes changed since it was written",
            )
        )


def _check_small(
    report: VerifyReport, layout: DataDir, key: str, stats: dict, present: dict[str, int]
) -> str | None:
    """A small text output (.idx, .lst): its content (None when missing), after checking its CRC."""
    if key not in present:
        return None
    data = layout.store.read_bytes(key)
    report.bytes += len(data)
    recorded = stats.get("crc32c")
    if recorded is not None and len(data) == stats.get("size"):
        from airflow_resnet_prep.formats.crc32c import crc32c

        if crc32c(data) != from_hex(recorded):
            report.problems.append(
                Finding(
                    key, f"CRC-32C {to_hex(crc32c(data))}, the manifest says {recorded}: its bytes changed"
                )
            )
    return data.decode("utf-8", "replace")


def _expected_counts(manifest: dict[str, Any]) -> dict[str, Counter]:
    """Per split, records per class: the manifest's class counts minus the images it lists as left out."""
    expected = {split: Counter(counts) for split, counts in manifest.get("classes", {}).items()}
    for s in manifest.get("skipped", []):
        split = s.get("split") or ("val" if str(s.get("name", "")).startswith("ILSVRC2012_val_") else "train")
        expected.setdefault(split, Counter())[str(s.get("synset"))] -= 1
    return expected


def _check_counts(report: VerifyReport, split: str, where: str, found: Counter, expected: Counter) -> None:
    wrong = [
        f"{synset}: {found.get(synset, 0):,} (manifest: {expected.get(synset, 0):,})"
        for synset in sorted(set(found) | set(expected))
        if found.get(synset, 0) != expected.get(synset, 0)
    ]
    if wrong:
        report.problems.append(
            Finding(
                where,
                f"{split} records per class differ from the manifest in {len(wrong)} classes: "
                + "; ".join(wrong[:10])
                + (" ..." if len(wrong) > 10 else ""),
            )
        )


def _limited(report: VerifyReport, key: str, findings: list[Finding]) -> None:
    report.problems.extend(findings[:LIST_PER_FILE])
    if len(findings) > LIST_PER_FILE:
        report.problems.append(Finding(key, f"and {len(findings) - LIST_PER_FILE:,} more like these"))


def _records_match(report: VerifyReport, key: str, stats: dict, found: int) -> None:
    if "records" in stats and stats["records"] != found:
        report.problems.append(Finding(key, f"{found:,} records, the manifest says {stats['records']:,}"))


def _check_shards(
    layout: DataDir,
    report: VerifyReport,
    outputs: dict[str, dict],
    present: dict[str, int],
    by_file: dict[str, list[SegmentResult]],
    expected: dict[str, Counter],
    folder: str,
) -> dict[str, dict[str, int]]:
    """Shard files (TFRecords, WebDataset tars): each one's records against the manifest, its images
    that do not decode, its ``.idx`` (its CRC; for TFRecords also its lines against the records
    found); then each split's records per class. Returns the records of each shard by split and name."""
    from airflow_resnet_prep.converters.webdataset import SPLIT_NAME

    found = {"train": Counter(), "val": Counter()}
    lengths: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    for key, parts in by_file.items():
        name = key.rpartition("/")[2]
        # Reference shards are train-*/validation-*; WebDataset's imagenet-train-*/imagenet-val-*.
        split = "train" if name.startswith("train-") or f"-{SPLIT_NAME['train']}-" in name else "val"
        records = sum(p.records for p in parts)
        lengths[split][name] = records
        _records_match(report, key, outputs.get(key, {}), records)
        for p in parts:
            found[split].update(p.classes)
            _limited(
                report,
                key,
                [
                    Finding(key, reason, pos, offset, image)
                    for offset, pos, reason, image in p.decode_failures
                ],
            )
        idx_key = f"{key}.idx"
        if idx_key in outputs:
            text = _check_small(report, layout, idx_key, outputs[idx_key], present)
            if text is not None and folder == TFRECORDS:  # WebDataset's .idx was compared by the scan
                lines = [(o, s) for p in parts for o, s in zip(p.offsets, p.sizes, strict=True)]
                _compare_lines(report, idx_key, text, [f"{o} {s}" for o, s in lines], "the record")
    for split in ("train", "val"):
        _check_counts(
            report, split, f"{folder}/ ({split} shards)", found[split], expected.get(split, Counter())
        )
    return lengths


def _compare_lines(report: VerifyReport, key: str, text: str, wanted: list[str], what: str) -> None:
    report.problems.extend(compare_lines(key, text, wanted, what))


def _check_webdataset_info(
    layout: DataDir, report: VerifyReport, outputs: dict[str, dict], present: dict[str, int], lengths: dict
) -> None:
    """``_info.json`` against the shards found."""
    from airflow_resnet_prep.converters.webdataset import INFO, SPLIT_NAME

    info_key = f"{WEBDATASET_DIR}/{INFO}"
    text = _check_small(report, layout, info_key, outputs.get(info_key, {}), present)
    if text is not None:
        _check_info(report, info_key, text, lengths, SPLIT_NAME)


def _check_info(
    report: VerifyReport, key: str, text: str, lengths: dict[str, dict[str, int]], names: dict[str, str]
) -> None:
    """``_info.json`` as timm's WebDataset reader reads it: ``splits.<name>`` with ``name``,
    ``num_samples``, ``filenames`` (relative) and ``shard_lengths``, equal to the shards found."""
    try:
        splits = json.loads(text)["splits"]
    except (ValueError, KeyError, TypeError):
        report.problems.append(Finding(key, "not JSON with a 'splits' object (what timm's reader loads)"))
        return
    for split, name in names.items():
        info = splits.get(name) if isinstance(splits, dict) else None
        shards = sorted(lengths[split])
        want = {
            "name": name,
            "num_samples": sum(lengths[split].values()),
            "filenames": shards,
            "shard_lengths": [lengths[split][s] for s in shards],
        }
        if not isinstance(info, dict):
            report.problems.append(Finding(key, f"no splits.{name}"))
            continue
        for field_name, value in want.items():
            if info.get(field_name) != value:
                shown = json.dumps(info.get(field_name))
                report.problems.append(
                    Finding(
                        key,
                        f"splits.{name}.{field_name} is {shown[:120]}; the shards say {json.dumps(value)[:120]}",
                    )
                )


def _check_nvidia(
    layout: DataDir,
    report: VerifyReport,
    outputs: dict[str, dict],
    present: dict[str, int],
    by_file: dict[str, list[SegmentResult]],
    expected: dict[str, Counter],
    classes: list[str],
) -> None:
    for split in ("train", "val"):
        rec, idx, lst = (f"{RECORDIO}/{split}.{ext}" for ext in ("rec", "idx", "lst"))
        parts = by_file.get(rec, [])
        offsets = [o for p in parts for o in p.offsets]
        ids = [i for p in parts for i in p.ids]
        labels = [x for p in parts for x in p.labels]
        _records_match(report, rec, outputs.get(rec, {}), len(offsets))
        lst_text = _check_small(report, layout, lst, outputs.get(lst, {}), present)
        idx_text = _check_small(report, layout, idx, outputs.get(idx, {}), present)
        for key, text in ((lst, lst_text), (idx, idx_text)):
            if text is not None:
                _records_match(report, key, outputs.get(key, {}), text.count("\n"))
        if idx_text is not None and parts:
            _compare_lines(
                report, idx, idx_text, [f"{i}\t{o}" for i, o in zip(ids, offsets, strict=True)], "the .rec"
            )
        if lst_text is None:
            continue
        split_classes = sorted(expected.get(split, {})) or classes
        failed = {index for p in parts for _, index, _, _ in p.decode_failures}
        name_of, found, findings = _check_lst(
            lst, lst_text, ids, labels, offsets, split_classes, bool(parts), failed
        )
        _limited(report, lst, findings)
        for p in parts:
            _limited(
                report,
                rec,
                [
                    Finding(
                        rec, reason, _position(offsets, offset), offset, name_of.get(index, f"id {index}")
                    )
                    for offset, index, reason, _ in p.decode_failures
                ],
            )
        _check_counts(report, split, lst, found, expected.get(split, Counter()))


def _check_lst(
    key: str,
    text: str,
    ids: list[int],
    labels: list[float],
    offsets: list[int],
    classes: list[str],
    have_rec: bool,
    named: set[int],
) -> tuple[dict[int, str], Counter, list[Finding]]:
    """Each .lst line against the record at the same position; returns id -> path for the ids in
    ``named`` (images to name in findings; not all 1.28 M), per-class counts (of lines whose record
    matches) and the findings."""
    label_of: dict[str, int] = {synset: i for i, synset in enumerate(classes)}
    name_of: dict[int, str] = {}
    found: Counter = Counter()
    findings: list[Finding] = []
    for i, line in enumerate(text.splitlines()):
        fields = line.split("\t")
        try:
            index, label, path = int(fields[0]), float(fields[1]), fields[2]
        except (IndexError, ValueError):
            findings.append(
                Finding(key, f"line {i + 1:,} is not 'index<TAB>label<TAB>path': {line[:80]!r}", i)
            )
            continue
        if index in named:
            name_of[index] = path
        synset = path.partition("/")[0]
        if label_of.get(synset) != label:
            findings.append(
                Finding(
                    key, f"label {label:f} for class {synset}, expected {label_of.get(synset)}", i, None, path
                )
            )
        if have_rec:
            if i >= len(ids):
                findings.append(
                    Finding(key, f"line {i + 1:,}: no record at this position in the .rec", i, None, path)
                )
                continue
            if ids[i] != index or labels[i] != label:
                findings.append(
                    Finding(
                        key,
                        f"line {i + 1:,} says id {index}, label {label:f}; the .rec's record there has id "
                        f"{ids[i]}, label {labels[i]:f}",
                        i,
                        offsets[i],
                        path,
                    )
                )
                continue
        found[synset] += 1
    return name_of, found, findings


def _position(offsets: list[int], offset: int) -> int:
    import bisect

    return bisect.bisect_left(offsets, offset)


def check_or_raise(report: VerifyReport, limit: int = 50) -> VerifyReport:
    """``report`` when ok, else a PrepError listing the first ``limit`` problems (for the operator)."""
    if report.ok:
        return report
    listed = "\n".join(f"  {p}" for p in report.problems[:limit])
    more = f"\n  ... and {len(report.problems) - limit:,} more" if len(report.problems) > limit else ""
    raise PrepError(f"{report.location}: verify found {len(report.problems):,} problems:\n{listed}{more}")
