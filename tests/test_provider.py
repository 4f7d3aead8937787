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
        "ConvertWebDatasetOperator",
        "PublishOperator",
        "VerifyOperator",
    } <= names


def test_the_config_section_is_declared_and_shown_by_airflow(tmp_path):
    """`airflow config list` shows [resnet_prep] with its options, and a value set the documented way
    (AIRFLOW__RESNET_PREP__*) is what the package reads."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from airflow_resnet_prep import config, get_provider_info

    options = get_provider_info()["config"]["resnet_prep"]["options"]
    assert {"allowed_conn_ids", "allowed_data_roots", "report_view", "data_dir", "schedule"} <= set(options)
    assert {"allowed_sources", "max_workers"} <= set(options)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")},
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__RESNET_PREP__ALLOWED_CONN_IDS": "mirror_x",
    }
    airflow = str(Path(sys.executable).parent / "airflow")
    shown = subprocess.run(
        [airflow, "config", "list", "--section", "resnet_prep", "--include-descriptions", "--show-values"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "[resnet_prep]" in shown.stdout and "allowed_data_roots" in shown.stdout
    assert "allowed_sources" in shown.stdout and "max_workers" in shown.stdout
    assert "allowed_conn_ids = mirror_x" in shown.stdout
    # The param defaults the DAG reads from the section are declared too, with their descriptions.
    assert "Default of the param train_shards" in shown.stdout and "\nimplementation = " in shown.stdout
    assert config.OPTIONS["report_view"][2] == "true"


def test_report_view_false_hides_the_tab():
    import os
    import subprocess
    import sys

    probe = (
        "from airflow_resnet_prep.plugins.report_plugin import DatasetReportPlugin as P; "
        "print(len(P.external_views), len(P.fastapi_apps))"
    )
    for value, views in (("false", "0"), ("true", "1")):
        env = {**os.environ, "AIRFLOW__RESNET_PREP__REPORT_VIEW": value}
        out = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
        )
        assert out.stdout.split()[-2:] == [views, "1"], out.stderr[-2000:]
