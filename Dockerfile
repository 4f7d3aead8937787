# The Airflow image with this provider installed, for docker-compose.yaml (and any Celery or Kubernetes
# deployment). Build: `docker compose build` (or `docker build -t airflow-resnet-prep .`).
#
# Installing at image build time, not through _PIP_ADDITIONAL_REQUIREMENTS, which Airflow's compose file
# reserves for quick checks. apache-airflow is pinned in the same pip command so that resolving this
# package's dependencies (TensorFlow, Pillow, ...) can never up- or downgrade the Airflow of the image.
FROM apache/airflow:3.3.2

COPY --chown=airflow:0 pyproject.toml README.md /opt/airflow-resnet-prep/
COPY --chown=airflow:0 airflow_resnet_prep /opt/airflow-resnet-prep/airflow_resnet_prep

RUN pip install --no-cache-dir "apache-airflow==3.3.2" /opt/airflow-resnet-prep
