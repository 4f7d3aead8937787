"""``python -m airflow_resnet_prep.report DATA_DIR [DATA_DIR ...] [--html] [--conn-id CONN_ID]``.

Prints each output's summary (with the path of ``report/index.html`` when there is one); ``--html``
first writes or rewrites that report, e.g. for outputs made by ``python -m airflow_resnet_prep.pipeline``.
A DATA_DIR is a local path or an ``s3://`` / ``gs://`` URI (``--conn-id``: the Airflow connection of a
URI that names none, e.g. given as ``AIRFLOW_CONN_<ID>``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.layout import DataDir
from airflow_resnet_prep.report import summary, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_resnet_prep.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "data_dirs",
        nargs="+",
        metavar="DATA_DIR",
        help="a data_dir (path or s3:// / gs:// URI) with a manifest.json",
    )
    parser.add_argument("--html", action="store_true", help="write (or rewrite) DATA_DIR/report/index.html")
    parser.add_argument(
        "--conn-id",
        default=None,
        help="Airflow connection for a DATA_DIR URI that names none (storage_conn_id)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    status = 0
    for text in args.data_dirs:
        try:
            data_dir = DataDir.of(text, args.conn_id, cwd=os.getcwd())  # one machine: relative to here
        except PrepError as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        if args.html:
            try:
                write_report(data_dir)
            except PrepError as exc:
                print(f"error: {exc}", file=sys.stderr)
                status = 1
        try:
            print(summary(data_dir))
        except PrepError as exc:  # e.g. a URI whose connection is not defined here
            print(f"error: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
