"""Helpers shared by tests that need the sample set in other layouts."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def extract_sample_tar(tar_path: Path, dest: Path) -> None:
    """Extract a sample tar as a user would with the standard library: the train tar's per-class tars
    into ``dest/<synset>/<image>``, the flat val tar into ``dest/<image>``."""
    with tarfile.open(tar_path) as outer:
        for member in outer.getmembers():
            data = outer.extractfile(member).read()
            if member.name.endswith(".tar"):
                with tarfile.open(fileobj=io.BytesIO(data)) as inner:
                    inner.extractall(dest / member.name[:-4], filter="data")
            else:
                (dest / member.name).parent.mkdir(parents=True, exist_ok=True)
                (dest / member.name).write_bytes(data)
