"""Give every validation image its class from the labels file (line i = class of ILSVRC2012_val_%08d i).

Everything is checked before anything changes: the line count equals the number of validation
images, every line is a synset among the training classes, every image name carries a number in
range. A mismatch names the first offending line or file and leaves catalog and disk untouched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from airflow_resnet_prep.catalog.extract import move_val_into_classes
from airflow_resnet_prep.catalog.model import SplitCatalog
from airflow_resnet_prep.errors import LabelsError
from airflow_resnet_prep.layout import DataDir, catalog_key
from airflow_resnet_prep.params import DEFAULT_LABELS_URL
from airflow_resnet_prep.sources.bucket import read_source_bytes
from airflow_resnet_prep.sources.credentials import HttpCredentials
from airflow_resnet_prep.sources.download import UrlGuard, discard_download, resolve_source
from airflow_resnet_prep.sources.fetched import Fetched
from airflow_resnet_prep.storage import display_uri

log = logging.getLogger(__name__)

_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.[A-Za-z]+")
_SYNSET = re.compile(r"n\d{8}")


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    """Parse the labels file (a local path, or an object URI): one synset per line. Windows line endings
    and blank lines at the end are accepted; a blank line anywhere else, or a line that is not a synset
    id, is an error naming it."""
    data = read_source_bytes(path)
    path = display_uri(path)
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise LabelsError(
            f"{path}: not a labels file: line {line} holds a byte that is not ASCII text (the file's "
            "content is not shown: it may be anything)"
        ) from None
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    labels = []
    for number, line in enumerate(lines, start=1):
        synset = line.strip()
        if not synset:
            raise LabelsError(f"{path}: line {number} is blank; every line must name the class of one image")
        if not _SYNSET.fullmatch(synset):
            # Never quote the line: a labels_source may name any file or URL the worker can read.
            raise LabelsError(
                f"{path}: line {number} is not a synset id like n01440764 (one per line; the line is not "
                "shown, since a file that is not a labels file may hold anything)"
            )
        labels.append(synset)
    if not labels:
        raise LabelsError(f"{path}: the labels file is empty")
    return labels


def val_number(name: str) -> int | None:
    match = _VAL_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def assign_labels(
    val: SplitCatalog, labels: list[str], train_synsets: list[str], labels_path: str
) -> SplitCatalog:
    """Return a copy of ``val`` with each image's class set from ``labels``; ``val`` is not modified."""
    if len(labels) != len(val):
        raise LabelsError(
            f"{labels_path}: has {len(labels):,} lines but the validation set has {len(val):,} images; "
            "each line must give the class of one image"
        )
    known = set(train_synsets)
    for number, synset in enumerate(labels, start=1):
        if synset not in known:
            raise LabelsError(
                f"{labels_path}: line {number} names class {synset}, which is not among the "
                f"{len(known):,} training classes"
            )
    images = []
    seen: set[int] = set()
    for ref in val.images:
        number = val_number(ref.name)
        if number is None:
            raise LabelsError(
                f"{val.where(ref)}: validation image name does not follow ILSVRC2012_val_%08d, "
                "so the labels file cannot give its class"
            )
        if not 1 <= number <= len(labels):
            raise LabelsError(
                f"{val.where(ref)}: image number {number} has no line in {labels_path} ({len(labels)} lines)"
            )
        if number in seen:
            raise LabelsError(f"{val.where(ref)}: a second validation image with number {number}")
        seen.add(number)
        images.append(ref._replace(synset=labels[number - 1]))
    images.sort(key=lambda r: (r.synset, r.name))
    return SplitCatalog(split=val.split, sources=val.sources, images=images)


def check_labelled(val: SplitCatalog, train_synsets: list[str]) -> None:
    """For a validation source that already comes in class folders: every class must be a training class."""
    known = set(train_synsets)
    for synset in val.synsets:
        if synset not in known:
            ref = next(r for r in val.images if r.synset == synset)
            raise LabelsError(
                f"{val.where(ref)}: validation class {synset} is not among the training classes"
            )


def check_copy_labels(val: SplitCatalog, labels: list[str], labels_path: str) -> None:
    """An explicit labels file given with a copy that has labels of its own must agree with them."""
    if len(labels) != len(val):
        raise LabelsError(
            f"{labels_path}: has {len(labels):,} lines but the validation set has {len(val):,} images"
        )
    for ref in val.images:
        number = val_number(ref.name)
        if number is None or not 1 <= number <= len(labels):
            raise LabelsError(f"{val.where(ref)}: image number out of range of {labels_path}")
        if labels[number - 1] != ref.synset:
            raise LabelsError(
                f"{labels_path}: line {number} disagrees with the class the copy gives {ref.name} "
                f"({val.labels})"
            )


@contextlib.contextmanager
def refused_download_removed(fetched: Fetched, downloads_dir: Path) -> Iterator[None]:
    """A labels file refused in the block is not kept when it was downloaded (a URL may answer with
    anything: an error page, an internal service's JSON), so nothing of it stays in the data_dir and the
    next run asks again; a source the user named is only read, never removed."""
    try:
        yield
    except LabelsError:
        discard_download(fetched, downloads_dir)
        raise


@dataclass
class RelabelResult:
    val_catalog: str
    labels_path: str | None  # None when the validation source already came in class folders
    labels_fingerprint: dict[str, Any] | None
    images: int
    classes: int
    moved: int  # files moved into class folders under raw/val (extract only)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def labelled_by_source(val: SplitCatalog) -> bool:
    """True when the validation source itself is laid out as ``<synset>/<image>``."""
    return all("/" in ref.member for ref in val.images)


def _copy_labels(
    layout: DataDir,
    val: SplitCatalog,
    train_synsets: list[str],
    labels_source: str | None,
    fetch_labels: Callable[[], Fetched],
) -> RelabelResult:
    """A copy's own validation classes: used as they are; a labels file named explicitly (neither empty
    nor the default) is read and checked against them, never downloaded otherwise."""
    check_labelled(val, train_synsets)
    val_key = catalog_key("val")
    if not labels_source or labels_source == DEFAULT_LABELS_URL:
        log.info("validation: %d images labelled by the copy itself (%s)", len(val), val.labels)
        return RelabelResult(layout.uri(val_key), val.labels, None, len(val), len(val.synsets), 0)
    fetched = fetch_labels()
    shown = display_uri(fetched.path)
    with refused_download_removed(fetched, layout.local_downloads):
        check_copy_labels(val, read_labels(fetched.path), shown)
    log.info("validation: %s agrees with the copy's own classes (%s)", shown, val.labels)
    return RelabelResult(layout.uri(val_key), shown, fetched.fingerprint, len(val), len(val.synsets), 0)


def relabel(
    data_dir: DataDir | str | os.PathLike[str],
    labels_source: str | None,
    *,
    credentials: HttpCredentials | None = None,
    extract: bool = False,
    storage_conn_id: str | None = None,
    download_sources: bool = False,
    url_guard: UrlGuard | None = None,
) -> RelabelResult:
    """The relabel step: check the labels file against the catalogs, then assign classes (docs/formats.md, Relabelling).
    A labels file in a bucket uses the connection of its URI, else ``storage_conn_id``; ``url_guard``
    refuses a URL before it is requested (see :func:`resolve_source`)."""
    layout = DataDir.at(data_dir, storage_conn_id)
    val_key = catalog_key("val")

    def fetch_labels() -> Fetched:
        return resolve_source(
            labels_source,
            layout.local_downloads,
            credentials=credentials,
            storage_conn_id=storage_conn_id or None,
            download=bool(download_sources),
            url_guard=url_guard,
        )

    with layout.hold(wait_s=5):
        train_synsets = SplitCatalog.load_classes(layout.store, catalog_key("train"))
        val = SplitCatalog.load(layout.store, val_key)
        if val.labels:  # a copy that labels its own validation images (catalog/copies.py)
            return _copy_labels(layout, val, train_synsets, labels_source, fetch_labels)
        if labelled_by_source(val):
            check_labelled(val, train_synsets)
            log.info("validation images already come in class folders: the labels file is not needed")
            return RelabelResult(layout.uri(val_key), None, None, len(val), len(val.synsets), 0)
        if not labels_source:
            raise LabelsError(
                "labels_source is empty: the validation images carry no classes of their own "
                f"({val.sources[0].shown}), so a labels file must give them"
            )
        fetched = fetch_labels()
        shown = display_uri(fetched.path)
        with refused_download_removed(fetched, layout.local_downloads):
            labelled = assign_labels(val, read_labels(fetched.path), train_synsets, shown)
        labelled.save(layout.store, val_key)
        moved = move_val_into_classes(labelled, layout.raw("val")) if extract else 0
        log.info(
            "validation: %d images assigned to %d classes from %s",
            len(labelled),
            len(labelled.synsets),
            shown,
        )
        return RelabelResult(
            layout.uri(val_key),
            shown,
            fetched.fingerprint,
            len(labelled),
            len(labelled.synsets),
            moved,
        )
