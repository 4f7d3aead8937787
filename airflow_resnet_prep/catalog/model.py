"""The catalog: every image of a split, its class, and where its bytes are.

An image is read with one positioned read: from a tar (outer or nested) at the recorded offset, or
from a file below a source folder. Nothing is extracted to be read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from airflow_resnet_prep.errors import SourceError
from airflow_resnet_prep.fsutil import atomic_path

CATALOG_VERSION = 1
TAR = "tar"
DIR = "dir"


class ImageRef(NamedTuple):
    """One image. ``member`` is its path inside the source, for messages and for folder sources."""

    synset: str  # "" while a validation image has no class yet
    name: str  # base file name, e.g. n01440764_10026.JPEG
    src: int  # index into SplitCatalog.sources
    offset: int  # byte offset of the data inside a tar source; 0 for a folder source
    size: int
    member: str  # tar: "n01440764.tar/n01440764_10026.JPEG"; folder: "n01440764/n01440764_10026.JPEG"


@dataclass(frozen=True)
class Source:
    kind: str  # TAR or DIR
    path: str  # absolute path of the tar file or the root folder

    def describe(self, ref: ImageRef) -> str:
        return f"{self.path}/{ref.member}" if self.kind == DIR else f"{self.path}[{ref.member}]"


@dataclass
class SplitCatalog:
    split: str  # "train" or "val"
    sources: list[Source]
    images: list[ImageRef] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def synsets(self) -> list[str]:
        """The sorted distinct classes present (empty strings, i.e. unlabelled images, excluded)."""
        return sorted({ref.synset for ref in self.images if ref.synset})

    @property
    def labelled(self) -> bool:
        return all(ref.synset for ref in self.images)

    def where(self, ref: ImageRef) -> str:
        """A human-readable location of the image, for error messages."""
        return self.sources[ref.src].describe(ref)

    def class_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for ref in self.images:
            counts[ref.synset] = counts.get(ref.synset, 0) + 1
        return dict(sorted(counts.items()))

    def total_bytes(self) -> int:
        return sum(ref.size for ref in self.images)

    # -- persistence: one TSV per split, a JSON header line first ------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        header = {
            "version": CATALOG_VERSION,
            "split": self.split,
            "sources": [{"kind": s.kind, "path": s.path} for s in self.sources],
            "images": len(self.images),
        }
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write("# " + json.dumps(header, sort_keys=True) + "\n")
            fh.writelines(
                f"{r.synset}\t{r.name}\t{r.src}\t{r.offset}\t{r.size}\t{r.member}\n" for r in self.images
            )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SplitCatalog:
        path = Path(path)
        try:
            fh = open(path, encoding="utf-8", newline="\n")  # noqa: SIM115 (closed by the with below)
        except FileNotFoundError:
            raise SourceError(f"{path}: catalog not found; run the fetch step first") from None
        rerun = "rerun the fetch step to rebuild it"
        number = 1
        with fh:
            try:
                first = fh.readline()
                try:
                    header = json.loads(first[2:]) if first.startswith("# ") else None
                except json.JSONDecodeError:
                    header = None
                if not isinstance(header, dict) or header.get("version") != CATALOG_VERSION:
                    raise SourceError(f"{path}: not a catalog of version {CATALOG_VERSION}; {rerun}")
                sources = [Source(s["kind"], s["path"]) for s in header["sources"]]
                split, count = header["split"], header["images"]
                images = []
                for number, line in enumerate(fh, start=2):  # noqa: B007 (number names the bad line below)
                    synset, name, src, offset, size, member = line.rstrip("\n").split("\t")
                    ref = ImageRef(synset, name, int(src), int(offset), int(size), member)
                    if not (0 <= ref.src < len(sources) and ref.offset >= 0 and ref.size >= 0):
                        raise ValueError("source, offset or size out of range")
                    images.append(ref)
            except SourceError:
                raise
            except (ValueError, KeyError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
                raise SourceError(f"{path}: damaged catalog (line {number}: {exc}); {rerun}") from None
        if len(images) != count:
            raise SourceError(f"{path}: holds {len(images)} images, its header says {count}; {rerun}")
        return cls(split=split, sources=sources, images=images)


class ImageReader:
    """Reads images' bytes through a catalog, keeping tar files open between reads."""

    def __init__(self, sources: list[Source]) -> None:
        self.sources = sources
        self._fds: dict[int, int] = {}

    def read(self, ref: ImageRef) -> bytes:
        source = self.sources[ref.src]
        if source.kind == DIR:
            path = os.path.join(source.path, ref.member)
            try:
                with open(path, "rb") as fh:
                    return fh.read()
            except OSError as exc:
                raise SourceError(f"{path}: cannot read image: {exc.strerror or exc}") from exc
        fd = self._fds.get(ref.src)
        if fd is None:
            try:
                fd = self._fds[ref.src] = os.open(source.path, os.O_RDONLY)
            except OSError as exc:
                raise SourceError(f"{source.path}: cannot open archive: {exc.strerror or exc}") from exc
        data = os.pread(fd, ref.size, ref.offset)
        if len(data) != ref.size:
            raise SourceError(
                f"{source.describe(ref)}: archive is shorter than its index says "
                f"(wanted {ref.size} bytes at offset {ref.offset}, got {len(data)}); was it truncated or replaced?"
            )
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
