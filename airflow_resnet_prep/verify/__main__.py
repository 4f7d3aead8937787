"""The ``verify`` command line; exit status 0 only when everything matches the manifest."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.layout import DataDir
from airflow_resnet_prep.verify.core import verify

EXIT_OK, EXIT_PROBLEMS, EXIT_ERROR = 0, 1, 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_resnet_prep.verify",
        description="Check a prepared ImageNet (a data_dir, or a copy of one) against its manifest.json: "
        "files, sizes, CRC-32C, record counts, framing, labels, per-class counts, .idx/.lst. Exit status: "
        "0 everything holds, 1 problems found (each printed as FAIL <file> (record, offset, image): "
        "<reason>), 2 could not run.",
    )
    parser.add_argument("data_dir", help="the data_dir (or a copy): a path, or an s3:// / gs:// URI")
    parser.add_argument(
        "--decode",
        action="store_true",
        help="also decode every image with TensorFlow's decode_jpeg, as the reference trainer does "
        "(needs: pip install 'airflow-resnet-prep[tensorflow]')",
    )
    parser.add_argument("--workers", type=int, default=0, help="processes (default 0: one per core)")
    parser.add_argument("--conn-id", help="Airflow connection for a URI that names none")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        # One machine: a relative path means the current folder's (a data_dir param must be absolute).
        where = DataDir.of(args.data_dir, args.conn_id, cwd=os.getcwd())
        report = verify(where, decode=args.decode, workers=args.workers, conn_id=args.conn_id)
    except (PrepError, ValueError, OSError) as exc:
        print(f"verify: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(report.lines()))
    return EXIT_OK if report.ok else EXIT_PROBLEMS


if __name__ == "__main__":
    sys.exit(main())
