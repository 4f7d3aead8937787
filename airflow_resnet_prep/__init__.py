"""Prepare ImageNet (ILSVRC2012) for MLPerf ResNet-50 training, as an Apache Airflow provider."""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"
__all__ = ["get_provider_info", "mlperf_resnet_prep_dag"]


def __getattr__(name: str) -> Any:
    # The factory imports Airflow's DAG machinery: only when asked for, so that the command-line tools
    # and worker processes that import this package do not pay for it.
    if name == "mlperf_resnet_prep_dag":
        from airflow_resnet_prep.factory import mlperf_resnet_prep_dag

        return mlperf_resnet_prep_dag
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_provider_info() -> dict:
    """Describe the provider to Airflow (``airflow providers list`` and ``airflow config list`` read this)."""
    from airflow_resnet_prep.config import provider_config

    integration = "MLPerf ResNet-50 data preparation"
    return {
        "package-name": "airflow-resnet-prep",
        "name": "MLPerf ResNet data preparation",
        "description": "Turns the raw ImageNet download into MXNet RecordIO, TFRecord or WebDataset training inputs.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": integration,
                "external-doc-url": "https://github.com/mlcommons/training",
                "tags": ["software"],
            }
        ],
        "operators": [
            {
                "integration-name": integration,
                "python-modules": [
                    "airflow_resnet_prep.operators.fetch",
                    "airflow_resnet_prep.operators.relabel",
                    "airflow_resnet_prep.operators.tfrecord",
                    "airflow_resnet_prep.operators.nvidia",
                    "airflow_resnet_prep.operators.webdataset",
                    "airflow_resnet_prep.operators.publish",
                    "airflow_resnet_prep.operators.verify",
                ],
            }
        ],
        "config": provider_config(),
        # The Dataset report tab and its app load through the `airflow.plugins` entry point instead:
        # provider-info plugins load only with eager provider discovery, which is not the default.
    }
