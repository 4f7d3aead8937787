"""``python -m airflow_resnet_prep``: the command line (:mod:`airflow_resnet_prep.cli`)."""

from airflow_resnet_prep.cli import main

raise SystemExit(main())
