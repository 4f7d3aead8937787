"""A small, synthetic ImageNet in the raw download layout, for tests, demos and benchmarks.

``generate`` writes, under ``out``:

- ``ILSVRC2012_img_train.tar``: a tar of per-synset tars ``nXXXXXXXX.tar``, each holding
  ``nXXXXXXXX_<n>.JPEG`` (as the real download, docs/formats.md, Inputs);
- ``ILSVRC2012_img_val.tar``: flat ``ILSVRC2012_val_%08d.JPEG`` numbered from 1, classes interleaved in a
  seeded order;
- ``imagenet_2012_validation_synset_labels.txt``: line *i* is the synset of validation image *i*;
- ``sample.json``: the arguments and what was generated, written last; its presence with the same
  arguments means the set is complete and is reused as is.

Everything derives from ``seed``: synset ids, file numbers, image sizes and pixels, which files carry
the real set's quirks (a PNG named ``.JPEG``, Adobe CMYK JPEGs, grayscale and progressive JPEGs) and the
validation order. Each image carries its synset in a comment (JPEG COM, PNG tEXt); ``class_of`` reads
it back, so tests can check by content where relabelling put a validation image. Tars are
byte-identical for identical arguments (fixed mtime, uid/gid 0, no user or group names, sorted members,
GNU format), whatever ``workers`` is, with the same Pillow (its JPEG encoder makes the bytes).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import io
import logging
import multiprocessing
import random
import re
import sys
import tarfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image, ImageDraw, PngImagePlugin

from airflow_resnet_prep.fsutil import (
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    exclusive_lock,
    read_json,
)
from airflow_resnet_prep.progress import Progress

log = logging.getLogger("airflow_resnet_prep.sample")

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
LABELS = "imagenet_2012_validation_synset_labels.txt"
SAMPLE_JSON = "sample.json"
# Bump when the bytes generate() writes change, so a set made by older code is not reused.
GENERATOR_VERSION = 1
# 2012-07-01T00:00:00Z: a fixed member mtime keeps the tars reproducible.
MTIME = 1_341_100_800
JPEG_QUALITY = 90

# Real-set frequencies (docs/formats.md, Quirks of the real set): 22 CMYK files in 1,281,167, a few thousand grayscale files.
CMYK_RATE = 22 / 1_281_167
GRAYSCALE_RATE = 0.003
PROGRESSIVE_RATE = 0.001

QUIRKS = ("png", "cmyk", "grayscale", "progressive")
CLASS_TAG = b"airflow-resnet-prep sample, class "
_CLASS_RE = re.compile(re.escape(CLASS_TAG) + rb"(n\d{8})")

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class SampleSet:
    """Where a generated set lives and what it holds."""

    root: Path
    train_tar: Path
    val_tar: Path
    labels: Path
    synsets: list[str]
    train_count: int
    val_count: int
    # base file name -> "png" | "cmyk" | "grayscale" | "progressive"
    quirks: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _ImageSpec:
    """Everything a worker needs to render one image; picklable and independent of the worker count."""

    name: str
    synset: str
    seed: int
    quirk: str | None


def _derived_seed(*parts: object) -> int:
    """A 64-bit seed from the parts: stable across Python runs (unlike ``hash``)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _pick_size(rng: random.Random) -> tuple[int, int]:
    """Width and height drawn from a mix close to real ImageNet (mostly 500 on the long side)."""
    r = rng.random()
    if r < 0.45:
        w, h = 500, 375
    elif r < 0.60:
        w, h = 500, 333
    elif r < 0.70:
        w, h = 500, 500
    elif r < 0.97:
        long = rng.randint(300, 500)
        w, h = long, rng.randint(max(200, long // 2), long)
    else:
        long = rng.randint(600, 1000)
        w, h = long, rng.randint(long // 2, long * 3 // 4)
    # About a quarter of ImageNet is portrait.
    return (h, w) if rng.random() < 0.25 else (w, h)


def render_image(spec: _ImageSpec) -> bytes:
    """Render one image: smooth colour field, a few shapes, and per-pixel texture.

    The texture is what gives realistic JPEG sizes (~110 KB mean at quality 90); the noise comes from the
    image's own seeded RNG, so every image is distinct and reproducible. A few ms per image.
    """
    rng = random.Random(spec.seed)
    w, h = _pick_size(rng)
    img = Image.frombytes("RGB", (4, 3), rng.randbytes(36)).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(3, 8)):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        x1, y1 = x0 + rng.randint(20, max(21, w // 2)), y0 + rng.randint(20, max(21, h // 2))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=tuple(rng.randbytes(3)))
    noise = Image.frombytes("RGB", (w, h), rng.randbytes(w * h * 3))
    img = Image.blend(img, noise, rng.uniform(0.2, 0.5))

    buf = io.BytesIO()
    # Each image names its class in a comment, so tests can check where relabelling put it by content.
    comment = CLASS_TAG + spec.synset.encode()
    if spec.quirk == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", comment.decode())
        img.save(buf, format="PNG", compress_level=1, pnginfo=info)
    elif spec.quirk == "cmyk":
        # Pillow writes CMYK as Photoshop does: inverted samples and an Adobe APP14 segment, transform 0.
        img.convert("CMYK").save(buf, format="JPEG", quality=JPEG_QUALITY, comment=comment)
    elif spec.quirk == "grayscale":
        img.convert("L").save(buf, format="JPEG", quality=JPEG_QUALITY, comment=comment)
    elif spec.quirk == "progressive":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY, progressive=True, comment=comment)
    else:
        img.save(buf, format="JPEG", quality=JPEG_QUALITY, comment=comment)
    return buf.getvalue()


def class_of(data: bytes) -> str | None:
    """The synset a sample image was generated for (from its comment), or None for other images."""
    m = _CLASS_RE.search(data, 0, 4096)
    return m.group(1).decode() if m else None


def _tar_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tf.addfile(info, io.BytesIO(data))


def _render_synset_tar(specs: list[_ImageSpec]) -> bytes:
    """One per-synset tar, in memory (a class of a few hundred images is tens of MB)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for spec in specs:
            _tar_member(tf, spec.name, render_image(spec))
    return buf.getvalue()


def _render_many(specs: list[_ImageSpec]) -> list[bytes]:
    return [render_image(spec) for spec in specs]


def _ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map`` over a process pool, in order, with a bounded number of results in flight (memory)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    # forkserver: the caller may be a threaded process (Airflow, TensorFlow) that must not be forked.
    ctx = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: deque[concurrent.futures.Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= workers * 2:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _chunks(seq: list[T], size: int) -> list[list[T]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


@dataclass(frozen=True)
class _Plan:
    synsets: list[str]
    train: dict[str, list[_ImageSpec]]  # synset -> its images, sorted by name
    val: list[_ImageSpec]  # in file-number order
    val_labels: list[str]  # synset of val image i+1
    quirks: dict[str, str]


def _plan(classes: int, train_per_class: int, val_per_class: int, seed: int) -> _Plan:
    """Decide every name, label and quirk up front, from the seed alone."""
    rng = random.Random(_derived_seed("plan", seed))
    # Real ids run n01440764 .. n15075141; any 8 digits look the part.
    synsets = sorted(f"n{v:08d}" for v in rng.sample(range(1_000_000, 15_100_000), classes))

    train_names: dict[str, list[str]] = {}
    for syn in synsets:
        numbers = rng.sample(range(1, 50_000), train_per_class)
        # Tar members are sorted by name, as a sorted listing of the real tars is.
        train_names[syn] = sorted(f"{syn}_{n}.JPEG" for n in numbers)

    val_labels = [syn for syn in synsets for _ in range(val_per_class)]
    rng.shuffle(val_labels)
    val_names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, len(val_labels) + 1)]

    all_train = [name for syn in synsets for name in train_names[syn]]
    quirks = _choose_quirks(rng, all_train, val_names)

    def spec(name: str, synset: str) -> _ImageSpec:
        return _ImageSpec(name, synset, _derived_seed("image", seed, name), quirks.get(name))

    return _Plan(
        synsets=synsets,
        train={syn: [spec(n, syn) for n in train_names[syn]] for syn in synsets},
        val=[spec(n, syn) for n, syn in zip(val_names, val_labels, strict=True)],
        val_labels=val_labels,
        quirks=quirks,
    )


def _choose_quirks(rng: random.Random, train: list[str], val: list[str]) -> dict[str, str]:
    """Pick which files carry which quirk: at least one of each (when there are enough images), more in
    big sets at about the real set's rates. One quirk per file."""
    free_train = list(train)
    free_val = list(val)
    rng.shuffle(free_train)
    rng.shuffle(free_val)
    quirks: dict[str, str] = {}

    def take(pool: list[str], kind: str, count: int) -> None:
        for _ in range(min(count, len(pool))):
            quirks[pool.pop()] = kind

    take(free_train, "png", 1)
    take(free_train, "cmyk", max(1, round(len(train) * CMYK_RATE)))
    take(free_train, "grayscale", max(1, round(len(train) * GRAYSCALE_RATE)))
    take(free_val, "grayscale", max(1, round(len(val) * GRAYSCALE_RATE)))
    # Progressive files land in either split, wherever the seed puts them.
    rest = free_train + free_val
    rng.shuffle(rest)
    take(rest, "progressive", max(1, round((len(train) + len(val)) * PROGRESSIVE_RATE)))
    return dict(sorted(quirks.items()))


def _write_train_tar(path: Path, plan: _Plan, workers: int, progress: Progress) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.GNU_FORMAT) as tf:
            specs = [plan.train[syn] for syn in plan.synsets]
            for syn, data in zip(plan.synsets, _ordered_map(_render_synset_tar, specs, workers), strict=True):
                _tar_member(tf, f"{syn}.tar", data)
                progress.advance(len(plan.train[syn]))


def _write_val_tar(path: Path, plan: _Plan, workers: int, progress: Progress) -> None:
    chunks = _chunks(plan.val, 64)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.GNU_FORMAT) as tf:
            for chunk, images in zip(chunks, _ordered_map(_render_many, chunks, workers), strict=True):
                for spec, data in zip(chunk, images, strict=True):
                    _tar_member(tf, spec.name, data)
                progress.advance(len(chunk))


def _sample_set(root: Path, meta: dict[str, Any]) -> SampleSet:
    return SampleSet(
        root=root,
        train_tar=root / TRAIN_TAR,
        val_tar=root / VAL_TAR,
        labels=root / LABELS,
        synsets=list(meta["synsets"]),
        train_count=int(meta["train_count"]),
        val_count=int(meta["val_count"]),
        quirks=dict(meta["quirks"]),
    )


def _existing(root: Path, args: dict[str, int]) -> dict[str, Any] | None:
    """The recorded description of a complete set made with ``args``, or None."""
    meta = read_json(root / SAMPLE_JSON)
    if not isinstance(meta, dict) or meta.get("args") != args or meta.get("generator") != GENERATOR_VERSION:
        return None
    sizes = meta.get("sizes", {})
    for name in (TRAIN_TAR, VAL_TAR, LABELS):
        p = root / name
        if not p.is_file() or p.stat().st_size != sizes.get(name):
            return None
    return meta


def generate(
    out: Path | str,
    classes: int = 10,
    train_per_class: int = 20,
    val_per_class: int = 5,
    seed: int = 0,
    workers: int = 1,
) -> SampleSet:
    """Write (or reuse) a sample ImageNet under ``out`` and describe it.

    ``workers`` > 1 renders images in a process pool; it never changes the output bytes.
    """
    if classes < 1 or train_per_class < 1 or val_per_class < 0:
        raise ValueError(
            f"generate: need classes >= 1, train_per_class >= 1 and val_per_class >= 0, got "
            f"{classes}, {train_per_class}, {val_per_class}"
        )
    if train_per_class >= 50_000:
        raise ValueError(f"generate: train_per_class must be below 50,000, got {train_per_class}")
    root = Path(out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    args = {
        "classes": classes,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "seed": seed,
    }
    # Two generators on one folder (parallel test sessions) would otherwise race on the same names.
    with exclusive_lock(root / ".sample.lock", wait_s=3600):
        meta = _existing(root, args)
        if meta is not None:
            log.info("sample: reusing the complete set in %s (%s)", root, args)
            return _sample_set(root, meta)
        # A stale description must not outlive the files it described, even if this run is interrupted.
        (root / SAMPLE_JSON).unlink(missing_ok=True)

        plan = _plan(classes, train_per_class, val_per_class, seed)
        total = classes * (train_per_class + val_per_class)
        progress = Progress(f"sample {root}", total)
        _write_train_tar(root / TRAIN_TAR, plan, workers, progress)
        _write_val_tar(root / VAL_TAR, plan, workers, progress)
        atomic_write_text(root / LABELS, "".join(f"{syn}\n" for syn in plan.val_labels))
        progress.finish()

        meta = {
            "generator": GENERATOR_VERSION,
            "args": args,
            "synsets": plan.synsets,
            "train_count": classes * train_per_class,
            "val_count": len(plan.val),
            "quirks": plan.quirks,
            "sizes": {name: (root / name).stat().st_size for name in (TRAIN_TAR, VAL_TAR, LABELS)},
        }
        atomic_write_json(root / SAMPLE_JSON, meta)
        return _sample_set(root, meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_resnet_prep.sample",
        description="Write a synthetic ImageNet in the raw download layout (train tar of per-synset tars, "
        "flat val tar, validation labels file).",
    )
    parser.add_argument("--out", required=True, type=Path, help="folder to write into (created if needed)")
    parser.add_argument("--classes", type=int, default=10, help="number of synsets (default 10)")
    parser.add_argument("--train-per-class", type=int, default=20, help="train images per class (default 20)")
    parser.add_argument("--val-per-class", type=int, default=5, help="val images per class (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="seed for everything generated (default 0)")
    parser.add_argument("--workers", type=int, default=1, help="render processes (default 1)")
    parser.add_argument(
        "--layout",
        default="official",
        choices=("official", "kaggle", "kaggle-zip", "huggingface"),
        help="also lay the same images out as that copy (Kaggle's tree or zip, Hugging Face's shards); "
        "its path is printed as 'copy:' and is both train_source and val_source",
    )
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        s = generate(ns.out, ns.classes, ns.train_per_class, ns.val_per_class, ns.seed, ns.workers)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"train:  {s.train_tar} ({s.train_count} images, {len(s.synsets)} classes)")
    print(f"val:    {s.val_tar} ({s.val_count} images)")
    print(f"labels: {s.labels}")
    print(f"quirks: {len(s.quirks)} files ({', '.join(sorted(set(s.quirks.values())))})")
    if ns.layout != "official":
        from airflow_resnet_prep.sample_copies import write_copy

        print(f"copy:   {write_copy(s, ns.layout)} ({ns.layout})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
