"""Fixtures of the catalog tests: the sample set extracted as folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.sampletools import extract_sample_tar


@pytest.fixture(scope="module")
def extracted(sample, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("extracted")
    extract_sample_tar(sample.train_tar, root / "train")
    extract_sample_tar(sample.val_tar, root / "val")
    return root
