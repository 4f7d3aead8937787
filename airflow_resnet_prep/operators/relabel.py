"""RelabelValOperator: give every validation image its class from the labels file."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

from airflow_resnet_prep.operators.lineage import LineageMixin
from airflow_resnet_prep.policy import Policy, dag_conn_ids, dag_places


class RelabelValOperator(LineageMixin, BaseOperator):
    """Check the labels file against the catalogs, then assign each validation image its synset.

    The work is :func:`airflow_resnet_prep.catalog.relabel.relabel`. The line count must equal the
    number of validation images and every line must be a training class; otherwise the task fails
    naming the first offending line or file, and nothing changes. A validation source that already
    comes in class folders needs no labels file. Returns (XCom) the catalog path and the labels
    file's fingerprint.

    :param data_dir: Working folder the fetch step wrote the catalogs into. (templated)
    :param labels_source: URL or path of the labels file (line *i* = synset of
        ``ILSVRC2012_val_%08d`` *i*). (templated)
    :param http_conn_id: Optional Airflow connection for an authenticated download. (templated)
    :param extract: Move ``raw/val/<image>`` into ``raw/val/<synset>/`` too (by rename). (templated)
    :param storage_conn_id: Optional Airflow connection for a labels file given as an ``s3://`` or
        ``gs://`` URI that names none. (templated)
    :param download_sources: Copy a labels file in a bucket to ``data_dir/downloads/`` first. (templated)
    :param allowed_conn_ids: Connections this task may use besides ``[resnet_prep] allowed_conn_ids``
        and those given here literally; see :class:`~.fetch.FetchImagenetOperator`.
    """

    template_fields: Sequence[str] = (
        "data_dir",
        "labels_source",
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
        labels_source: str,
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
        self.labels_source = labels_source
        self.http_conn_id = http_conn_id
        self.extract = extract
        self.storage_conn_id = storage_conn_id
        self.download_sources = download_sources
        self.allowed_conn_ids = dag_conn_ids(
            allowed_conn_ids, conns=(http_conn_id, storage_conn_id), locations=(data_dir, labels_source)
        )
        # Sources and data_dirs the DAG's code names (literally here, or the factory's defaults).
        self.dag_places = dag_places([*(allowed_places or ()), data_dir, labels_source])

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_resnet_prep.catalog.relabel import relabel
        from airflow_resnet_prep.operators.connections import http_credentials_from_connection
        from airflow_resnet_prep.operators.values import as_bool

        policy = Policy.load(self.allowed_conn_ids, dag_places=self.dag_places)
        policy.check_run(
            data_dir=self.data_dir,
            conns={"http_conn_id": self.http_conn_id, "storage_conn_id": self.storage_conn_id},
            sources={"labels_source": self.labels_source},
        )
        credentials = http_credentials_from_connection(self.http_conn_id)
        result = relabel(
            self.data_dir,
            self.labels_source,
            credentials=credentials,
            extract=as_bool(self.extract),
            storage_conn_id=(self.storage_conn_id or "").strip() or None,
            download_sources=as_bool(self.download_sources),
            url_guard=policy.url_guard("labels_source"),
        )
        self.record_lineage([self.labels_source], [f"{self.data_dir.rstrip('/')}/catalog"])
        return result.to_dict()
