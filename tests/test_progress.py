"""Progress lines: count, rate and ETA, and no made-up ETA when the total is unknown."""

from __future__ import annotations

import logging

from airflow_resnet_prep.progress import Progress


def test_line_with_a_known_total(caplog):
    progress = Progress("converting", total=1000, interval=0.0)
    progress.start -= 10.0  # as if it had run for 10 s
    with caplog.at_level(logging.INFO, logger="airflow_resnet_prep"):
        progress.advance(250)
    line = caplog.records[-1].getMessage()
    assert line.startswith("converting: 250/1,000 images (25.0%), 25 images/s, elapsed 0:10, ETA 0:30")


def test_line_with_an_unknown_total_has_no_eta():
    progress = Progress("indexing train.tar", total=0, unit="members")
    progress.start -= 4.0
    progress.advance(2000)
    line = progress.line()
    assert line.startswith("indexing train.tar: 2,000 members, 500 members/s, elapsed 0:04")
    assert "ETA" not in line and "%" not in line
