"""ConvertTFRecordOperator: TFRecord shards for the MLPerf reference TensorFlow ResNet."""

from __future__ import annotations

from typing import Any

from airflow_resnet_prep.operators.base import default
from airflow_resnet_prep.operators.convert import ConvertOperator


class ConvertTFRecordOperator(ConvertOperator):
    """Write ``tfrecords/train-%05d-of-%05d`` and ``validation-%05d-of-%05d`` (docs/formats.md, TFRecords).

    The work is :class:`airflow_resnet_prep.converters.tfrecord.TFRecordConverter`; see
    :class:`~airflow_resnet_prep.operators.convert.ConvertOperator` for ``step`` and the arguments every
    conversion takes. Pushes ``tfrecords_path`` (the shards' folder) to XCom when the output is complete.
    Defaults are the params' (:data:`airflow_resnet_prep.params.PARAMS`).

    :param train_shards: Number of train shards. (templated)
    :param val_shards: Number of validation shards. (templated)
    :param shuffle_seed: Seed of the train order's shuffle. (templated)
    :param dali_index: Also write ``<shard>.idx`` (``offset size`` per record) for NVIDIA DALI. (templated)
    """

    implementation = "reference"
    output_key = "tfrecords_path"
    template_fields = (
        *ConvertOperator.common_fields,
        "train_shards",
        "val_shards",
        "shuffle_seed",
        "dali_index",
    )
    ui_color = "#fff3e0"

    def __init__(
        self,
        *,
        train_shards: int | str = default("train_shards"),
        val_shards: int | str = default("val_shards"),
        shuffle_seed: int | str = default("shuffle_seed"),
        dali_index: bool | str = default("dali_index"),
        **kwargs: Any,
    ) -> None:
        self.keep(locals())
        super().__init__(**kwargs)
