"""FetchImagenetOperator: make the ImageNet sources local and catalog every image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Context

from airflow_resnet_prep.operators.base import Arguments, SourcesOperator

if TYPE_CHECKING:
    from airflow_resnet_prep.layout import DataDir


class FetchImagenetOperator(SourcesOperator):
    """Download (or use in place) the train and validation sources and build their catalogs.

    The work is :func:`airflow_resnet_prep.catalog.fetch.fetch`; this operator maps arguments and XCom
    onto it. Its return value (XCom ``return_value``) holds the catalog paths, the source fingerprints,
    the image counts and ``imagenet_path``. For ``data_dir``, ``storage_conn_id`` (also the connection of
    sources given as ``s3://`` or ``gs://`` URIs that name none) and ``allowed_conn_ids`` see
    :class:`~airflow_resnet_prep.operators.base.PrepOperator`; for ``http_conn_id``, ``extract`` and
    ``download_sources`` :class:`~airflow_resnet_prep.operators.base.SourcesOperator`.

    :param train_source: URL, ``file://`` URL or path of ``ILSVRC2012_img_train.tar``, or a folder laid
        out as ``<synset>/<image>``. (templated)
    :param val_source: URL or path of ``ILSVRC2012_img_val.tar``, a flat folder of its images, or a
        folder laid out as ``<synset>/<image>``. (templated)
    :param train_checksum: Optional ``md5:<hex>`` or ``sha256:<hex>``; a mismatch fails before any
        image is read. (templated)
    :param val_checksum: As ``train_checksum``, for the validation archive. (templated)
    """

    template_fields: Sequence[str] = (
        *SourcesOperator.source_fields,
        "train_source",
        "val_source",
        "train_checksum",
        "val_checksum",
    )
    source_args = ("train_source", "val_source")
    starts_data_dir = True
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        train_source: str,
        val_source: str,
        train_checksum: str | None = None,
        val_checksum: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.keep(locals())
        super().__init__(**kwargs)

    def run(self, context: Context, data_dir: DataDir, args: Arguments) -> dict[str, Any]:
        from airflow_resnet_prep.catalog.fetch import fetch

        result = fetch(
            data_dir,
            self.train_source,
            self.val_source,
            train_checksum=args.train_checksum,
            val_checksum=args.val_checksum,
            **self.source_options(args),
            url_guards={name: self.url_guard(name) for name in self.source_args},
        )
        self.log.info(
            "catalogued %s train and %s validation images%s",
            f"{result.counts['train']:,}",
            f"{result.counts['val']:,}",
            " (reused)" if result.reused else "",
        )
        self.record_lineage([self.train_source, self.val_source], [f"{self.data_dir.rstrip('/')}/catalog"])
        return result.to_dict()
