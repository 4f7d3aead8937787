"""The report's *Checks* section (issue 20): checksums recorded, decode check on or off, its failures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from airflow_resnet_prep.pipeline import run
from airflow_resnet_prep.report import write_report


def report_of(sample, data_dir: Path, impl: str, **extra) -> tuple[str, dict]:
    run(
        {
            "data_dir": str(data_dir),
            "train_source": str(sample.train_tar),
            "val_source": str(sample.val_tar),
            "labels_source": str(sample.labels),
            "implementation": impl,
            "workers": 1,
            **extra,
        }
    )
    page = Path(write_report(str(data_dir))).read_text()
    section = re.search(r'<section id="checks">.*?</section>', page, re.S)
    assert section is not None and 'href="#checks"' in page
    return section.group(0), json.loads((data_dir / "manifest.json").read_text())


@pytest.mark.parametrize(("impl", "decode_check"), [("nvidia", False), ("reference", True)])
def test_checks_section_says_what_was_checked(sample, tmp_path: Path, impl: str, decode_check: bool) -> None:
    extra = {"train_shards": 4, "val_shards": 2} if impl == "reference" else {}
    html, manifest = report_of(sample, tmp_path / "out", impl, decode_check=decode_check, **extra)
    assert f"recorded for all {len(manifest['outputs']):,} files</span>, computed while writing" in html
    for name, stats in manifest["outputs"].items():  # every file with its CRC, as the manifest has it
        assert re.search(rf"<code>{re.escape(name)}</code>.*?<code>{stats['crc32c']}</code>", html), name
    if decode_check:
        assert '<span class="good">on</span>: every image was decoded' in html and "none failed" in html
    else:
        assert '<span class="muted">off</span>: images were checked by their header' in html
    assert f"python -m airflow_resnet_prep.verify {tmp_path / 'out'} [--decode]" in html


def test_an_older_manifest_without_checksums_says_so(sample, tmp_path: Path) -> None:
    data_dir = tmp_path / "old"
    report_of(sample, data_dir, "nvidia")
    manifest_path = data_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for stats in manifest["outputs"].values():
        del stats["crc32c"]
    del manifest["checks"]
    manifest_path.write_text(json.dumps(manifest))
    page = Path(write_report(str(data_dir))).read_text()
    assert '<span class="far">not recorded</span> (written by a version without checksums)' in page
    assert '<span class="muted">off</span>' in page


def test_the_text_summary_says_what_was_checked(sample, tmp_path: Path) -> None:
    from airflow_resnet_prep.report import summary

    report_of(sample, tmp_path / "on", "nvidia", decode_check=True)
    assert "  checks: CRC-32C recorded, decode check on (0 failed); check a copy with: " in summary(
        str(tmp_path / "on")
    )
