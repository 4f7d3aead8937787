"""Every param of the pipeline in one place: its default, JSON schema, description, form section, and
which outputs it shapes (the cache key).

The DAG turns these into Airflow ``Param`` objects (so the trigger form shows them, grouped in
sections); the CLI (``python -m airflow_resnet_prep``) takes exactly these params with the same
defaults. Three params are required (``data_dir`` and the two image sources): they have no built-in
default, their schema refuses an empty string, and a run without them is refused before it is created.
Every other param is optional: its schema admits ``null``, which means "not given" and resolves to the
default (:func:`resolved`), so the form submits with only the required fields filled.

**The cache key.** ``shapes`` names the implementations whose output bytes a param changes, and
``shapes_if`` (when set) the condition under which it does (``quality`` only when ``resize > 0``). A
rerun whose sources and cache key (:func:`airflow_resnet_prep.manifest.cache_key`) equal the manifest's
reuses the output; every other param (``workers``, ``fanout``, ``force``, ``mxnet_version``...) changes
how or where the work runs, never a byte. A new implementation adds its name to ``IMPLEMENTATIONS`` and
to ``shapes`` of each param its converter reads; nothing else decides what invalidates its output.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

# tensorflow/models at a fixed commit: the file has not changed since 2016, and a pinned URL cannot
# change under a data set that was checked against it (the branch ``master`` could).
LABELS_COMMIT = "c80d1b17d5f835e6f2cdeddefeb16c193beed071"
DEFAULT_LABELS_URL = (
    f"https://raw.githubusercontent.com/tensorflow/models/{LABELS_COMMIT}/research/slim/datasets/"
    "imagenet_2012_validation_synset_labels.txt"
)
IMPLEMENTATIONS = ("nvidia", "reference", "webdataset")
#: ``shapes`` of a param every converter reads (a new implementation is in it once it is in IMPLEMENTATIONS).
EVERY_CONVERTER = IMPLEMENTATIONS
#: ``shapes`` of the shard params: ``webdataset`` plans its shards with the ``reference`` code.
SHARDED = ("reference", "webdataset")

# Form sections, in the order a user fills them. Required params have no section: they go to the
# form's first, expanded block; Airflow starts every named section collapsed.
SOURCES = "Sources: labels, checksums, credentials"
OUTPUT = "Output"
REFERENCE = "reference: TFRecord options"
NVIDIA = "nvidia: RecordIO options"
EXECUTION = "Execution"

# Bounds on what whoever triggers may ask for (a param is user input): no string longer than this, no
# resize beyond this short side (a 30000-pixel side is gigabytes per image), checksums in their one form.
MAX_STRING = 4096
MAX_RESIZE = 4096
CHECKSUM_PATTERN = r"^([mM][dD]5:[0-9a-fA-F]{32}|[sS][hH][aA]256:[0-9a-fA-F]{64})?$"


class ParamSpec(NamedTuple):
    default: Any  # what "not given" (null) means; None for a required param (no built-in default)
    schema: dict[str, Any]  # JSON schema of the value without null; "type" is one type name
    description: str  # plain text: the form's help, the CLI's and the docs'
    section: str | None = None  # None: the form's first, expanded block ("Run Parameters")
    description_md: str | None = None  # richer help for the form, where a list or a link helps
    values_display: dict[str, str] | None = None
    shown_default: Any = ...  # the value the form starts with, when not ``default`` (e.g. null)
    required: bool = False  # no default: a run must give it (the form, the REST API, ``dags test``)
    shapes: tuple[str, ...] = ()  # implementations whose output bytes it changes (the cache key)
    shapes_if: Callable[[Mapping[str, Any]], bool] | None = None  # ... only when this holds
    recorded: tuple[str, ...] = ()  # implementations whose manifest records it, though no byte depends on it

    @property
    def form_default(self) -> Any:
        return self.default if self.shown_default is ... else self.shown_default

    def form_schema(self) -> dict[str, Any]:
        """The schema the form validates: optional params also admit null ("not given")."""
        schema = dict(self.schema)
        if schema["type"] == "string":
            schema.setdefault("maxLength", MAX_STRING)
        if not self.required:
            schema["type"] = ["null", schema["type"]]
            if "enum" in schema:  # an enum must list null too, or null fails it
                schema["enum"] = [None, *schema["enum"]]
        else:  # a required string is never empty: "" would pass the schema and fail later, in a task
            schema.setdefault("minLength", 1)
        if self.section:
            schema["section"] = self.section
        if self.values_display:
            schema["values_display"] = self.values_display
        return schema


# What "needs force" means, said once: a conversion that failed part-way was planned with the values of
# its run; a new run with other values of the params that shape the output must discard it (force=true).
_AFTER_FAILURE = "Changing it after a run failed part-way needs force=true."

PARAMS: dict[str, ParamSpec] = {
    "implementation": ParamSpec(
        "nvidia",
        {"type": "string", "enum": list(IMPLEMENTATIONS)},
        "Which trainer the output is for. nvidia: MXNet RecordIO (.lst/.rec/.idx) as im2rec writes them, for "
        "NVIDIA's MLPerf MXNet/DALI ResNet; reference: TFRecord shards for the MLPerf reference TensorFlow "
        "ResNet; webdataset: tar shards for PyTorch (webdataset, timm, DALI). Default nvidia.",
        values_display={
            "nvidia": "nvidia: MXNet RecordIO (.lst/.rec/.idx) for NVIDIA MXNet/DALI",
            "reference": "reference: TFRecord shards for the MLPerf reference TensorFlow ResNet",
            "webdataset": "webdataset: tar shards for PyTorch (webdataset, timm, DALI)",
        },
    ),
    "data_dir": ParamSpec(
        None,
        {"type": "string"},
        "Required. Where the catalog, work state, outputs and manifest.json go: an absolute path every "
        "worker sees, or an s3://[conn_id@]bucket/prefix or gs:// URI (workers then share only the bucket).",
        required=True,
    ),
    "train_source": ParamSpec(
        None,
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
        required=True,
    ),
    "val_source": ParamSpec(
        None,
        {"type": "string"},
        "Required. ILSVRC2012_img_val.tar: absolute path, URL or s3:// / gs:// URI; or a flat folder of its "
        "images; or a folder laid out as <synset>/<image>.",
        description_md=(
            "**Required.** The validation images, one of:\n\n"
            "- `ILSVRC2012_img_val.tar` as a local path, an `http(s)://` URL or an `s3://` / `gs://` URI,\n"
            "- a flat folder of `ILSVRC2012_val_%08d.JPEG` files,\n"
            "- a folder laid out as `<synset>/<image>`."
        ),
        required=True,
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
        "in the manifest). Default fail. After a run failed on a bad image, switching to skip needs "
        "force=true (the unfinished conversion was planned with fail).",
        section=OUTPUT,
        values_display={
            "fail": "fail: stop and name the image",
            "skip": "skip: leave it out, list it in the manifest and report",
        },
        shapes=EVERY_CONVERTER,
    ),
    "decode_check": ParamSpec(
        False,
        {"type": "boolean"},
        "Decode every image with TensorFlow's JPEG decoder (as the reference trainer does) before writing "
        "it; one that fails follows on_bad_image. Catches images whose header is fine but whose data is "
        "not. About 2 ms of CPU per image; needs the tensorflow extra. Default off. Turning it on or off "
        f"converts again (images may be left out or let in). {_AFTER_FAILURE}",
        section=OUTPUT,
        shapes=EVERY_CONVERTER,
        # In the key only when on: an output written before the check existed (its manifest does not
        # record it) is still reused with it off.
        shapes_if=lambda p: bool(p["decode_check"]),
    ),
    "labels_source": ParamSpec(
        DEFAULT_LABELS_URL,
        {"type": "string"},
        "Validation labels file (line i = synset of ILSVRC2012_val_%08d i): URL or absolute path. Default: "
        "the file in the TensorFlow models repository, at a fixed commit; for a Kaggle or Hugging Face copy, "
        "that copy's own labels (nothing is downloaded).",
        section=SOURCES,
        description_md=(
            "Validation labels file: line *i* is the synset of `ILSVRC2012_val_%08d` *i*. URL or absolute "
            "path. Empty: [the file in the TensorFlow models repository]"
            f"({DEFAULT_LABELS_URL}) at a fixed commit; give a local copy on machines without internet. "
            "A Kaggle or Hugging Face copy brings its own labels: leave this empty (one given is checked "
            "against them)."
        ),
    ),
    "train_checksum": ParamSpec(
        "",
        {"type": "string", "pattern": CHECKSUM_PATTERN},
        "Optional md5:<hex> or sha256:<hex> of the train tar, verified once before use. Real set: "
        "md5:1d675b47d978889d74fa0da5fadfb00e.",
        section=SOURCES,
        shown_default=None,
    ),
    "val_checksum": ParamSpec(
        "",
        {"type": "string", "pattern": CHECKSUM_PATTERN},
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
        "reference, webdataset: number of train shards (at least 1). Default 1024, as imagenet_to_gcs.py: "
        f"the MLPerf reference trainer reads exactly 1024 train and 128 validation shards. {_AFTER_FAILURE}",
        section=REFERENCE,
        shapes=SHARDED,
    ),
    "val_shards": ParamSpec(
        128,
        {"type": "integer", "minimum": 1},
        "reference, webdataset: number of validation shards (at least 1). Default 128, what the MLPerf "
        f"reference trainer reads. {_AFTER_FAILURE}",
        section=REFERENCE,
        shapes=SHARDED,
    ),
    "shuffle_seed": ParamSpec(
        0,
        {"type": "integer", "minimum": 0},
        "reference, webdataset: seed of the train shuffle; the same seed gives the same shards. Default 0. "
        f"{_AFTER_FAILURE}",
        section=REFERENCE,
        shapes=SHARDED,
    ),
    "dali_index": ParamSpec(
        False,
        {"type": "boolean"},
        "reference, webdataset: also write DALI index files (<shard>.idx, <shard>.tar.idx) so NVIDIA DALI "
        f"can read the shards (the trainers themselves do not need them). Default off. {_AFTER_FAILURE}",
        section=REFERENCE,
        shapes=SHARDED,
    ),
    "resize": ParamSpec(
        0,
        {"type": "integer", "minimum": 0, "maximum": MAX_RESIZE},
        "nvidia: re-encode with this short side in pixels (at most 4096), as im2rec's --resize (0 = "
        f"pass-through, the default, what NVIDIA's MLPerf ResNet reads). {_AFTER_FAILURE}",
        section=NVIDIA,
        shapes=("nvidia",),
    ),
    "quality": ParamSpec(
        95,
        {"type": "integer", "minimum": 1, "maximum": 100},
        "nvidia: JPEG quality (1 to 100) when resizing, as im2rec's --quality. Default 95. Unused (and no "
        "reason to convert again) with resize=0.",
        section=NVIDIA,
        shapes=("nvidia",),
        shapes_if=lambda p: p["resize"] > 0,  # pass-through copies the original bytes
    ),
    "mxnet_version": ParamSpec(
        "22.04",
        {"type": "string"},
        "nvidia: the NVIDIA MXNet container the data is meant for, recorded in the manifest; it changes no "
        "byte, so a new value alone reuses the output. Default 22.04.",
        section=NVIDIA,
        recorded=("nvidia",),
    ),
    "workers": ParamSpec(
        0,
        {"type": "integer", "minimum": 0},
        "Processes per conversion task (0 = one per core, the default); never more than the deployment's "
        "max_workers nor than there are units of work. Changes no byte of the output.",
        section=EXECUTION,
    ),
    "fanout": ParamSpec(
        0,
        {"type": "integer", "minimum": 0, "maximum": 1024},
        "How many mapped Airflow tasks share the conversion (0 to 1024; each runs its units with `workers` "
        "processes); 0 = auto (the default): 1 with a local executor, 8 with Celery/Kubernetes. Changes no "
        "byte of the output.",
        section=EXECUTION,
    ),
    "force": ParamSpec(
        False,
        {"type": "boolean"},
        "Rebuild even when manifest.json says the output is up to date, and discard a conversion that "
        "failed part-way with other output settings (needed to change e.g. on_bad_image, shard counts or "
        "resize after such a failure). Default off.",
        section=EXECUTION,
    ),
}


def defaults() -> dict[str, Any]:
    """The built-in defaults; a required param's is None (none)."""
    return {name: spec.default for name, spec in PARAMS.items()}


def missing_required(values: Mapping[str, Any]) -> list[str]:
    """The required params that ``values`` leaves missing, None or blank, in declaration order."""
    return [
        name for name, spec in PARAMS.items() if spec.required and not str(values.get(name) or "").strip()
    ]


def shaping(implementation: str) -> list[str]:
    """The params that may change the bytes of ``implementation``'s output (the cache key's names)."""
    return [name for name, spec in PARAMS.items() if implementation in spec.shapes]


def recorded(implementation: str) -> list[str]:
    """The params a manifest of ``implementation`` records: those that shape it, then informative ones."""
    return [*shaping(implementation), *(n for n, s in PARAMS.items() if implementation in s.recorded)]


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
