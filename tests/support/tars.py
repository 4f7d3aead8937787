"""Small tars built member by member, for tests of catalog building and tar indexing."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def tar_with(path: Path, add) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        add(tar)
    return path


def add_file(tar: tarfile.TarFile, name: str, data: bytes = b"\xff\xd8\xff\xd9") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    tar.addfile(info)
