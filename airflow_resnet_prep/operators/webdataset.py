"""ConvertWebDatasetOperator: WebDataset tar shards for PyTorch trainers (webdataset, timm, DALI)."""

from __future__ import annotations

from airflow_resnet_prep.operators.tfrecord import ConvertTFRecordOperator


class ConvertWebDatasetOperator(ConvertTFRecordOperator):
    """Write ``webdataset/imagenet1k-train-%04d.tar``, ``imagenet1k-validation-%04d.tar`` and
    ``_info.json`` (docs/formats.md, WebDataset).

    The work is :class:`airflow_resnet_prep.converters.webdataset.WebDatasetConverter`; its params are
    those of :class:`~airflow_resnet_prep.operators.tfrecord.ConvertTFRecordOperator` and mean the same
    (the same train permutation, the same shards), except ``dali_index``, which writes
    ``<shard>.tar.idx`` as DALI's ``wds2idx`` does. See
    :class:`~airflow_resnet_prep.operators.convert.ConvertOperatorBase` for ``step``. Pushes
    ``webdataset_path`` (the shards' folder) to XCom when the output is complete.
    """

    output_key = "webdataset_path"
    ui_color = "#e8f5e9"

    def make_converter(self):
        from airflow_resnet_prep.converters.webdataset import WebDatasetConverter
        from airflow_resnet_prep.operators.values import as_bool, as_int

        return WebDatasetConverter(
            train_shards=as_int(self.train_shards, "train_shards"),
            val_shards=as_int(self.val_shards, "val_shards"),
            shuffle_seed=as_int(self.shuffle_seed, "shuffle_seed"),
            on_bad_image=self.on_bad_image,
            dali_index=as_bool(self.dali_index),
            decode_check=as_bool(self.decode_check),
        )
