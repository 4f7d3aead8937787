"""Where everything lives under ``data_dir`` (SPEC §2). One place, so no step guesses another's paths."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from airflow_resnet_prep.errors import PrepError


@dataclass(frozen=True)
class DataDir:
    root: Path

    @classmethod
    def of(cls, data_dir: str | os.PathLike[str]) -> DataDir:
        text = str(data_dir).strip()
        if not text:
            # An empty param would otherwise mean the worker's current folder.
            raise PrepError("data_dir is empty: set the data_dir param (or MLPERF_RESNET_PREP_DATA_DIR)")
        if "://" in text:
            raise PrepError(
                f"data_dir {text!r}: a URI; data_dir must be an absolute local path (every worker sees the "
                "same shared folder); object storage is not supported as data_dir yet"
            )
        path = Path(text).expanduser()
        if not path.is_absolute():
            # A relative path names a different folder on every worker (each has its own current folder).
            raise PrepError(f"data_dir {text!r} is a relative path: give an absolute path")
        return cls(path.resolve())

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def catalog(self) -> Path:
        return self.root / "catalog"

    def catalog_file(self, split: str) -> Path:
        return self.catalog / f"{split}.tsv"

    @property
    def fetch_record(self) -> Path:
        """Written last by the fetch step: the source fingerprints the catalogs were built from."""
        return self.catalog / "fetch.json"

    @property
    def relabel_record(self) -> Path:
        return self.catalog / "relabel.json"

    def raw(self, split: str) -> Path:
        return self.root / "raw" / split

    @property
    def tfrecords(self) -> Path:
        return self.root / "tfrecords"

    @property
    def recordio(self) -> Path:
        return self.root / "recordio"

    @property
    def work(self) -> Path:
        """Plans and finished units of conversions in progress."""
        return self.root / "work"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def ensure(self) -> DataDir:
        for folder in (self.root, self.downloads, self.catalog):
            folder.mkdir(parents=True, exist_ok=True)
        return self
