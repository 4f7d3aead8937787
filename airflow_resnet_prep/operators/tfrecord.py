"""ConvertTFRecordOperator: TFRecord shards for the MLPerf reference TensorFlow ResNet."""

from __future__ import annotations

from typing import Any

from airflow_resnet_prep.operators.convert import ConvertOperatorBase


class ConvertTFRecordOperator(ConvertOperatorBase):
    """Write ``tfrecords/train-%05d-of-%05d`` and ``validation-%05d-of-%05d`` (docs/formats.md, TFRecords).

    The work is :class:`airflow_resnet_prep.converters.tfrecord.TFRecordConverter`; see
    :class:`~airflow_resnet_prep.operators.convert.ConvertOperatorBase` for ``step``. Pushes
    ``tfrecords_path`` (the shards' folder) to XCom when the output is complete.

    :param data_dir: Working folder holding the catalogs; shards go to ``data_dir/tfrecords``. (templated)
    :param train_shards: Number of train shards (default 1024). (templated)
    :param val_shards: Number of validation shards (default 128). (templated)
    :param shuffle_seed: Seed of the train order's shuffle (default 0). (templated)
    :param on_bad_image: ``"fail"`` (default) names an unreadable image and fails; ``"skip"`` leaves it
        out and lists it in the manifest. (templated)
    :param decode_check: Decode every image with TensorFlow's JPEG decoder before writing it; one that
        fails follows ``on_bad_image``. Needs the ``tensorflow`` extra. Default off. (templated)
    :param dali_index: Also write ``<shard>.idx`` (``offset size`` per record) for NVIDIA DALI. (templated)
    :param workers: Processes used by this task (0 = all cores). (templated)
    :param force: Replace an unfinished conversion with different params. (templated)
    :param step: ``"all"``, ``"plan"``, ``"units"`` or ``"finish"``.
    :param unit_ids: With ``step="units"``: the units to run (mappable). (templated)
    :param fanout: With ``step="plan"``: how many batches of units to return; 0 (default) = auto, one
        batch with a local executor, eight with a distributed one. (templated)
    """

    output_key = "tfrecords_path"
    template_fields = (
        *ConvertOperatorBase.common_fields,
        "train_shards",
        "val_shards",
        "shuffle_seed",
        "dali_index",
    )
    ui_color = "#fff3e0"

    def __init__(
        self,
        *,
        train_shards: int | str = 1024,
        val_shards: int | str = 128,
        shuffle_seed: int | str = 0,
        dali_index: bool | str = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.train_shards = train_shards
        self.val_shards = val_shards
        self.shuffle_seed = shuffle_seed
        self.dali_index = dali_index

    def make_converter(self):
        from airflow_resnet_prep.converters.tfrecord import TFRecordConverter
        from airflow_resnet_prep.operators.values import as_bool, as_int

        return TFRecordConverter(
            train_shards=as_int(self.train_shards, "train_shards"),
            val_shards=as_int(self.val_shards, "val_shards"),
            shuffle_seed=as_int(self.shuffle_seed, "shuffle_seed"),
            on_bad_image=self.on_bad_image,
            dali_index=as_bool(self.dali_index),
            decode_check=as_bool(self.decode_check),
        )
