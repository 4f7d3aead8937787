"""FetchImagenetOperator: make the ImageNet sources local and catalog every image."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Context

from airflow_resnet_prep.operators.base import Arguments, PrepOperator, default

if TYPE_CHECKING:
    from airflow_resnet_prep.layout import DataDir


class FetchImagenetOperator(PrepOperator):
    """Download (or use in place) the train and validation sources and build their catalogs.

    The work is :func:`airflow_resnet_prep.catalog.fetch.fetch`; this operator maps arguments and XCom
    onto it. Its return value (XCom ``return_value``) holds the catalog paths, the source fingerprints,
    the image counts and ``imagenet_path``. For ``data_dir``, ``storage_conn_id`` (also the connection of
    sources given as ``s3://`` or ``gs://`` URIs that name none) and ``allowed_conn_ids`` see
    :class:`~airflow_resnet_prep.operators.base.PrepOperator`.

    :param train_source: URL, ``file://`` URL or path of ``ILSVRC2012_img_train.tar``, or a folder laid
        out as ``<synset>/<image>``. (templated)
    :param val_source: URL or path of ``ILSVRC2012_img_val.tar``, a flat folder of its images, or a
        folder laid out as ``<synset>/<image>``. (templated)
    :param train_checksum: Optional ``md5:<hex>`` or ``sha256:<hex>``; a mismatch fails before any
        image is read. (templated)
    :param val_checksum: As ``train_checksum``, for the validation archive. (templated)
    :param http_conn_id: Optional Airflow connection whose login/password or extra headers
        authenticate downloads. Credentials never reach logs, XCom or the manifest. (templated)
    :param extract: Also lay the images out as ``raw/{train,val}/...`` folders. (templated)
    :param download_sources: Copy sources in a bucket to ``data_dir/downloads/`` first, instead of
        reading them in place. (templated)
    """

    template_fields: Sequence[str] = (
        *PrepOperator.base_fields,
        "train_source",
        "val_source",
        "train_checksum",
        "val_checksum",
        "http_conn_id",
        "extract",
        "download_sources",
    )
    conn_args = ("http_conn_id", "storage_conn_id")
    source_args = ("train_source", "val_source")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        train_source: str,
        val_source: str,
        train_checksum: str | None = None,
        val_checksum: str | None = None,
        http_conn_id: str | None = None,
        extract: bool | str = default("extract"),
        download_sources: bool | str = default("download_sources"),
        **kwargs: Any,
    ) -> None:
        self.train_source = train_source
        self.val_source = val_source
        self.train_checksum = train_checksum
        self.val_checksum = val_checksum
        self.http_conn_id = http_conn_id
        self.extract = extract
        self.download_sources = download_sources
        super().__init__(**kwargs)

    def run(self, context: Context, data_dir: DataDir, args: Arguments) -> dict[str, Any]:
        from airflow_resnet_prep.catalog.fetch import fetch
        from airflow_resnet_prep.operators.connections import http_credentials_from_connection

        result = fetch(
            data_dir,
            self.train_source,
            self.val_source,
            train_checksum=args.train_checksum,
            val_checksum=args.val_checksum,
            credentials=http_credentials_from_connection(args.http_conn_id),
            extract=args.extract,
            storage_conn_id=args.storage_conn_id,
            download_sources=args.download_sources,
        )
        self.log.info(
            "catalogued %s train and %s validation images%s",
            f"{result.counts['train']:,}",
            f"{result.counts['val']:,}",
            " (reused)" if result.reused else "",
        )
        self.record_lineage([self.train_source, self.val_source], [f"{self.data_dir.rstrip('/')}/catalog"])
        return result.to_dict()
