"""Optional folder tree ``raw/<split>/<synset>/<image>`` for users who want the images on disk.

Paths are built from the catalog's checked class and file names only (never from a member path), so
nothing can land outside the target. Each file is written under a temporary name and renamed when
complete; a rerun skips files already there with the right size (an image's size in the catalog, or for a
zip member, whose catalog size is its span in the archive, the size the zip's central directory gives).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from airflow_resnet_prep.catalog.members import ZIP
from airflow_resnet_prep.catalog.model import DIR, ImageReader, ImageRef, SplitCatalog
from airflow_resnet_prep.fsutil import disk_full_as_error, remove_stale_tmp, tmp_name
from airflow_resnet_prep.progress import Progress
from airflow_resnet_prep.sources.zipindex import iter_zip
from airflow_resnet_prep.storage import is_object_uri, shared_store


def image_path(root: Path, synset: str, name: str) -> Path:
    return root / synset / name if synset else root / name


def is_on_disk(catalog: SplitCatalog) -> bool:
    """Whether the split is a folder of images on a disk already (the extracted layout itself)."""
    return all(s.kind == DIR and not is_object_uri(s.path) for s in catalog.sources)


def _image_sizes(catalog: SplitCatalog, present: list[ImageRef]) -> list[int]:
    """The size of each image of ``present`` once extracted. A zip member's catalog size is its span (local
    header and compressed data): its own size comes from the zip's central directory, read again (one
    sequential read of it per zip, only when images of the zip are on disk already)."""
    zips = {r.src for r in present if catalog.sources[r.src].kind == ZIP}
    members: dict[tuple[int, str], int] = {}
    for src in zips:
        store = shared_store(catalog.sources[src].path)
        read_at = lambda offset, n, store=store: store.read_range("", offset, n)  # noqa: E731
        for member in iter_zip(read_at, store.size(), catalog.sources[src].shown):
            members[src, member.path] = member.size
    return [members.get((r.src, r.member), -1) if r.src in zips else r.size for r in present]


def extract_split(catalog: SplitCatalog, dest: Path) -> int:
    """Copy every image of ``catalog`` into ``dest``; return how many files were written.

    Images already there whole are kept. The caller holds the data_dir lock, so temp files found in a
    folder are a killed run's leftovers: every folder of the split is cleared of them first. The images are
    read as a conversion reads them (from a bucket: coalesced, concurrent ranged reads).
    """
    written = 0
    progress = Progress(f"extracting {catalog.split}", total=len(catalog))
    # Every folder of the split, not only those with images still to write: a killed run may have
    # left a temp file beside an image a later run has since completed.
    for folder in {image_path(dest, r.synset, r.name).parent for r in catalog.images}:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(folder)
    on_disk: dict[int, int] = {}  # index in the catalog -> size of the file there
    for i, ref in enumerate(catalog.images):
        with contextlib.suppress(FileNotFoundError):
            on_disk[i] = image_path(dest, ref.synset, ref.name).stat().st_size
    wanted = _image_sizes(catalog, [catalog.images[i] for i in on_disk])
    whole = {i for i, size in zip(on_disk, wanted, strict=True) if on_disk[i] == size}
    progress.advance(len(whole))
    todo = [ref for i, ref in enumerate(catalog.images) if i not in whole]
    with ImageReader(catalog.sources) as reader, contextlib.closing(reader.iter_read(todo)) as reads:
        for ref, data in reads:
            target = image_path(dest, ref.synset, ref.name)
            tmp = tmp_name(target)
            try:
                with disk_full_as_error(target), open(tmp, "wb") as out:
                    out.write(data)
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            written += 1
            progress.advance()
    progress.finish()
    return written


def move_val_into_classes(catalog: SplitCatalog, dest: Path) -> int:
    """After relabelling: move flat ``raw/val/<image>`` files into ``raw/val/<synset>/`` by rename
    (same file system, no copy). Idempotent: files already in place are left alone."""
    moved = 0
    for ref in catalog.images:
        flat, target = dest / ref.name, image_path(dest, ref.synset, ref.name)
        if target.exists() or not flat.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(flat, target)
        moved += 1
    return moved
