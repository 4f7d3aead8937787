"""``python -m airflow_resnet_prep.report DATA_DIR [DATA_DIR ...] [--html]``.

Prints each output's summary (with the path of ``report/index.html`` when there is one); ``--html``
first writes or rewrites that report, e.g. for outputs made by ``python -m airflow_resnet_prep.pipeline``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.report import summary, write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_resnet_prep.report",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("data_dirs", nargs="+", metavar="DATA_DIR", help="a data_dir with a manifest.json")
    parser.add_argument("--html", action="store_true", help="write (or rewrite) DATA_DIR/report/index.html")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    status = 0
    for data_dir in map(os.path.abspath, args.data_dirs):  # one machine: relative to here
        if args.html:
            try:
                write_report(data_dir)
            except PrepError as exc:
                print(f"error: {exc}", file=sys.stderr)
                status = 1
        print(summary(data_dir))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
