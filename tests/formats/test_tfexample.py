"""The hand-written tf.train.Example against TensorFlow's own proto API and the MLPerf reader's parser."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from airflow_resnet_prep.formats.tfexample import encode_example


def tf_example(*, encoded: bytes, filename: str, label: int, synset: str, height: int, width: int):
    """The SPEC §3 Example built with TensorFlow's proto API, as imagenet_to_gcs.py builds it."""

    def b(v: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def i(v: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image/encoded": b(encoded),
                "image/format": b(b"JPEG"),
                "image/filename": b(filename.encode()),
                "image/class/label": i(label),
                "image/class/synset": b(synset.encode()),
                "image/height": i(height),
                "image/width": i(width),
                "image/colorspace": b(b"RGB"),
                "image/channels": i(3),
            }
        )
    )


def mlperf_feature_spec() -> dict:
    """What the MLPerf reference TF2 ResNet's ``parse_example_proto`` asks for (text and boxes are absent
    from our records and fall back to their defaults / empty), plus the other SPEC §3 features."""
    spec = {
        "image/encoded": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        "image/class/text": tf.io.FixedLenFeature([], tf.string, default_value=""),
        **{
            f"image/object/bbox/{k}": tf.io.VarLenFeature(tf.float32)
            for k in ("xmin", "ymin", "xmax", "ymax")
        },
    }
    spec.update(
        {
            k: tf.io.FixedLenFeature([], tf.string)
            for k in ("image/format", "image/filename", "image/class/synset", "image/colorspace")
        }
    )
    spec.update(
        {k: tf.io.FixedLenFeature([], tf.int64) for k in ("image/height", "image/width", "image/channels")}
    )
    return spec


def jpeg(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 90)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


CASES = [
    dict(
        encoded=jpeg(50, 37),
        filename="n01440764_10026.JPEG",
        label=1,
        synset="n01440764",
        height=37,
        width=50,
    ),
    dict(
        encoded=b"",
        filename="ILSVRC2012_val_00000001.JPEG",
        label=1000,
        synset="n15075141",
        height=0,
        width=0,
    ),
    # > 2 MiB: the image's length varints (and those of the enclosing messages) take 4 bytes.
    dict(
        encoded=os.urandom(3 << 20),
        filename="big.JPEG",
        label=500,
        synset="n04592741",
        height=100000,
        width=2**31,
    ),
    dict(encoded=b"\xff" * 127, filename="é.JPEG", label=127, synset="n00000128", height=128, width=16383),
    dict(encoded=b"\xff" * 128, filename="x" * 200, label=128, synset="n", height=16384, width=2**63 - 1),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{len(c['encoded'])}B-label{c['label']}")
def test_matches_tensorflow_proto(case: dict) -> None:
    ours = encode_example(**case)
    expected = tf_example(**case)
    assert tf.train.Example.FromString(ours) == expected
    # Entries in sorted key order: the same bytes as protobuf's deterministic serialisation.
    assert ours == expected.SerializeToString(deterministic=True)


@pytest.mark.parametrize("case", CASES[:3], ids=lambda c: f"{len(c['encoded'])}B")
def test_mlperf_reference_parser_reads_it(case: dict) -> None:
    parsed = tf.io.parse_single_example(encode_example(**case), mlperf_feature_spec())
    assert parsed["image/encoded"].numpy() == case["encoded"]
    assert int(parsed["image/class/label"]) == case["label"]
    assert parsed["image/class/text"].numpy() == b""
    assert parsed["image/object/bbox/xmin"].values.shape == (0,)
    assert parsed["image/filename"].numpy() == case["filename"].encode()
    assert parsed["image/class/synset"].numpy() == case["synset"].encode()
    assert (parsed["image/format"].numpy(), parsed["image/colorspace"].numpy()) == (b"JPEG", b"RGB")
    assert (int(parsed["image/height"]), int(parsed["image/width"])) == (case["height"], case["width"])
    assert int(parsed["image/channels"]) == 3


def test_tensorflow_decodes_the_stored_jpeg() -> None:
    case = CASES[0]
    parsed = tf.io.parse_single_example(encode_example(**case), mlperf_feature_spec())
    image = tf.io.decode_jpeg(parsed["image/encoded"], channels=3)
    assert tuple(image.shape) == (case["height"], case["width"], 3)


def test_tfrecord_dataset_round_trip(tmp_path) -> None:
    path = str(tmp_path / "train-00000-of-00001")
    with tf.io.TFRecordWriter(path) as w:
        for case in CASES[:2]:
            w.write(encode_example(**case))
    labels = [
        int(tf.io.parse_single_example(r, mlperf_feature_spec())["image/class/label"])
        for r in tf.data.TFRecordDataset(path)
    ]
    assert labels == [c["label"] for c in CASES[:2]]


@settings(max_examples=40, deadline=None)
@given(
    encoded=st.binary(max_size=400),
    filename=st.text(max_size=40),
    label=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    synset=st.text(max_size=12),
    height=st.integers(min_value=0, max_value=2**40),
    width=st.integers(min_value=0, max_value=2**40),
)
def test_matches_tensorflow_for_any_values(encoded, filename, label, synset, height, width) -> None:
    case = dict(encoded=encoded, filename=filename, label=label, synset=synset, height=height, width=width)
    assert encode_example(**case) == tf_example(**case).SerializeToString(deterministic=True)


def test_module_does_not_import_tensorflow() -> None:
    code = (
        "import sys; import airflow_resnet_prep.formats.tfexample as t; "
        "t.encode_example(encoded=b'x', filename='f', label=1, synset='s', height=1, width=1); "
        "print('tensorflow' in sys.modules or 'google.protobuf' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
