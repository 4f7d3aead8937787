"""What the test cluster and ``docker-compose.yaml`` share: one list, checked against the compose file by
``tests/test_compose.py`` and used by the fixture (``celery_cluster.CeleryCluster``) to build its env.

- ``SERVICES``: compose service -> the process the fixture starts for it (same Airflow command).
- ``SAME_VALUE``: settings with the same value on both.
- ``SAME_SCHEME``: URLs whose scheme (driver) must match; hosts and ports differ (``postgres``/``redis``
  in compose, 127.0.0.1 and free ports in the fixture).
- ``SAME_KEY``: settings both set, each with its own value (worker slots, the DAG's schedule).
- ``DAG_DEFAULTS``: the DAG's param defaults both set (variable -> param), each with its own paths.
"""

from __future__ import annotations

SERVICES = {
    "postgres": "postgres",
    "redis": "redis-server",
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-worker": "celery worker",
}
# In compose only, and why the fixture does without.
COMPOSE_ONLY = {
    "airflow-triggerer": "no task of the DAG defers",
    "airflow-init": "the fixture runs `airflow db migrate` itself",
    "airflow-cli": "the tests use the REST API, as a user's script would",
}

SAME_VALUE = {
    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
    "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
    "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "true",
    "AIRFLOW__CORE__FERNET_KEY": "",
    "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "true",
}
SAME_SCHEME = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2",
    "AIRFLOW__CELERY__RESULT_BACKEND": "db+postgresql",
    "AIRFLOW__CELERY__BROKER_URL": "redis",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http",
}
SAME_KEY = ("AIRFLOW__CELERY__WORKER_CONCURRENCY", "AIRFLOW__RESNET_PREP__SCHEDULE")
DAG_DEFAULTS = {
    "AIRFLOW__RESNET_PREP__DATA_DIR": "data_dir",
    "AIRFLOW__RESNET_PREP__TRAIN_SOURCE": "train_source",
    "AIRFLOW__RESNET_PREP__VAL_SOURCE": "val_source",
    "AIRFLOW__RESNET_PREP__LABELS_SOURCE": "labels_source",
}
