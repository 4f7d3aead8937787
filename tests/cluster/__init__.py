"""A real Celery cluster (PostgreSQL, Redis, API server, scheduler, DAG processor, two Celery workers) for
the scale-out tests (``pytest -m cluster``) and ``benchmarks/bench_cluster.py``."""
