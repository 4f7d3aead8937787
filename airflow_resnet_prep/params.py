"""Every param of the pipeline in one place: default, JSON-schema type and description.

The DAG turns these into Airflow ``Param`` objects (so the trigger form shows them); the CLI and the
benchmark use the same defaults.
"""

from __future__ import annotations

from typing import Any

DEFAULT_LABELS_URL = (
    "https://raw.githubusercontent.com/tensorflow/models/master/research/slim/datasets/"
    "imagenet_2012_validation_synset_labels.txt"
)
IMPLEMENTATIONS = ("nvidia", "reference")

# name -> (default, schema, description)
PARAMS: dict[str, tuple[Any, dict[str, Any], str]] = {
    "implementation": (
        "nvidia",
        {"type": "string", "enum": list(IMPLEMENTATIONS)},
        "nvidia: MXNet RecordIO (.lst/.rec/.idx) as im2rec writes them; reference: TFRecord shards for the "
        "MLPerf reference TensorFlow ResNet.",
    ),
    "data_dir": (
        "",
        {"type": "string"},
        "Working and output folder (downloads, catalog, outputs, manifest.json).",
    ),
    "train_source": (
        "",
        {"type": "string"},
        "ILSVRC2012_img_train.tar: URL (http/https), file:// URL or local path; or a folder <synset>/<image>.",
    ),
    "val_source": (
        "",
        {"type": "string"},
        "ILSVRC2012_img_val.tar: URL or local path; or a flat folder of the images; or <synset>/<image>.",
    ),
    "labels_source": (
        DEFAULT_LABELS_URL,
        {"type": "string"},
        "Validation labels file (line i = synset of ILSVRC2012_val_%08d i): URL or local path.",
    ),
    "train_checksum": ("", {"type": "string"}, "Optional md5:<hex> or sha256:<hex> of the train tar."),
    "val_checksum": ("", {"type": "string"}, "Optional md5:<hex> or sha256:<hex> of the val tar."),
    "http_conn_id": (
        "",
        {"type": "string"},
        "Optional Airflow connection whose login/password (or extra headers) authenticate downloads.",
    ),
    "extract": (False, {"type": "boolean"}, "Also lay the images out as raw/{train,val}/<synset>/<image>."),
    "train_shards": (1024, {"type": "integer", "minimum": 1}, "reference: number of train TFRecord shards."),
    "val_shards": (
        128,
        {"type": "integer", "minimum": 1},
        "reference: number of validation TFRecord shards.",
    ),
    "shuffle_seed": (0, {"type": "integer", "minimum": 0}, "reference: seed of the train shuffle."),
    "resize": (
        0,
        {"type": "integer", "minimum": 0},
        "nvidia: re-encode with this short side (0 = pass-through).",
    ),
    "quality": (95, {"type": "integer", "minimum": 1, "maximum": 100}, "nvidia: JPEG quality when resizing."),
    "on_bad_image": (
        "fail",
        {"type": "string", "enum": ["fail", "skip"]},
        "An unreadable, truncated or empty image: fail the task naming it, or leave it out and list it.",
    ),
    "dali_index": (
        False,
        {"type": "boolean"},
        "reference: also write <shard>.idx so NVIDIA DALI can read them.",
    ),
    "mxnet_version": (
        "22.04",
        {"type": "string"},
        "nvidia: the NVIDIA MXNet container the data is meant for (recorded in the manifest).",
    ),
    "workers": (0, {"type": "integer", "minimum": 0}, "Processes per conversion task (0 = all cores)."),
    "fanout": (
        0,
        {"type": "integer", "minimum": 0, "maximum": 1024},
        "How many mapped Airflow tasks share the conversion (each runs its units with `workers` processes); "
        "0 = auto: 1 with a local executor, 8 with Celery/Kubernetes.",
    ),
    "force": (False, {"type": "boolean"}, "Rebuild even when manifest.json says the output is up to date."),
}


def defaults() -> dict[str, Any]:
    return {name: spec[0] for name, spec in PARAMS.items()}


def resolved(values: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``values``; unknown names are an error naming them."""
    unknown = sorted(set(values) - set(PARAMS))
    if unknown:
        raise ValueError(f"unknown params: {', '.join(unknown)}; known: {', '.join(PARAMS)}")
    return {**defaults(), **values}
