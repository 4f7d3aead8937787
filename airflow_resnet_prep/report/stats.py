"""The numbers the report shows, from the manifest and the catalogs (streamed: 1.28 M rows at full scale)."""

from __future__ import annotations

import bisect
import json
import os
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_resnet_prep.catalog.model import ImageRef, Source

SPLITS = ("train", "val")
# A class is "far from the mean" when its count differs from its split's mean by more than this
# fraction of the mean. Relative rather than in standard deviations: real ImageNet train has a long
# tail (732 to 1,300 per class, mean 1,281) that a sigma rule over-flags, and a set of a few classes
# can never reach 3 sigma at all.
FAR_FRACTION = 0.25


@dataclass(frozen=True)
class ClassRow:
    """One class: its label (position in the sorted synsets) and images per split."""

    synset: str
    label: int
    counts: dict[str, int]
    far: dict[str, float]  # split -> relative deviation from the mean, only where far


@dataclass(frozen=True)
class ClassStats:
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
    rows = []
    for label, synset in enumerate(synsets):
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

    def add(self, size: int) -> None:
        self.sizes.append(size)

    def summary(self) -> dict[str, float]:
        if not self.sizes:
            return {"count": 0}
        ordered = sorted(self.sizes)
        n = len(ordered)

        def pct(p: float) -> int:
            return ordered[min(n - 1, int(p * n))]

        return {
            "count": n,
            "total": sum(ordered),
            "mean": sum(ordered) / n,
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


def scan_catalogs(catalog_dir: Path, wanted: Iterable[tuple[str, str]]) -> CatalogScan:
    """Stream ``train.tsv`` and ``val.tsv``: every image's size, and the refs of the ``wanted`` images.

    Never holds the catalog in memory (only 8 bytes per image for the sizes). A missing or damaged
    catalog is reported in ``errors`` rather than raised: the report still shows everything else.
    """
    wanted_set = set(wanted)
    scan = CatalogScan({s: SizeStats() for s in SPLITS}, {}, {}, [])
    for split in SPLITS:
        path = catalog_dir / f"{split}.tsv"
        try:
            with open(path, encoding="utf-8", newline="\n") as fh:
                header = json.loads(fh.readline()[2:])
                scan.sources[split] = [Source(s["kind"], s["path"]) for s in header["sources"]]
                for line in fh:
                    fields = line.rstrip("\n").split("\t")
                    if len(fields) != 6:
                        raise ValueError(f"line with {len(fields)} fields")
                    size = int(fields[4])
                    scan.sizes[split].add(size)
                    key = (fields[0], fields[1])
                    if key in wanted_set:
                        ref = ImageRef(fields[0], fields[1], int(fields[2]), int(fields[3]), size, fields[5])
                        scan.found[key] = (split, ref)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            scan.errors.append(f"{path}: {exc}")
    return scan


# -- histograms --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Histogram:
    edges: list[float]  # len(counts) + 1 bin edges
    counts: dict[str, list[int]]  # series -> count per bin
    log: bool


def log_histogram(series: dict[str, Iterable[int]], per_octave: int = 4) -> Histogram:
    """Counts in bins of 1/``per_octave`` octave (log scale), cropped to the bins that hold values.

    Fixed edges (powers of 2^(1/per_octave) bytes) so one streamed pass could bin too.
    """
    lo_exp, hi_exp = 0, 40 * per_octave  # 1 B to 1 TiB
    edges = [2 ** (k / per_octave) for k in range(lo_exp, hi_exp + 1)]
    counts = {name: [0] * (len(edges) - 1) for name in series}
    for name, values in series.items():
        bins = counts[name]
        for v in values:
            i = min(len(bins) - 1, max(0, bisect.bisect_right(edges, max(v, 1)) - 1))
            bins[i] += 1
    used = [i for i in range(len(edges) - 1) if any(c[i] for c in counts.values())]
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


def data_files(manifest: dict[str, Any]) -> dict[str, list[tuple[str, int, int]]]:
    """The output files that hold images (TFRecord shards or ``.rec``), per split: (name, size, records).

    Index and list files (``.idx``, ``.lst``) are left out: they are not what the trainer reads images from.
    """
    out: dict[str, list[tuple[str, int, int]]] = {s: [] for s in SPLITS}
    for name, stats in sorted(manifest.get("outputs", {}).items()):
        base = os.path.basename(name)
        if base.endswith((".idx", ".lst")):
            continue
        split = "train" if base.startswith("train") else "val"
        out[split].append((name, int(stats.get("size", 0)), int(stats.get("records", 0))))
    return out
