"""The numbers the report shows, from the manifest and the catalogs (streamed: 1.28 M rows at full scale)."""

from __future__ import annotations

import io
import json
import math
import os
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from airflow_resnet_prep.catalog.model import ImageRef, Source
from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.storage import Store

SPLITS = ("train", "val")
# A class is "far from the mean" when its count differs from its split's mean by more than this
# fraction of the mean. Relative rather than in standard deviations: it reads the same at any scale
# and says plainly what it means in images, whereas a set of a few classes can never reach 3 sigma
# (with n classes no count is more than (n - 1) / sqrt(n) sigma from the mean).
FAR_FRACTION = 0.25
# Text files (catalogs, .idx, .lst) are streamed in blocks this large: one request each in a bucket.
TEXT_BLOCK = 4 << 20


@dataclass(frozen=True)
class ClassRow:
    """One class: its label (as the output stores it: position in the sorted synsets) and images per split."""

    synset: str
    label: int
    counts: dict[str, int]
    far: dict[str, float]  # split -> relative deviation from the mean, only where far


@dataclass(frozen=True)
class ClassStats:
    """Every class in label order, and each split's mean number of images per class."""

    rows: list[ClassRow]
    mean: dict[str, float]

    @property
    def outliers(self) -> list[ClassRow]:
        return [r for r in self.rows if r.far]


def class_stats(manifest: dict[str, Any]) -> ClassStats:
    """Per-class counts of every split, with the classes far from their split's mean flagged."""
    classes = manifest.get("classes", {})
    synsets = sorted({s for split in SPLITS for s in classes.get(split, {})})
    mean = {}
    for split in SPLITS:
        counts = classes.get(split, {})
        # The mean over every class of the set: a class absent from a split counts as 0 there.
        mean[split] = sum(counts.values()) / len(synsets) if synsets else 0.0
    # The label each implementation stores: im2rec counts classes from 0; the reference TFRecords from 1
    # (0 is the background class of the TF-slim models).
    first = 1 if manifest.get("implementation") == "reference" else 0
    rows = []
    for label, synset in enumerate(synsets, start=first):
        counts = {split: int(classes.get(split, {}).get(synset, 0)) for split in SPLITS}
        far = {}
        for split in SPLITS:
            if mean[split] > 0:
                deviation = counts[split] / mean[split] - 1
                if abs(deviation) > FAR_FRACTION:
                    far[split] = deviation
        rows.append(ClassRow(synset, label, counts, far))
    return ClassStats(rows, mean)


@dataclass
class SizeStats:
    """Byte sizes of one split's images: kept as a compact array so percentiles are exact."""

    sizes: array = field(default_factory=lambda: array("q"))

    def summary(self) -> dict[str, float]:
        """Count, total, mean, min, 1st percentile, median, 99th percentile and max (bytes)."""
        if not self.sizes:
            return {"count": 0}
        ordered = sorted(self.sizes)
        n, total = len(ordered), sum(self.sizes)

        def pct(p: float) -> int:
            return ordered[min(n - 1, int(p * n))]

        return {
            "count": n,
            "total": total,
            "mean": total / n,
            "min": ordered[0],
            "p1": pct(0.01),
            "median": pct(0.5),
            "p99": pct(0.99),
            "max": ordered[-1],
        }


@dataclass
class CatalogScan:
    """What one streamed pass over the catalogs found: image sizes, and the refs of named images."""

    sizes: dict[str, SizeStats]
    sources: dict[str, list[Source]]
    found: dict[tuple[str, str], tuple[str, ImageRef]]  # (synset, name) -> (split, ref)
    errors: list[str]


def open_text(store: Store, key: str) -> io.TextIOWrapper:
    """``key`` of ``store`` as UTF-8 text with ``\n`` lines, streamed in blocks of :data:`TEXT_BLOCK`
    (a local file is read as one; an object in a bucket with one ranged GET per block)."""
    return io.TextIOWrapper(store.open_read(key, block_size=TEXT_BLOCK), encoding="utf-8", newline="\n")


def scan_catalogs(store: Store, catalog_key: str, wanted: Iterable[tuple[str, str]]) -> CatalogScan:
    """Stream ``train.tsv`` and ``val.tsv`` under ``catalog_key`` of the data_dir's ``store``: every
    image's size, and the refs of the ``wanted`` images.

    Never holds the catalog in memory (only 8 bytes per image for the sizes). A missing or damaged
    catalog is reported in ``errors`` rather than raised: the report still shows everything else.
    """
    wanted_set = set(wanted)
    wanted_names = {name for _, name in wanted_set}
    scan = CatalogScan({s: SizeStats() for s in SPLITS}, {}, {}, [])
    for split in SPLITS:
        key = f"{catalog_key}/{split}.tsv"
        add = scan.sizes[split].sizes.append  # the hot loop: 1.28 M rows, no attribute look-ups
        try:
            with open_text(store, key) as fh:
                header = json.loads(fh.readline()[2:])
                scan.sources[split] = [Source(s["kind"], s["path"]) for s in header["sources"]]
                for line in fh:
                    fields = line.split("\t")  # the last field keeps its "\n" until needed
                    if len(fields) != 6:
                        raise ValueError(f"line with {len(fields)} fields")
                    add(int(fields[4]))
                    if fields[1] in wanted_names and (fields[0], fields[1]) in wanted_set:
                        ref = ImageRef(
                            fields[0],
                            fields[1],
                            int(fields[2]),
                            int(fields[3]),
                            int(fields[4]),
                            fields[5].rstrip("\n"),
                        )
                        scan.found[fields[0], fields[1]] = (split, ref)
        except (OSError, ValueError, KeyError, TypeError, PrepError) as exc:
            scan.errors.append(f"{store.uri(key)}: {exc}")
    return scan


# -- histograms --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Histogram:
    edges: list[float]  # len(counts) + 1 bin edges
    counts: dict[str, list[int]]  # series -> count per bin
    log: bool


def log_histogram(series: dict[str, Iterable[int]], per_octave: int = 4) -> Histogram:
    """Counts in bins of 1/``per_octave`` octave (log scale), cropped to the bins that hold values.

    Edges are fixed powers of 2^(1/per_octave) bytes, so reports of different outputs bin alike.
    """
    top = 40 * per_octave  # 1 B to 1 TiB
    edges = [2 ** (k / per_octave) for k in range(top + 1)]
    counts = {}
    for name, values in series.items():
        # Bin k holds [2^(k/per_octave), 2^((k+1)/per_octave)); log2 is ~5x faster than bisect here.
        found = Counter(int(math.log2(v) * per_octave) if v > 1 else 0 for v in values)
        bins = [0] * top
        for k, n in found.items():
            bins[min(top - 1, k)] += n
        counts[name] = bins
    used = [i for i in range(top) if any(c[i] for c in counts.values())]
    if not used:
        return Histogram([], {name: [] for name in series}, True)
    a, b = used[0], used[-1] + 1
    return Histogram(edges[a : b + 1], {n: c[a:b] for n, c in counts.items()}, True)


def linear_histogram(series: dict[str, list[int]], bins: int = 24) -> Histogram:
    """Counts in ``bins`` equal bins between the smallest and the largest value of all series."""
    values = [v for vs in series.values() for v in vs]
    if not values:
        return Histogram([], {name: [] for name in series}, False)
    lo, hi = min(values), max(values)
    if hi == lo:
        lo, hi = lo - 1, hi + 1  # one bin around a single value
        bins = 1
    width = (hi - lo) / bins
    edges = [lo + i * width for i in range(bins + 1)]
    counts = {}
    for name, vs in series.items():
        c = [0] * bins
        for v in vs:
            c[min(bins - 1, int((v - lo) / width))] += 1
        counts[name] = c
    return Histogram(edges, counts, False)


# split -> [(output name relative to data_dir, size in bytes, records)]
DataFiles = dict[str, list[tuple[str, int, int]]]


def data_files(manifest: dict[str, Any]) -> DataFiles:
    """The output files that hold images (TFRecord or tar shards, or ``.rec``), per split: (name, size,
    records).

    Index, list and description files (``.idx``, ``.lst``, ``_info.json``) are left out: they are not what the trainer reads images from.
    """
    out: DataFiles = {s: [] for s in SPLITS}
    for name, stats in sorted(manifest.get("outputs", {}).items()):
        base = os.path.basename(name)
        if base.endswith((".idx", ".lst", ".json")):
            continue
        # reference and nvidia names start with the split; webdataset's carry it after the data set's
        split = "train" if base.startswith("train") or "-train-" in base else "val"
        out[split].append((name, int(stats.get("size", 0)), int(stats.get("records", 0))))
    return out
