"""FetchImagenetOperator: make the ImageNet sources local and catalog every image."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

from airflow_resnet_prep.operators.lineage import LineageMixin
from airflow_resnet_prep.policy import Policy, dag_conn_ids, dag_places


class FetchImagenetOperator(LineageMixin, BaseOperator):
    """Download (or use in place) the train and validation sources and build their catalogs.

    The work is :func:`airflow_resnet_prep.catalog.fetch.fetch`; this operator maps arguments and XCom
    onto it. Its return value (XCom ``return_value``) holds the catalog paths, the source fingerprints,
    the image counts and ``imagenet_path``.

    :param data_dir: Working and output folder. (templated)
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
    :param storage_conn_id: Optional Airflow connection (``aws``, ``google_cloud_platform``) for
        sources given as ``s3://`` or ``gs://`` URIs that name none. (templated)
    :param download_sources: Copy sources in a bucket to ``data_dir/downloads/`` first, instead of
        reading them in place. (templated)
    :param allowed_conn_ids: Connections this task may use besides those in ``[resnet_prep]
        allowed_conn_ids``; connection ids given here literally (not templated) are allowed too. Any
        other connection named by ``http_conn_id``, ``storage_conn_id`` or a ``conn_id@`` URI is refused
        before any request, and ``data_dir`` must lie under ``[resnet_prep] allowed_data_roots``.
    """

    template_fields: Sequence[str] = (
        "data_dir",
        "train_source",
        "val_source",
        "train_checksum",
        "val_checksum",
        "http_conn_id",
        "extract",
        "storage_conn_id",
        "download_sources",
    )
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        data_dir: str,
        train_source: str,
        val_source: str,
        train_checksum: str | None = None,
        val_checksum: str | None = None,
        http_conn_id: str | None = None,
        extract: bool | str = False,
        storage_conn_id: str | None = None,
        download_sources: bool | str = False,
        allowed_conn_ids: Collection[str] | None = None,
        allowed_places: Collection[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.data_dir = data_dir
        self.train_source = train_source
        self.val_source = val_source
        self.train_checksum = train_checksum
        self.val_checksum = val_checksum
        self.http_conn_id = http_conn_id
        self.extract = extract
        self.storage_conn_id = storage_conn_id
        self.download_sources = download_sources
        self.allowed_conn_ids = dag_conn_ids(
            allowed_conn_ids,
            conns=(http_conn_id, storage_conn_id),
            locations=(data_dir, train_source, val_source),
        )
        # Sources and data_dirs the DAG's code names (literally here, or the factory's defaults).
        self.dag_places = dag_places([*(allowed_places or ()), data_dir, train_source, val_source])

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_resnet_prep.catalog.fetch import fetch
        from airflow_resnet_prep.operators.connections import http_credentials_from_connection
        from airflow_resnet_prep.operators.values import as_bool

        policy = Policy.load(self.allowed_conn_ids, dag_places=self.dag_places)
        policy.check_run(
            data_dir=self.data_dir,
            conns={"http_conn_id": self.http_conn_id, "storage_conn_id": self.storage_conn_id},
            sources={"train_source": self.train_source, "val_source": self.val_source},
            nested=True,
        )
        credentials = http_credentials_from_connection(self.http_conn_id)
        result = fetch(
            self.data_dir,
            self.train_source,
            self.val_source,
            train_checksum=self.train_checksum or None,
            val_checksum=self.val_checksum or None,
            credentials=credentials,
            extract=as_bool(self.extract),
            storage_conn_id=(self.storage_conn_id or "").strip() or None,
            download_sources=as_bool(self.download_sources),
            url_guards={p: policy.url_guard(p) for p in ("train_source", "val_source")},
        )
        self.log.info(
            "catalogued %s train and %s validation images%s",
            f"{result.counts['train']:,}",
            f"{result.counts['val']:,}",
            " (reused)" if result.reused else "",
        )
        self.record_lineage([self.train_source, self.val_source], [f"{self.data_dir.rstrip('/')}/catalog"])
        return result.to_dict()
