"""The package is an Airflow provider: Airflow finds it and each listed operator module imports."""

from __future__ import annotations

import importlib


def test_airflow_lists_the_provider():
    from airflow.providers_manager import ProvidersManager

    providers = ProvidersManager().providers
    assert "airflow-resnet-prep" in providers
    info = providers["airflow-resnet-prep"]
    assert info.version == importlib.import_module("airflow_resnet_prep").__version__


def test_listed_operator_modules_hold_the_five_operators():
    from airflow_resnet_prep import get_provider_info

    modules = get_provider_info()["operators"][0]["python-modules"]
    names = {
        name
        for module in modules
        for name in vars(importlib.import_module(module))
        if name.endswith("Operator")
    }
    assert {
        "FetchImagenetOperator",
        "RelabelValOperator",
        "ConvertTFRecordOperator",
        "NvidiaPrepOperator",
        "PublishOperator",
    } <= names
