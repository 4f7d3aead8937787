"""The ImageNet copies people hold besides the official tars: recognised by content, read in place.

- ``kaggle-zip``: ``imagenet-object-localization-challenge.zip`` as downloaded (its central directory
  gives every member's place: :mod:`airflow_resnet_prep.sources.zipindex`);
- ``kaggle``: its extracted root (``ILSVRC/Data/CLS-LOC/{train/<wnid>/,val/}``, ``LOC_val_solution.csv``);
- ``huggingface``: ``ILSVRC/imagenet-1k``'s ``data/`` folder (or the repository root holding it), or one of
  its files: ``train_images_{0..4}.tar.gz``, ``val_images.tar.gz`` (inflated once into a plain tar, the
  working copy the catalog points at: :mod:`.inflated`; or, without working copies, streamed:
  :mod:`airflow_resnet_prep.sources.gzstream`).

Every image gets its ILSVRC name back (``<wnid>_<n>.JPEG``, ``ILSVRC2012_val_%08d.JPEG``), so that the
outputs are those the official tars give. A copy's validation images get their classes here, from the
copy itself (the first token of ``PredictionString`` in ``LOC_val_solution.csv``; the last ``_`` field of a
Hugging Face name); what a split needs and the copy lacks is refused here, before any conversion, naming
the file and what is missing. ``test/`` and ``test_images.tar.gz`` are never read. Errors name files and
lines, and never quote a source's content.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, NamedTuple

from airflow_resnet_prep.catalog.inflated import SharedProgress, WorkingCopies
from airflow_resnet_prep.catalog.members import TGZ, ZIP
from airflow_resnet_prep.catalog.model import DIR, TAR, ImageRef, Source
from airflow_resnet_prep.errors import LabelsError, SourceError
from airflow_resnet_prep.sources.gzstream import is_gzip, iter_tgz
from airflow_resnet_prep.sources.tarindex import TarMember
from airflow_resnet_prep.sources.zipindex import ZipMember, is_zip, iter_zip, member_bytes
from airflow_resnet_prep.storage import ObjectNotFoundError, Store

OFFICIAL, KAGGLE, KAGGLE_ZIP, HUGGINGFACE = "official", "kaggle", "kaggle-zip", "huggingface"
CLS_LOC = "ILSVRC/Data/CLS-LOC/"
VAL_SOLUTION = "LOC_val_solution.csv"
SYNSET_MAPPING = "LOC_synset_mapping.txt"
HF_TRAIN = re.compile(r"train_images_(\d+)\.tar\.gz")
HF_VAL = "val_images.tar.gz"
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
_WNID = re.compile(r"n\d{8}")
_VAL_STEM = re.compile(r"ILSVRC2012_val_\d{8}")
# Shards of a Hugging Face copy indexed at once: each is one pass of inflating (zlib frees the GIL).
INDEX_SHARDS_AT_ONCE = 5


class Copy(NamedTuple):
    """What indexing a copy gives the catalog."""

    layout: str
    sources: list[Source]
    refs: list[ImageRef]
    labels: str  # where the validation classes came from ("" for train)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def index_copy(
    split: str, store: Store, where: str, size: int | None, inflated: WorkingCopies | None = None
) -> Copy | None:
    """Index ``split`` of the copy at ``store`` (``size``: its size, None for a folder or prefix), or None
    when it is no copy of these layouts (an official tar or tree, which :mod:`.build` reads).

    ``inflated``: where compressed shards are inflated into plain tars that the catalog points at (each
    shard inflated once, here); None reads them as compressed streams (one pass per read call)."""
    if size is None:
        return _index_folder(split, store, where, inflated)
    head = store.read_range("", 0, min(4, size))
    if is_zip(head):
        return _index_kaggle_zip(split, store, where, size)
    if is_gzip(head):
        return _index_huggingface(split, [(store, size)], where, inflated)
    return None


def _index_folder(split: str, store: Store, where: str, inflated: WorkingCopies | None) -> Copy | None:
    for prefix in ("", "data/"):
        if store.exists(prefix + HF_VAL) or store.exists(prefix + "train_images_0.tar.gz"):
            folder = store.child(prefix.rstrip("/")) if prefix else store
            return _index_huggingface_folder(split, folder, f"{where}/{prefix}".rstrip("/"), inflated)
    local = store.local_path()
    if (
        store.exists(VAL_SOLUTION)
        or store.exists(SYNSET_MAPPING)
        or (local is not None and (local / CLS_LOC).is_dir())
    ):
        return _index_kaggle_tree(split, store, where)
    return None


# -- Kaggle ------------------------------------------------------------------------------------------------
def _val_labels(data: bytes, shown: str) -> dict[str, str]:
    """``ImageId`` -> wnid from ``LOC_val_solution.csv`` (the first token of ``PredictionString``)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise LabelsError(f"{shown}: not a UTF-8 text file") from None
    rows = csv.reader(io.StringIO(text, newline=""))
    header = next(rows, None)
    if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
        raise LabelsError(f"{shown}: line 1 is not the header ImageId,PredictionString")
    labels: dict[str, str] = {}
    for number, row in enumerate(rows, start=2):
        if not row:
            continue
        tokens = row[1].split() if len(row) >= 2 else []
        if (
            len(row) < 2
            or not _VAL_STEM.fullmatch(row[0].strip())
            or not tokens
            or not _WNID.fullmatch(tokens[0])
        ):
            raise LabelsError(
                f"{shown}: line {number} is not ILSVRC2012_val_<8 digits>,<wnid> <box>...; "
                "the validation labels cannot be read"
            )
        labels[row[0].strip()] = tokens[0]
    return labels


def _label_val(
    refs: list[ImageRef], labels: dict[str, str] | None, where: Callable[[ImageRef], str], csv_shown: str
) -> list[ImageRef]:
    if labels is None:
        raise LabelsError(
            f"{csv_shown}: missing; the validation images of this copy get their classes from it"
        )
    out = []
    for ref in refs:
        stem = ref.name.rsplit(".", 1)[0]
        if not _VAL_STEM.fullmatch(stem):
            raise SourceError(f"{where(ref)}: validation image name does not follow ILSVRC2012_val_%08d")
        synset = labels.get(stem)
        if synset is None:
            raise LabelsError(f"{csv_shown}: has no row for {stem}; its class is missing")
        out.append(ref._replace(synset=synset))
    return out


def _kaggle_refs(split: str, paths: list[tuple[str, int, int, str]], archive: str) -> list[ImageRef]:
    """The images of ``split`` among ``(path below CLS-LOC/, offset, size, member)``: ``train/<wnid>/<image>``
    or ``val/<image>``; anything else (``test/``, other files) is not this split's."""
    refs = []
    for rel, offset, size, member in paths:
        parts = rel.split("/")
        if parts[0] != split or not _is_image(parts[-1]):
            continue
        if split == "train" and len(parts) == 3:
            refs.append(ImageRef(parts[1], parts[2], 0, offset, size, member))
        elif split == "val" and len(parts) == 2:
            refs.append(ImageRef("", parts[1], 0, offset, size, member))
        else:
            raise SourceError(
                f"{archive}[{CLS_LOC}{rel}]: expected {CLS_LOC}train/<wnid>/<image> or {CLS_LOC}val/<image>"
            )
    return refs


def _index_kaggle_zip(split: str, store: Store, where: str, size: int) -> Copy:
    read_at = lambda offset, n: store.read_range("", offset, n)  # noqa: E731
    members: list[ZipMember] = list(iter_zip(read_at, size, where))
    roots = {m.path[: m.path.index(CLS_LOC)] for m in members if CLS_LOC in m.path}
    if len(roots) != 1:
        raise SourceError(
            f"{where}: a zip without one {CLS_LOC} folder; expected Kaggle's "
            "imagenet-object-localization-challenge.zip"
        )
    root = roots.pop()
    found = [
        (m.path[len(root) + len(CLS_LOC) :], m.offset, m.span, m.path)
        for m in members
        if m.path.startswith(root + CLS_LOC)
    ]
    refs = _kaggle_refs(split, found, where)
    labels = ""
    if split == "val" and refs:
        csv_member = next((m for m in members if m.path == root + VAL_SOLUTION), None)
        labels = f"{where}[{root}{VAL_SOLUTION}]"
        table = None
        if csv_member is not None:
            table = _val_labels(member_bytes(read_at(csv_member.offset, csv_member.span), labels), labels)
        refs = _label_val(refs, table, lambda r: f"{where}[{r.member}]", labels)
    return Copy(KAGGLE_ZIP, [Source(ZIP, store.address)], refs, labels)


def _index_kaggle_tree(split: str, store: Store, where: str) -> Copy:
    folder = store.child(CLS_LOC + split)
    shown = f"{where}/{CLS_LOC}{split}"
    listing = [(f"{split}/{info.key}", 0, info.size, info.key) for info in folder.list()]
    if not listing:
        raise SourceError(f"{shown}: missing or empty; this Kaggle copy has no {split} images")
    refs = _kaggle_refs(split, listing, where)
    labels = ""
    if split == "val":
        labels = f"{where}/{VAL_SOLUTION}"
        try:
            table: dict[str, str] | None = _val_labels(store.read_bytes(VAL_SOLUTION), labels)
        except ObjectNotFoundError:
            table = None
        refs = _label_val(refs, table, lambda r: f"{shown}/{r.member}", labels)
    return Copy(KAGGLE, [Source(DIR, folder.address)], refs, labels)


# -- Hugging Face ------------------------------------------------------------------------------------------
def _index_huggingface_folder(split: str, folder: Store, where: str, inflated: WorkingCopies | None) -> Copy:
    sizes = {info.key: info.size for info in folder.list() if "/" not in info.key}
    names = sorted(sizes)
    if split == "train":
        shards = sorted(
            (n for n in names if HF_TRAIN.fullmatch(n)), key=lambda n: int(HF_TRAIN.fullmatch(n)[1])
        )  # type: ignore[index]
    else:
        shards = [n for n in names if n == HF_VAL]
    if not shards:
        wanted = "train_images_<n>.tar.gz" if split == "train" else HF_VAL
        raise SourceError(f"{where}: this Hugging Face copy has no {wanted}; the {split} images are missing")
    return _index_huggingface(split, [(folder.child(n), sizes[n]) for n in shards], where, inflated)


def _hf_name(name: str, where: str) -> tuple[str, str]:
    """(ILSVRC name, wnid) of ``<stem>_<wnid>.<ext>``."""
    stem, dot, ext = name.rpartition(".")
    base, _, wnid = stem.rpartition("_")
    if not dot or not base or not _WNID.fullmatch(wnid):
        raise SourceError(f"{where}: the file name carries no class (expected <name>_<wnid>.{ext or 'JPEG'})")
    return f"{base}.{ext}", wnid


def _index_huggingface(
    split: str, shards: list[tuple[Store, int]], where: str, inflated: WorkingCopies | None
) -> Copy:
    """The images of the shards (``(store, size)``), each shard indexed (and inflated) in one pass, the
    shards at the same time."""
    sources: list[Source] = [Source(TGZ, shard.address) for shard, _ in shards]
    progress = None
    if inflated is not None:
        total_mb = sum(size >> 20 for _, size in shards)
        progress = SharedProgress(f"inflating the {split} shards", total=total_mb, unit="MB")

    def index(src: int) -> list[ImageRef]:
        shard = shards[src][0]
        shown = shard.url
        members: list[TarMember] | Iterator[TarMember]
        if inflated is None:
            opener: Callable[[], BinaryIO] = lambda: shard.open_read("", block_size=1 << 20)  # noqa: E731
            members = iter_tgz(opener, shown)
        else:
            members, copy = inflated.members(shard, shown, progress)
            sources[src] = Source(TAR, copy)
        refs = []
        for member in members:
            if "/" in member.path or not _is_image(member.path):
                continue
            name, wnid = _hf_name(member.path, f"{shown}[{member.path}]")
            if split == "train" and not name.startswith(wnid + "_"):
                raise SourceError(f"{shown}[{member.path}]: a training image named for another class")
            if split == "val" and not _VAL_STEM.fullmatch(name.rsplit(".", 1)[0]):
                raise SourceError(
                    f"{shown}[{member.path}]: not ILSVRC2012_val_%08d_<wnid>; not a validation image"
                )
            refs.append(ImageRef(wnid, name, src, member.offset, member.size, member.path))
        if not refs:
            raise SourceError(f"{shown}: holds no images (.JPEG/.jpg/.png) at its root")
        return refs

    with ThreadPoolExecutor(min(INDEX_SHARDS_AT_ONCE, len(shards)), thread_name_prefix="tgz-index") as pool:
        refs = [ref for found in pool.map(index, range(len(shards))) for ref in found]
    if progress is not None:
        progress.finish()
    labels = f"{where}: the wnid at the end of each file name" if split == "val" else ""
    return Copy(HUGGINGFACE, sources, refs, labels)
