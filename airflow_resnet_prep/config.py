"""The deployment's settings: Airflow's config section ``[resnet_prep]``.

Each option is read, in this order, from ``AIRFLOW__RESNET_PREP__<OPTION>``, the ``[resnet_prep]``
section of ``airflow.cfg`` (both through Airflow's own config), then the older variable
``MLPERF_RESNET_PREP_<OPTION>`` (kept working for deployments set up with it). :data:`OPTIONS` is the
one list of options: :func:`airflow_resnet_prep.get_provider_info` declares it, so that
``airflow config list`` shows the section with its defaults.
"""

from __future__ import annotations

import os
from typing import Any

SECTION = "resnet_prep"
LEGACY_ENV_PREFIX = "MLPERF_RESNET_PREP_"

_DEFAULTS_NOTE = (
    "A run that leaves the param empty uses this value. Whoever may trigger the DAG can still give "
    "another one: restrict it with allowed_data_roots / allowed_conn_ids."
)

#: ``option -> (description, example, default)``.
OPTIONS: dict[str, tuple[str, str | None, str]] = {
    "allowed_conn_ids": (
        "Comma-separated Airflow connection ids that a run may name in http_conn_id, storage_conn_id or an "
        "s3://<conn_id>@bucket URI. Empty: only the connections the DAG's own code names (its defaults). "
        "Anything else is refused before any request is sent. The Dataset report view reads a bucket only "
        "with a connection listed here.",
        "imagenet_mirror,prep_s3",
        "",
    ),
    "allowed_data_roots": (
        "Comma-separated absolute paths and/or s3://bucket/prefix, gs://bucket/prefix. When set, data_dir "
        "must lie under one of them, and the Dataset report view serves nothing outside them. Empty: any "
        "place the workers can write (fine on a single-user machine; set it on a shared deployment). A "
        "data_dir in a bucket named without a connection (reached with the worker's own identity) must lie "
        "under one of these bucket prefixes or be named by the DAG's code, set or not.",
        "/data/imagenet,s3://ml-datasets/imagenet",
        "",
    ),
    "allowed_sources": (
        "Comma-separated prefixes a source (train_source, val_source, labels_source) and every redirect "
        "of its download may lie under: URL prefixes (scheme, host and port exact, the path by whole "
        "segments), absolute local paths, s3://bucket/prefix, gs://bucket/prefix. Sources the DAG's own "
        "code names are allowed too. Empty: any public or private http(s) host, local path or bucket "
        "reached with a connection (fine on a single-user machine; set it on a shared deployment). "
        "Link-local and unspecified addresses (cloud metadata services) are refused always, and a bucket "
        "read with the worker's own identity (no connection) must be listed here or named by the DAG.",
        "https://mirror.example.com/imagenet/,/data/imagenet,s3://ml-datasets/imagenet",
        "",
    ),
    "max_workers": (
        "The most worker processes one conversion task may start, whatever its workers param asks. "
        "Empty: the worker machine's CPU count.",
        "8",
        "",
    ),
    "data_dir": (f"Default data_dir. {_DEFAULTS_NOTE}", "/data/imagenet/prepared", ""),
    "train_source": (
        f"Default train_source. {_DEFAULTS_NOTE}",
        "/data/imagenet/ILSVRC2012_img_train.tar",
        "",
    ),
    "val_source": (f"Default val_source. {_DEFAULTS_NOTE}", "/data/imagenet/ILSVRC2012_img_val.tar", ""),
    "labels_source": (f"Default labels_source. {_DEFAULTS_NOTE}", None, ""),
    "workers": (
        "Default workers (processes per conversion task; 0 = one per core). Set it to the cores divided "
        "by the worker's task concurrency so that parallel tasks do not oversubscribe the machine.",
        "2",
        "",
    ),
    "schedule": (
        "Schedule of the shipped DAG (cron or preset, e.g. @weekly); empty: triggered by hand only.",
        "@weekly",
        "",
    ),
    "report_view": (
        "Show the Dataset report tab on DAG runs (true/false). The API server reads this at start.",
        "false",
        "true",
    ),
}


def _airflow_conf() -> Any:
    try:  # the Task SDK's config in task processes
        from airflow.sdk.configuration import conf
    except ImportError:  # pragma: no cover - the API server and older cores
        from airflow.configuration import conf
    return conf


def lookup(option: str) -> str:
    """``[resnet_prep] option`` as set by the deployment (see the module doc), stripped; "" when unset."""
    value = _airflow_conf().get(SECTION, option, fallback=None)
    if value is None or not str(value).strip():
        value = os.environ.get(LEGACY_ENV_PREFIX + option.upper(), "")
    return str(value).strip()


def get(option: str) -> str:
    """The value of a declared option; its default when unset."""
    return lookup(option) or OPTIONS[option][2]


def get_list(option: str) -> list[str]:
    """A comma-separated option as a list of its non-empty items."""
    return [item.strip() for item in get(option).split(",") if item.strip()]


def get_bool(option: str) -> bool:
    return get(option).lower() in ("true", "1", "yes", "on")


def provider_config() -> dict[str, Any]:
    """The ``config`` entry of the provider info."""
    return {
        SECTION: {
            "description": "Settings of the airflow-resnet-prep provider (MLPerf ResNet-50 ImageNet preparation).",
            "options": {
                name: {
                    "description": description,
                    "version_added": "0.2.0",
                    "type": "boolean" if name == "report_view" else "string",
                    "example": example,
                    "default": default,
                }
                for name, (description, example, default) in OPTIONS.items()
            },
        }
    }
