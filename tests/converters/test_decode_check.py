"""The decode check (issue 20): images whose header parses but whose data TensorFlow refuses.

A train folder laid out as ``<synset>/<image>`` from the sample set, with two images damaged as the
issue describes (a corrupt Huffman table; a second SOF marker inside the scan data). Both pass the
header probe, so a conversion without the check writes them; ``verify --decode`` then names them, and
the conversion's ``decode_check`` fails naming the first or, with ``on_bad_image=skip``, leaves both out
and lists them. The outputs are read back with the real readers (``tf.data`` for TFRecords).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from airflow_resnet_prep.errors import BadImageError, PrepError
from airflow_resnet_prep.formats.jpeg import probe
from airflow_resnet_prep.pipeline import run
from airflow_resnet_prep.verify import verify
from tests.support.sampletools import corrupt_huffman_table, extract_sample_tar, second_sof_in_scan

EXTRA = {"reference": {"train_shards": 4, "val_shards": 2}, "nvidia": {}}


@pytest.fixture(scope="module")
def bad_tree(sample, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The sample's train set as a folder with two damaged images: (folder, {synset/name: damage})."""
    root = tmp_path_factory.mktemp("bad-tree") / "train"
    extract_sample_tar(sample.train_tar, root)
    plain = sorted(
        p
        for p in root.glob("*/*.JPEG")
        if p.name not in sample.quirks  # baseline JPEGs, passed through
    )
    damaged = {}
    for path, damage in ((plain[1], corrupt_huffman_table), (plain[-2], second_sof_in_scan)):
        path.write_bytes(damage(path.read_bytes()))
        damaged[f"{path.parent.name}/{path.name}"] = damage.__name__
    return root, damaged


def values(sample, train: Path, data_dir: Path, impl: str, **extra) -> dict:
    return {
        "data_dir": str(data_dir),
        "train_source": str(train),
        "val_source": str(sample.val_tar),
        "labels_source": str(sample.labels),
        "implementation": impl,
        "workers": 1,
        **EXTRA[impl],
        **extra,
    }


def test_the_damaged_images_pass_the_header_probe_but_not_tensorflow(bad_tree) -> None:
    from airflow_resnet_prep.formats.tfdecode import JpegDecoder

    root, damaged = bad_tree
    decoder = JpegDecoder()
    reasons = {}
    for rel in damaged:
        data = (root / rel).read_bytes()
        assert probe(data, rel).reencode_reason is None  # a plain JPEG to the probe: stored as it is
        with pytest.raises(BadImageError) as caught:
            decoder.check(data, rel)
        reasons[damaged[rel]] = caught.value.reason
    # TensorFlow's generic message plus libjpeg's own reason, captured from its stderr.
    assert "Bogus Huffman table definition" in reasons["corrupt_huffman_table"]
    assert "two SOF markers" in reasons["second_sof_in_scan"]
    assert all(r.startswith("TensorFlow cannot decode it (tf.io.decode_jpeg: ") for r in reasons.values())


@pytest.mark.parametrize("impl", ["reference", "nvidia"])
def test_without_the_check_they_are_written_and_verify_decode_names_them(
    sample, bad_tree, tmp_path: Path, impl: str
) -> None:
    root, damaged = bad_tree
    run(values(sample, root, tmp_path / "out", impl))
    plain = verify(tmp_path / "out")
    assert plain.ok, plain.problems  # byte for byte what was written: only decoding finds them
    report = verify(tmp_path / "out", decode=True, workers=2)
    assert report.decoded == sample.train_count + sample.val_count - 2
    names = {p.image.rpartition("/")[2]: str(p) for p in report.problems}
    assert set(names) == {rel.rpartition("/")[2] for rel in damaged}, report.problems
    for p in report.problems:
        assert p.key.startswith("tfrecords/train-") if impl == "reference" else p.key == "recordio/train.rec"
        assert p.record is not None and p.offset is not None
        assert "TensorFlow cannot decode it" in p.reason


@pytest.mark.parametrize("impl", ["reference", "nvidia"])
def test_the_check_fails_the_conversion_naming_the_image(sample, bad_tree, tmp_path: Path, impl: str) -> None:
    root, damaged = bad_tree
    with pytest.raises(BadImageError) as caught:
        run(values(sample, root, tmp_path / "out", impl, decode_check=True))
    assert any(rel.rpartition("/")[2] in str(caught.value) for rel in damaged), caught.value
    assert "TensorFlow cannot decode it" in str(caught.value)
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("impl", ["reference", "nvidia"])
def test_the_check_with_skip_leaves_them_out_and_lists_them(
    sample, bad_tree, tmp_path: Path, impl: str
) -> None:
    root, damaged = bad_tree
    run(values(sample, root, tmp_path / "out", impl, decode_check=True, on_bad_image="skip", workers=2))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    listed = {f"{s['synset']}/{s['name']}": s for s in manifest["skipped"]}
    assert set(listed) == set(damaged)
    assert all(
        s["split"] == "train" and s["reason"].startswith("TensorFlow cannot decode it")
        for s in listed.values()
    )
    assert manifest["checks"] == {"crc32c": True, "decode_check": True, "decode_failures": 2}
    assert manifest["params"]["decode_check"] is True
    report = verify(tmp_path / "out", decode=True, workers=2)
    assert report.ok, report.problems  # per-class counts account for the two left out
    assert report.records == report.decoded == sample.train_count + sample.val_count - 2
    if impl == "reference":  # the shards as the trainer reads them: tf.data, then its decoder
        import tensorflow as tf

        files = sorted(str(p) for p in (tmp_path / "out" / "tfrecords").glob("train-*"))
        spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
        count = 0
        for raw in tf.data.TFRecordDataset(files):
            tf.io.decode_jpeg(tf.io.parse_single_example(raw, spec)["image/encoded"], channels=3)
            count += 1
        assert count == sample.train_count - 2


def test_an_output_without_the_check_is_reused_and_turning_it_on_converts_again(
    sample, bad_tree, tmp_path: Path
) -> None:
    """``decode_check`` is recorded only when on: an output made without it (or before it existed)
    is reused as it is; asking for the check converts again."""
    root, _ = bad_tree
    first = run(values(sample, root, tmp_path / "out", "nvidia"))
    assert first["cached"] is False
    assert run(values(sample, root, tmp_path / "out", "nvidia", decode_check=False))["cached"] is True
    again = run(values(sample, root, tmp_path / "out", "nvidia", decode_check=True, on_bad_image="skip"))
    assert again["cached"] is False


def test_a_missing_tensorflow_is_named_with_the_extra(sample, bad_tree, tmp_path: Path, monkeypatch) -> None:
    """Where TensorFlow is not installed (it is an optional extra), the check fails up front saying how
    to install it; without the check nothing imports it."""
    from airflow_resnet_prep.converters import decodecheck

    monkeypatch.setitem(sys.modules, "tensorflow", None)  # what `import tensorflow` meets without it
    monkeypatch.setattr(decodecheck, "_DECODER", None)
    root, _ = bad_tree
    with pytest.raises(PrepError, match=r"pip install 'airflow-resnet-prep\[tensorflow\]'"):
        run(values(sample, root, tmp_path / "checked", "reference", decode_check=True))
    # Without the check the conversion (and a plain verify) never import it.
    run(values(sample, root, tmp_path / "plain", "nvidia"))
    assert verify(tmp_path / "plain").ok
    with pytest.raises(PrepError, match=r"pip install 'airflow-resnet-prep\[tensorflow\]'"):
        verify(tmp_path / "plain", decode=True)


@pytest.mark.parametrize("impl", ["reference", "nvidia"])
def test_the_operators_pass_a_templated_decode_check_to_their_converter(impl: str) -> None:
    from airflow_resnet_prep.operators.nvidia import NvidiaPrepOperator
    from airflow_resnet_prep.operators.tfrecord import ConvertTFRecordOperator

    cls = ConvertTFRecordOperator if impl == "reference" else NvidiaPrepOperator
    op = cls(task_id="convert", data_dir="/data", decode_check="{{ params.decode_check }}")
    for value, expected in ((True, {"decode_check": True}), (False, {})):
        op.decode_check = "{{ params.decode_check }}"
        op.render_template_fields({"params": {"decode_check": value}})
        params = op.make_converter().params
        assert {k: v for k, v in params.items() if k == "decode_check"} == expected
