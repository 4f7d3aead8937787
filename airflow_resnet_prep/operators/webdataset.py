"""ConvertWebDatasetOperator: WebDataset tar shards for PyTorch trainers (webdataset, timm, DALI)."""

from __future__ import annotations

from airflow_resnet_prep.operators.tfrecord import ConvertTFRecordOperator


class ConvertWebDatasetOperator(ConvertTFRecordOperator):
    """Write ``webdataset/imagenet1k-train-%04d.tar``, ``imagenet1k-validation-%04d.tar`` and
    ``_info.json`` (docs/formats.md, WebDataset).

    The work is :class:`airflow_resnet_prep.converters.webdataset.WebDatasetConverter`. Its arguments are
    :class:`~airflow_resnet_prep.operators.tfrecord.ConvertTFRecordOperator`'s and mean the same (the
    same train permutation, the same shards), except ``dali_index``, which writes ``<shard>.tar.idx`` as
    DALI's ``wds2idx`` does; see :class:`~airflow_resnet_prep.operators.convert.ConvertOperator` for
    ``step``. Pushes ``webdataset_path`` (the shards' folder) to XCom when the output is complete.
    """

    implementation = "webdataset"
    output_key = "webdataset_path"
    ui_color = "#e8f5e9"
