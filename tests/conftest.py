"""Test set-up: Airflow state in a temporary folder (SQLite, no examples), and the sample data set."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="airflow-resnet-prep-tests-"))
REPO = Path(__file__).resolve().parent.parent
# Airflow reads these once, at first import: set them before anything imports airflow.
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Importing Airflow's SDK replaces the root log handlers; do it once here, before pytest's caplog
# installs its own, so that tests can read every log record.
import airflow.sdk  # noqa: E402, F401
import pytest  # noqa: E402

# The object-store servers (SeaweedFS S3, fake-gcs-server) and their fixtures, for tests in any folder.
pytest_plugins = ["tests.support.buckets"]


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory):
    """The package's sample ImageNet (raw download layout), built once per test session."""
    from airflow_resnet_prep.sample import generate

    return generate(tmp_path_factory.mktemp("sample"), classes=4, train_per_class=6, val_per_class=3, seed=0)


@pytest.fixture
def airflow_db() -> Path:
    """A fresh metadata DB (SQLite under the temporary AIRFLOW_HOME above); returns AIRFLOW_HOME."""
    from airflow.utils import db

    db.resetdb()
    return _AIRFLOW_HOME
