"""Build a split's catalog from any accepted source: a tar (nested or flat) or a folder.

Accepted layouts (SPEC §1):
- train tar: one tar per class (``n01440764.tar`` holding ``n01440764_10026.JPEG``), or members ``<synset>/<image>``;
- val tar: flat ``ILSVRC2012_val_%08d.JPEG`` (classes come later from the labels file), or ``<synset>/<image>``;
- a folder laid out as ``<synset>/<image>``, or (val only) a flat folder of images.

Only files with an image extension im2rec also lists (``.jpeg``, ``.jpg``, ``.png``, any case) are
images; other files are counted and logged, not read. Images are ordered by class, then name, so
the catalog does not depend on the order inside an archive or of a directory listing.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path

from airflow_resnet_prep.catalog.model import DIR, TAR, ImageRef, Source, SplitCatalog
from airflow_resnet_prep.errors import SourceError, UnsafeArchiveError
from airflow_resnet_prep.progress import Progress
from airflow_resnet_prep.sources.tarindex import iter_tar

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _check_plain_name(where: str, name: str) -> None:
    """A class or file name that becomes a path component must be a single, ordinary name."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith(".") or "\t" in name:
        raise UnsafeArchiveError(f"{where}: {name!r} is not a plain file or folder name; refusing it")
    if "\n" in name:
        raise SourceError(f"{where}: a name holds a line break: {name!r}")


def _index_tar(split: str, path: Path) -> list[ImageRef]:
    archive = str(path)
    refs: list[ImageRef] = []
    skipped = 0
    progress = Progress(f"indexing {path.name}", total=0, unit="members")
    with open(path, "rb") as fh:
        for member in iter_tar(fh, archive):
            parts = member.path.split("/")
            if len(parts) == 1 and member.path.lower().endswith(".tar"):
                synset = member.path[:-4]
                _check_plain_name(f"{archive}[{member.path}]", synset)
                inner = f"{archive}[{member.path}]"
                for image in iter_tar(fh, inner, start=member.offset, size=member.size):
                    name = image.path.rsplit("/", 1)[-1]
                    if not is_image_name(name):
                        skipped += 1
                        continue
                    _check_plain_name(inner, name)
                    refs.append(
                        ImageRef(synset, name, 0, image.offset, image.size, f"{member.path}/{image.path}")
                    )
                    progress.advance()
                continue
            if not is_image_name(parts[-1]):
                skipped += 1
                continue
            if len(parts) == 1:
                synset = ""
            elif len(parts) == 2:
                synset = parts[0]
                _check_plain_name(f"{archive}[{member.path}]", synset)
            else:
                raise SourceError(
                    f"{archive}: member {member.path!r} is nested too deep; expected <synset>/<image> or a flat file"
                )
            _check_plain_name(f"{archive}[{member.path}]", parts[-1])
            refs.append(ImageRef(synset, parts[-1], 0, member.offset, member.size, member.path))
            progress.advance()
    if skipped:
        log.info("%s: skipped %d members that are not images (by extension)", archive, skipped)
    return refs


def _index_dir(split: str, root: Path) -> list[ImageRef]:
    refs: list[ImageRef] = []
    skipped = 0
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.name.startswith("."):  # hidden: editor, OS or our own in-progress files
            continue
        if entry.is_dir(follow_symlinks=True):
            _check_plain_name(str(root), entry.name)
            for image in sorted(os.scandir(entry.path), key=lambda e: e.name):
                if image.name.startswith("."):
                    continue
                if not is_image_name(image.name) or not image.is_file(follow_symlinks=True):
                    skipped += 1
                    continue
                refs.append(
                    ImageRef(entry.name, image.name, 0, 0, image.stat().st_size, f"{entry.name}/{image.name}")
                )
        elif entry.is_file(follow_symlinks=True) and is_image_name(entry.name):
            refs.append(ImageRef("", entry.name, 0, 0, entry.stat().st_size, entry.name))
        else:
            skipped += 1
    if skipped:
        log.info("%s: skipped %d entries that are not images", root, skipped)
    return refs


def build_split_catalog(split: str, source: str | os.PathLike[str]) -> SplitCatalog:
    """Index ``source`` (a tar file or a folder) into the catalog of ``split`` ("train" or "val")."""
    path = Path(source).resolve()
    if path.is_dir():
        kind, refs = DIR, _index_dir(split, path)
    elif path.is_file():
        kind, refs = TAR, _index_tar(split, path)
    else:
        raise SourceError(f"{path}: {split} source does not exist")
    if not refs:
        raise SourceError(f"{path}: the {split} source holds no images (.JPEG/.jpg/.png)")
    labelled = sum(1 for r in refs if r.synset)
    if labelled not in (0, len(refs)):
        unlabelled = next(r for r in refs if not r.synset)
        raise SourceError(
            f"{path}: mixes class folders with loose images (e.g. {unlabelled.member!r}); use one layout"
        )
    if split == "train" and labelled == 0:
        raise SourceError(
            f"{path}: training images must be grouped by class (<synset>/<image> or <synset>.tar)"
        )
    refs.sort(key=lambda r: (r.synset, r.name))
    for prev, cur in itertools.pairwise(refs):
        if prev.synset == cur.synset and prev.name == cur.name:
            raise SourceError(f"{path}: duplicate image {cur.synset + '/' if cur.synset else ''}{cur.name}")
    return SplitCatalog(split=split, sources=[Source(kind, str(path))], images=refs)
