"""A real Celery cluster (PostgreSQL, Redis, API server, scheduler, DAG processor, Celery workers) for
the cluster tests (``tests/cluster``, ``pytest -m cluster``) and ``benchmarks/bench_cluster.py``; the
settings ``docker-compose.yaml`` is checked against (``settings.py``)."""
