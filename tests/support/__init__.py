"""What tests and benchmarks share: servers started on 127.0.0.1 (SeaweedFS S3, an HTTP file server, a
live Airflow, a Celery cluster), the Airflow CLI, MXNet's own tools and sample-set helpers.

Imported as ``from tests.support.<module> import ...`` (run from the repo root, or with it on the path).
"""
