"""Prepare ImageNet (ILSVRC2012) for MLPerf ResNet-50 training, as an Apache Airflow provider."""

from __future__ import annotations

__version__ = "0.1.0"


def get_provider_info() -> dict:
    """Describe the provider to Airflow (``airflow providers list`` reads this)."""
    return {
        "package-name": "airflow-resnet-prep",
        "name": "MLPerf ResNet data preparation",
        "description": "Turns the raw ImageNet download into MXNet RecordIO or TFRecord training inputs.",
        "versions": [__version__],
        "operators": [
            {
                "integration-name": "MLPerf ResNet data preparation",
                "python-modules": [
                    "airflow_resnet_prep.operators.fetch",
                    "airflow_resnet_prep.operators.relabel",
                    "airflow_resnet_prep.operators.tfrecord",
                    "airflow_resnet_prep.operators.nvidia",
                    "airflow_resnet_prep.operators.publish",
                ],
            }
        ],
        # The Dataset report tab and its app load through the `airflow.plugins` entry point instead:
        # provider-info plugins load only with eager provider discovery, which is not the default.
    }
