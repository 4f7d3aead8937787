# The Airflow image with this provider installed, for docker-compose.yaml (and any Celery or Kubernetes
# deployment). Build: `docker compose build` (or `docker build -t airflow-resnet-prep .`).
#
# AIRFLOW_BASE_IMAGE: the Airflow image to build on; the official one by default. Another image must keep
# its contract: user `airflow` (uid 50000, group 0) running pip into a Python environment first on PATH,
# AIRFLOW_HOME=/opt/airflow, the celery/postgres/fab/standard providers, and an entrypoint that runs
# `airflow <command>` (the test suite builds such an image from Debian packages: tests/compose).
#
# Installing at image build time, not through _PIP_ADDITIONAL_REQUIREMENTS, which Airflow's compose file
# reserves for quick checks. apache-airflow is pinned to the base image's own version in each pip command,
# so resolving this package's dependencies can never up- or downgrade the image's Airflow.
ARG AIRFLOW_BASE_IMAGE=apache/airflow:3.3.2
FROM ${AIRFLOW_BASE_IMAGE}

# The dependencies first, from pyproject.toml alone (with a placeholder package that has the
# __version__ pyproject reads): this layer is rebuilt only when pyproject.toml changes, not on every
# change of the code.
COPY --chown=airflow:0 pyproject.toml /opt/airflow-resnet-prep/
RUN cd /opt/airflow-resnet-prep \
    && mkdir airflow_resnet_prep && echo '__version__ = "0"' > airflow_resnet_prep/__init__.py && touch README.md \
    && AIRFLOW_VERSION="$(python -c 'from importlib.metadata import version; print(version("apache-airflow"))')" \
    && pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" /opt/airflow-resnet-prep \
    && pip uninstall -y -q airflow-resnet-prep \
    && rm -rf airflow_resnet_prep README.md build ./*.egg-info

COPY --chown=airflow:0 README.md /opt/airflow-resnet-prep/
COPY --chown=airflow:0 airflow_resnet_prep /opt/airflow-resnet-prep/airflow_resnet_prep
RUN AIRFLOW_VERSION="$(python -c 'from importlib.metadata import version; print(version("apache-airflow"))')" \
    && pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" /opt/airflow-resnet-prep \
    && rm -rf /opt/airflow-resnet-prep/build /opt/airflow-resnet-prep/*.egg-info
