"""The dataset report of a finished output: a text summary and a self-contained ``report/index.html``.

``python -m airflow_resnet_prep.report DATA_DIR [--html]`` prints the summary (``--html`` first writes
the page). DATA_DIR is a local path or an object-store URI: everything goes through its store.
Importing this package loads neither TensorFlow nor Pillow: ``publish`` imports it.
"""

from __future__ import annotations

from airflow_resnet_prep.report.build import (
    REPORT_DIR,
    REPORT_FILES,
    REPORT_KEY,
    RUN_RECORD_KEY,
    ReportError,
    report_path,
    report_uri,
    write_report,
)
from airflow_resnet_prep.report.summary import summary

__all__ = [
    "REPORT_DIR",
    "REPORT_FILES",
    "REPORT_KEY",
    "RUN_RECORD_KEY",
    "ReportError",
    "report_path",
    "report_uri",
    "summary",
    "write_report",
]
