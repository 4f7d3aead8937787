"""``webdataset``: tar shards for PyTorch trainers (webdataset, timm, DALI) (docs/formats.md, WebDataset).

The plan is the ``reference`` one (:class:`~.tfrecord.TFRecordConverter`): the same params, the same
train permutation (``random.Random(shuffle_seed).shuffle`` of the catalog order), validation in name
order, the same contiguous near-equal shards grouped into units of whole shards. Only the bytes differ:

- ``webdataset/imagenet1k-train-%04d.tar`` and ``imagenet1k-validation-%04d.tar``, each a POSIX tar
  whose headers are written by :mod:`~airflow_resnet_prep.formats.wdstar` (nothing in them depends on
  when or where the shard was written);
- one sample per image, key = the ILSVRC file stem (dots in another stem escaped: ``wdstar.key_of``), members in this order: ``<key>.cls`` (the label,
  0-based index of the class among the sorted wnids, ASCII decimal), ``<key>.jpg`` (the image's bytes
  unchanged; PNG and CMYK/YCCK re-encoded as for ``reference``), ``<key>.json``
  (``{"wnid": ..., "filename": ...}``); sorted extensions, as ``webdataset.TarWriter`` orders them;
- ``dali_index``: ``<shard>.tar.idx`` beside each shard, what DALI's ``wds2idx`` writes for it;
- ``webdataset/_info.json`` (written by finish, from the units' record counts): the split description
  timm's WebDataset reader loads (``splits.train`` / ``splits.validation``: ``name``, ``num_samples``,
  ``filenames`` relative to the folder, ``shard_lengths``).

Each shard is streamed through the data_dir's store (a temporary file renamed; in a bucket one multipart
upload completed when the shard is whole), so a killed unit leaves no shard under its final name.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from airflow_resnet_prep.converters.base import Plan, UnitResult, WorkItem
from airflow_resnet_prep.converters.tfrecord import StoredImages, TFRecordConverter, refuse_empty
from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.formats import wdstar
from airflow_resnet_prep.formats.crc32c import ChecksumWriter, crc32c, to_hex
from airflow_resnet_prep.layout import WEBDATASET, DataDir

SPLIT_NAME = {"train": "train", "val": "validation"}  # timm's split names
INFO = "_info.json"
DATASET = "imagenet1k"
_OUTPUT_NAME = re.compile(rf"{DATASET}-(train|validation)-\d{{4,}}\.tar(\.idx)?|{re.escape(INFO)}")


def shard_file(split: str, shard: int) -> str:
    return f"{DATASET}-{SPLIT_NAME[split]}-{shard:04d}.tar"


def sample_key(name: str, where: str) -> str:
    """The sample key of an image file name (:func:`~.wdstar.key_of`: its stem, dots escaped)."""
    key = wdstar.key_of(name)
    if not key or "/" in key:
        raise PrepError(f"{where}: {name!r} gives no usable WebDataset key (an image file name is needed)")
    return key


def sample_parts(item: WorkItem, image: bytes) -> list[tuple[str, bytes]]:
    """The members of ``item``'s sample, (extension, data), in archive order."""
    meta = json.dumps({"wnid": item.synset, "filename": item.name}).encode()
    return [("cls", str(item.label).encode()), ("jpg", image), ("json", meta)]


class WebDatasetConverter(TFRecordConverter):
    """Write WebDataset shards. Params as :class:`~.tfrecord.TFRecordConverter`: ``train_shards``,
    ``val_shards``, ``shuffle_seed``, ``on_bad_image``, ``dali_index``, ``decode_check``."""

    implementation: ClassVar[str] = "webdataset"
    output_key: ClassVar[str] = WEBDATASET
    first_label: ClassVar[int] = 0  # timm and torchvision count classes from 0

    def is_output_name(self, name: str) -> bool:
        return _OUTPUT_NAME.fullmatch(name) is not None

    @staticmethod
    def shard_name(split: str, shard: int, shards: int) -> str:
        return shard_file(split, shard)

    def write_shard(self, data_dir: DataDir, name: str, images: StoredImages, result: UnitResult) -> None:
        """One tar shard (and its DALI index) from ``images``; listed in ``result``."""
        key = f"{WEBDATASET}/{name}"
        samples: list[list[wdstar.Component]] = []
        with data_dir.store.writer(key) as fh:
            out = ChecksumWriter(fh)  # the shard's CRC-32C and size as it is written
            for item, where, (image, _, _) in images:
                buffers, components = wdstar.sample_members(
                    sample_key(item.name, where), sample_parts(item, image), out.size
                )
                out.writelines(buffers)
                samples.append(components)
            refuse_empty(data_dir, key, samples)
            out.write(wdstar.END_OF_ARCHIVE)
        result.add_output(name, out.size, len(samples), out.crc)
        if self.params["dali_index"]:
            raw = wdstar.dali_index(samples).encode()
            data_dir.store.write_bytes(f"{key}.idx", raw)
            result.add_output(f"{name}.idx", len(raw), len(samples), crc32c(raw))

    def finish(self, plan: Plan, results: list[UnitResult]) -> dict[str, dict[str, int]]:
        outputs = super().finish(plan, results)  # every shard as its unit left it
        raw = info_json(results).encode()
        key = f"{WEBDATASET}/{INFO}"
        plan.data_dir.store.write_bytes(key, raw)
        # records: the samples it describes, as an index counts the records it indexes
        described = sum(stats["records"] for name, stats in outputs.items() if name.endswith(".tar"))
        outputs[key] = {"size": len(raw), "records": described, "crc32c": to_hex(crc32c(raw))}
        return outputs


def info_json(results: list[UnitResult]) -> str:
    """``_info.json`` as timm's ``ReaderWds`` loads it (``timm/data/readers/reader_wds.py``:
    ``info["splits"][split]`` with ``name``, ``num_samples``, ``filenames`` and ``shard_lengths``, the
    file names joined to the folder the reader is given)."""
    lengths: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    for r in results:
        for name, stats in r.outputs.items():
            if name.endswith(".tar"):
                lengths[r.split][name] = stats["records"]
    splits = {}
    for split in ("train", "val"):
        names = sorted(lengths[split])
        splits[SPLIT_NAME[split]] = {
            "name": SPLIT_NAME[split],
            "num_samples": sum(lengths[split].values()),
            "filenames": names,
            "shard_lengths": [lengths[split][n] for n in names],
        }
    info = {"name": DATASET, "splits": splits}
    return json.dumps(info, indent=2) + "\n"


def params_from(values: dict[str, Any]) -> dict[str, Any]:
    """Pick this converter's params out of the DAG's params (those of ``reference``)."""
    from airflow_resnet_prep.converters.tfrecord import params_from as reference_params

    return reference_params(values)
