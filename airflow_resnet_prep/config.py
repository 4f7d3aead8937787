"""The deployment's settings: Airflow's config section ``[resnet_prep]``.

Each option is read, in this order, from ``AIRFLOW__RESNET_PREP__<OPTION>``, the ``[resnet_prep]``
section of ``airflow.cfg`` (both through Airflow's own config), then the deprecated variable
``MLPERF_RESNET_PREP_<OPTION>`` (still read in 0.3.x, with a warning naming the new one; gone in 0.4.0).
:data:`OPTIONS` is the one list of options the code reads: :func:`airflow_resnet_prep.get_provider_info`
declares it, so that ``airflow config list`` shows every one with its description and default. It holds
the deployment's settings below and, generated from ``params.PARAMS``, one option per param whose value
is that param's default in every DAG of the deployment (:func:`deployment_defaults`).
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

from airflow_resnet_prep.params import PARAMS

SECTION = "resnet_prep"
ENV_PREFIX = "AIRFLOW__RESNET_PREP__"
LEGACY_ENV_PREFIX = "MLPERF_RESNET_PREP_"
LEGACY_REMOVED_IN = "0.4.0"

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
    "schedule": (
        "Schedule of the shipped DAG (cron or preset, e.g. @weekly); empty: triggered by hand only.",
        "@weekly",
        "",
    ),
    "inflate_compressed_sources": (
        "Inflate each compressed source file (Hugging Face's train_images_<n>.tar.gz, val_images.tar.gz) "
        "once, in the fetch step, into a plain tar under the data_dir's downloads/inflated/, which every "
        "later step reads in place (true/false). It costs disk space about the images' size (~150 GB for "
        "ImageNet). false: the shards are read as compressed streams, inflated again by every read of a "
        "unit or chunk (thousands of passes over the real set); only for a disk too small for the copy.",
        "false",
        "true",
    ),
    "report_view": (
        "Show the Dataset report tab on DAG runs (true/false). The API server reads this at start.",
        "false",
        "true",
    ),
}


# Params without a deployment default: one that forced every run to rebuild would be a trap.
_NO_DEPLOYMENT_DEFAULT = ("force",)
# What the deployment should know about a param's default beyond the param's own description.
_DEFAULT_NOTES = {
    "workers": "Set it to the cores divided by the worker's task concurrency, so that parallel tasks do not "
    "oversubscribe the machine.",
}
_DEFAULT_EXAMPLES = {
    "data_dir": "/data/imagenet/prepared",
    "train_source": "/data/imagenet/ILSVRC2012_img_train.tar",
    "val_source": "/data/imagenet/ILSVRC2012_img_val.tar",
    "labels_source": "/data/imagenet/imagenet_2012_validation_synset_labels.txt",
    "implementation": "reference",
    "workers": "2",
}
#: The params whose default a deployment may set in ``[resnet_prep]`` (the option has the param's name).
PARAM_DEFAULT_OPTIONS = tuple(name for name in PARAMS if name not in _NO_DEPLOYMENT_DEFAULT)
OPTIONS.update(
    {
        name: (
            f"Default of the param {name} in every DAG of this deployment (a DAG's own defaults= win). "
            + (
                "Required: a scheduled DAG needs it here or in its defaults. "
                if PARAMS[name].required
                else ""
            )
            + f"{_DEFAULT_NOTES.get(name, '')} {_DEFAULTS_NOTE} The param: {PARAMS[name].description}".replace(
                "  ", " "
            ),
            _DEFAULT_EXAMPLES.get(name),
            "",
        )
        for name in PARAM_DEFAULT_OPTIONS
    }
)
# Param defaults that were read before they were declared (0.2.0 read every string param) are new here.
_ADDED_IN = {
    **{
        name: "0.3.0"
        for name in PARAM_DEFAULT_OPTIONS
        if name not in ("data_dir", "train_source", "val_source", "labels_source", "workers")
    },
    "inflate_compressed_sources": "0.3.0",
}
_TYPES = {
    "report_view": "boolean",
    "inflate_compressed_sources": "boolean",
    **{name: PARAMS[name].schema["type"] for name in PARAM_DEFAULT_OPTIONS},
}


def _airflow_conf() -> Any:
    try:  # the Task SDK's config in task processes
        from airflow.sdk.configuration import conf
    except ImportError:  # pragma: no cover - the API server and older cores
        from airflow.configuration import conf
    return conf


_warned: set[str] = set()


def lookup(option: str) -> str:
    """``[resnet_prep] option`` as set by the deployment (see the module doc), stripped; "" when unset."""
    value = _airflow_conf().get(SECTION, option, fallback=None)
    if value is None or not str(value).strip():
        legacy = LEGACY_ENV_PREFIX + option.upper()
        value = os.environ.get(legacy, "")
        if str(value).strip() and legacy not in _warned:
            _warned.add(legacy)
            message = (
                f"{legacy} is deprecated and is no longer read from airflow-resnet-prep {LEGACY_REMOVED_IN}: "
                f"set {ENV_PREFIX}{option.upper()} (or [{SECTION}] {option} in airflow.cfg) instead"
            )
            # A FutureWarning is shown by default; Airflow's processes log it (py.warnings).
            warnings.warn(message, FutureWarning, stacklevel=2)
    return str(value).strip()


def deployment_defaults() -> dict[str, Any]:
    """The param defaults the deployment set in ``[resnet_prep]``, typed as the params are. An empty
    value is no default (docker compose passes an unset variable as empty). A value its param's schema
    refuses is an error naming the option, at parse time, rather than a form no run can pass."""
    from jsonschema import ValidationError, validate

    found: dict[str, Any] = {}
    for name in PARAM_DEFAULT_OPTIONS:
        text = lookup(name)
        if not text:
            continue
        spec = PARAMS[name]
        kind = spec.schema["type"]
        try:
            if kind == "integer":
                value: Any = int(text)
            elif kind == "boolean":
                if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError("not a boolean (true or false)")
                value = text.lower() in ("true", "1", "yes", "on")
            else:
                value = text
            validate(value, spec.schema)
        except (ValueError, ValidationError) as exc:
            reason = exc.message if isinstance(exc, ValidationError) else str(exc)
            raise ValueError(
                f"[{SECTION}] {name} ({ENV_PREFIX}{name.upper()}) = {text!r} is not a valid default of the "
                f"param {name}: {reason}"
            ) from None
        found[name] = value
    return found


def get(option: str, load_airflow: bool = True) -> str:
    """The value of a declared option; its default when unset.

    ``load_airflow=False``, for code the CLI and library callers run too: Airflow's config only when this
    process has loaded it already (a task), else the variables alone (loading it costs seconds)."""
    if load_airflow or "airflow.configuration" in sys.modules or "airflow.sdk.configuration" in sys.modules:
        return lookup(option) or OPTIONS[option][2]
    for name in (ENV_PREFIX + option.upper(), LEGACY_ENV_PREFIX + option.upper()):
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    return OPTIONS[option][2]


def get_list(option: str) -> list[str]:
    """A comma-separated option as a list of its non-empty items."""
    return [item.strip() for item in get(option).split(",") if item.strip()]


def get_bool(option: str, load_airflow: bool = True) -> bool:
    return get(option, load_airflow).lower() in ("true", "1", "yes", "on")


def provider_config() -> dict[str, Any]:
    """The ``config`` entry of the provider info."""
    return {
        SECTION: {
            "description": "Settings of the airflow-resnet-prep provider (MLPerf ResNet-50 ImageNet preparation).",
            "options": {
                name: {
                    "description": description,
                    "version_added": _ADDED_IN.get(name, "0.2.0"),
                    "type": _TYPES.get(name, "string"),
                    "example": example,
                    "default": default,
                }
                for name, (description, example, default) in OPTIONS.items()
            },
        }
    }
