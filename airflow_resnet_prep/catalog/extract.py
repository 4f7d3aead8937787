"""Optional folder tree ``raw/<split>/<synset>/<image>`` for users who want the images on disk.

Paths are built from the catalog's checked class and file names only (never from a member path), so
nothing can land outside the target. Each file is written under a temporary name and renamed when
complete; a rerun skips files already there with the right size.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from airflow_resnet_prep.catalog.model import DIR, ImageReader, SplitCatalog
from airflow_resnet_prep.fsutil import copy_range, disk_full_as_error, remove_stale_tmp, tmp_name
from airflow_resnet_prep.progress import Progress
from airflow_resnet_prep.storage import is_object_uri


def image_path(root: Path, synset: str, name: str) -> Path:
    return root / synset / name if synset else root / name


def extract_split(catalog: SplitCatalog, dest: Path) -> int:
    """Copy every image of ``catalog`` into ``dest``; return how many files were written.

    The caller holds the data_dir lock, so temp files found in a folder are a killed run's leftovers:
    each folder is cleared of them on first visit.
    """
    written = 0
    progress = Progress(f"extracting {catalog.split}", total=len(catalog))
    fds: dict[int, int] = {}
    visited: set[Path] = set()
    remote = {i for i, s in enumerate(catalog.sources) if is_object_uri(s.path)}
    if remote:  # sources in a bucket: fetched with the reader's coalesced, concurrent ranged reads
        return _extract_remote(catalog, dest, progress)
    try:
        for ref in catalog.images:
            target = image_path(dest, ref.synset, ref.name)
            if target.parent not in visited:
                visited.add(target.parent)
                remove_stale_tmp(target.parent)
            with contextlib.suppress(FileNotFoundError):
                if target.stat().st_size == ref.size:
                    progress.advance()
                    continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = tmp_name(target)
            source = catalog.sources[ref.src]
            try:
                with disk_full_as_error(target), open(tmp, "wb") as out:
                    if source.kind == DIR:
                        with open(os.path.join(source.path, ref.member), "rb") as src:
                            copy_range(src.fileno(), out.fileno(), ref.size, 0)
                    else:
                        fd = fds.get(ref.src)
                        if fd is None:
                            fd = fds[ref.src] = os.open(source.path, os.O_RDONLY)
                        copy_range(fd, out.fileno(), ref.size, ref.offset)
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            written += 1
            progress.advance()
    finally:
        for fd in fds.values():
            os.close(fd)
    progress.finish()
    return written


def _extract_remote(catalog: SplitCatalog, dest: Path, progress: Progress) -> int:
    written = 0
    todo = []
    for ref in catalog.images:
        target = image_path(dest, ref.synset, ref.name)
        with contextlib.suppress(FileNotFoundError):
            if target.stat().st_size == ref.size:
                progress.advance()
                continue
        todo.append(ref)
    for folder in {image_path(dest, r.synset, r.name).parent for r in todo}:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(folder)
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
