"""Every param of the pipeline in one place: its default, JSON schema, description and form section.

The DAG turns these into Airflow ``Param`` objects (so the trigger form shows them, grouped in
sections); the CLI and the benchmark use the same defaults. Three params are required (``data_dir``
and the two image sources). Every other param is optional: its schema admits ``null``, which means
"not given" and resolves to the default (:func:`resolved`), so the form submits with only the
required fields filled.
"""

from __future__ import annotations

from typing import Any, NamedTuple

DEFAULT_LABELS_URL = (
    "https://raw.githubusercontent.com/tensorflow/models/master/research/slim/datasets/"
    "imagenet_2012_validation_synset_labels.txt"
)
IMPLEMENTATIONS = ("nvidia", "reference", "webdataset")

# Form sections, in the order a user fills them. Required params have no section: they go to the
# form's first, expanded block; Airflow starts every named section collapsed.
SOURCES = "Sources: labels, checksums, credentials"
OUTPUT = "Output"
REFERENCE = "reference: TFRecord options"
NVIDIA = "nvidia: RecordIO options"
EXECUTION = "Execution"


class ParamSpec(NamedTuple):
    default: Any  # what "not given" (null) means
    schema: dict[str, Any]  # JSON schema of the value without null; "type" is one type name
    description: str  # plain text: the form's help, the CLI's and the README's
    section: str | None = None  # None: required, shown first
    description_md: str | None = None  # richer help for the form, where a list or a link helps
    values_display: dict[str, str] | None = None
    shown_default: Any = ...  # the value the form starts with, when not ``default`` (e.g. null)

    @property
    def required(self) -> bool:
        return self.section is None

    @property
    def form_default(self) -> Any:
        return self.default if self.shown_default is ... else self.shown_default

    def form_schema(self) -> dict[str, Any]:
        """The schema the form validates: optional params also admit null ("not given")."""
        schema = dict(self.schema)
        if not self.required:
            schema["type"] = ["null", schema["type"]]
            if "enum" in schema:  # an enum must list null too, or null fails it
                schema["enum"] = [None, *schema["enum"]]
        if self.section:
            schema["section"] = self.section
        if self.values_display:
            schema["values_display"] = self.values_display
        return schema


PARAMS: dict[str, ParamSpec] = {
    "data_dir": ParamSpec(
        "",
        {"type": "string"},
        "Required. Where the catalog, work state, outputs and manifest.json go: an absolute path every "
        "worker sees, or an s3://[conn_id@]bucket/prefix or gs:// URI (workers then share only the bucket).",
    ),
    "train_source": ParamSpec(
        "",
        {"type": "string"},
        "Required. ILSVRC2012_img_train.tar: absolute path, file:// or http(s) URL, or s3:// / gs:// URI; or a "
        "folder (or bucket prefix) laid out as <synset>/<image>.",
        description_md=(
            "**Required.** The training images, one of:\n\n"
            "- `ILSVRC2012_img_train.tar` as a local path (read in place, never copied),\n"
            "- an `http(s)://` URL (downloaded to `data_dir/downloads/`, resumable),\n"
            "- an `s3://[conn_id@]bucket/key` or `gs://` URI (read in place with ranged requests),\n"
            "- a folder (or bucket prefix) laid out as `<synset>/<image>`."
        ),
    ),
    "val_source": ParamSpec(
        "",
        {"type": "string"},
        "Required. ILSVRC2012_img_val.tar: absolute path, URL or s3:// / gs:// URI; or a flat folder of its "
        "images; or a folder laid out as <synset>/<image>.",
        description_md=(
            "**Required.** The validation images, one of:\n\n"
            "- `ILSVRC2012_img_val.tar` as a local path, an `http(s)://` URL or an `s3://` / `gs://` URI,\n"
            "- a flat folder of `ILSVRC2012_val_%08d.JPEG` files,\n"
            "- a folder laid out as `<synset>/<image>`."
        ),
    ),
    "implementation": ParamSpec(
        "nvidia",
        {"type": "string", "enum": list(IMPLEMENTATIONS)},
        "nvidia: MXNet RecordIO (.lst/.rec/.idx) as im2rec writes them; reference: TFRecord shards for the "
        "MLPerf reference TensorFlow ResNet; webdataset: tar shards for PyTorch (webdataset, timm, DALI). "
        "Default nvidia.",
        section=OUTPUT,
        values_display={
            "nvidia": "nvidia: MXNet RecordIO (.lst/.rec/.idx) for NVIDIA MXNet/DALI",
            "reference": "reference: TFRecord shards for the MLPerf reference TensorFlow ResNet",
            "webdataset": "webdataset: tar shards for PyTorch (webdataset, timm, DALI)",
        },
    ),
    "extract": ParamSpec(
        False,
        {"type": "boolean"},
        "Also lay the images out as raw/{train,val}/<synset>/<image> (about 150 GB more disk). Default off.",
        section=OUTPUT,
    ),
    "on_bad_image": ParamSpec(
        "fail",
        {"type": "string", "enum": ["fail", "skip"]},
        "An unreadable, truncated or empty image: fail the task naming it, or skip it (left out and listed "
        "in the manifest). Default fail.",
        section=OUTPUT,
        values_display={
            "fail": "fail: stop and name the image",
            "skip": "skip: leave it out, list it in the manifest and report",
        },
    ),
    "decode_check": ParamSpec(
        False,
        {"type": "boolean"},
        "Decode every image with TensorFlow's JPEG decoder (as the reference trainer does) before writing "
        "it; one that fails follows on_bad_image. Catches images whose header is fine but whose data is "
        "not. About 2 ms of CPU per image; needs the tensorflow extra. Default off.",
        section=OUTPUT,
    ),
    "labels_source": ParamSpec(
        DEFAULT_LABELS_URL,
        {"type": "string"},
        "Validation labels file (line i = synset of ILSVRC2012_val_%08d i): URL or absolute path. Default: "
        "the file in the TensorFlow models repository.",
        section=SOURCES,
        description_md=(
            "Validation labels file: line *i* is the synset of `ILSVRC2012_val_%08d` *i*. URL or absolute "
            "path. Empty: [the file in the TensorFlow models repository]"
            f"({DEFAULT_LABELS_URL}); give a local copy on machines without internet."
        ),
    ),
    "train_checksum": ParamSpec(
        "",
        {"type": "string"},
        "Optional md5:<hex> or sha256:<hex> of the train tar, verified once before use. Real set: "
        "md5:1d675b47d978889d74fa0da5fadfb00e.",
        section=SOURCES,
        shown_default=None,
    ),
    "val_checksum": ParamSpec(
        "",
        {"type": "string"},
        "Optional md5:<hex> or sha256:<hex> of the val tar, verified once before use. Real set: "
        "md5:29b22e2961454d5413ddabcf34fc5622.",
        section=SOURCES,
        shown_default=None,
    ),
    "http_conn_id": ParamSpec(
        "",
        {"type": "string"},
        "Optional Airflow connection whose login/password (or extra headers) authenticate downloads. "
        "Never put credentials in the params.",
        section=SOURCES,
        shown_default=None,
    ),
    "storage_conn_id": ParamSpec(
        "",
        {"type": "string"},
        "Optional Airflow connection (aws, or google_cloud_platform) for a data_dir or sources given as "
        "s3:// or gs:// URIs that name none (s3://<conn_id>@bucket/key names its own).",
        section=SOURCES,
        shown_default=None,
    ),
    "download_sources": ParamSpec(
        False,
        {"type": "boolean"},
        "Copy sources in a bucket to data_dir/downloads/ first and read the copies (default off: the tars "
        "are read in place with ranged requests). Local data_dir only.",
        section=SOURCES,
    ),
    "train_shards": ParamSpec(
        1024,
        {"type": "integer", "minimum": 1},
        "reference, webdataset: number of train shards (at least 1). Default 1024, as imagenet_to_gcs.py.",
        section=REFERENCE,
    ),
    "val_shards": ParamSpec(
        128,
        {"type": "integer", "minimum": 1},
        "reference, webdataset: number of validation shards (at least 1). Default 128.",
        section=REFERENCE,
    ),
    "shuffle_seed": ParamSpec(
        0,
        {"type": "integer", "minimum": 0},
        "reference, webdataset: seed of the train shuffle; the same seed gives the same shards. Default 0.",
        section=REFERENCE,
    ),
    "dali_index": ParamSpec(
        False,
        {"type": "boolean"},
        "reference, webdataset: also write DALI index files (<shard>.idx, <shard>.tar.idx) so NVIDIA DALI can "
        "read the shards. Default off.",
        section=REFERENCE,
    ),
    "resize": ParamSpec(
        0,
        {"type": "integer", "minimum": 0},
        "nvidia: re-encode with this short side in pixels, as im2rec's --resize (0 = pass-through, the "
        "default).",
        section=NVIDIA,
    ),
    "quality": ParamSpec(
        95,
        {"type": "integer", "minimum": 1, "maximum": 100},
        "nvidia: JPEG quality (1 to 100) when resizing, as im2rec's --quality. Default 95.",
        section=NVIDIA,
    ),
    "mxnet_version": ParamSpec(
        "22.04",
        {"type": "string"},
        "nvidia: the NVIDIA MXNet container the data is meant for (recorded in the manifest). Default 22.04.",
        section=NVIDIA,
    ),
    "workers": ParamSpec(
        0,
        {"type": "integer", "minimum": 0},
        "Processes per conversion task (0 = one per core, the default).",
        section=EXECUTION,
    ),
    "fanout": ParamSpec(
        0,
        {"type": "integer", "minimum": 0, "maximum": 1024},
        "How many mapped Airflow tasks share the conversion (0 to 1024; each runs its units with `workers` "
        "processes); 0 = auto (the default): 1 with a local executor, 8 with Celery/Kubernetes.",
        section=EXECUTION,
    ),
    "force": ParamSpec(
        False,
        {"type": "boolean"},
        "Rebuild even when manifest.json says the output is up to date. Default off.",
        section=EXECUTION,
    ),
}


def defaults() -> dict[str, Any]:
    return {name: spec.default for name, spec in PARAMS.items()}


def resolved(values: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``base`` (the built-in defaults when None) overlaid with ``values``; a ``None`` value means "not
    given" and keeps the default. Unknown names are an error naming them."""
    unknown = sorted(set(values) - set(PARAMS))
    if unknown:
        raise ValueError(f"unknown params: {', '.join(unknown)}; known: {', '.join(PARAMS)}")
    return {**(defaults() if base is None else base), **{k: v for k, v in values.items() if v is not None}}


def as_declared(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each known string param as a string: a template rendered to a native object
    turns a string such as ``22.04`` into a number, which would no longer equal the param."""
    return {
        k: str(v) if v is not None and k in PARAMS and isinstance(PARAMS[k].default, str) else v
        for k, v in values.items()
    }
