"""RelabelValOperator: give every validation image its class from the labels file."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import Context

from airflow_resnet_prep.operators.base import Arguments, SourcesOperator

if TYPE_CHECKING:
    from airflow_resnet_prep.layout import DataDir


class RelabelValOperator(SourcesOperator):
    """Check the labels file against the catalogs, then assign each validation image its synset.

    The work is :func:`airflow_resnet_prep.catalog.relabel.relabel`. The line count must equal the
    number of validation images and every line must be a training class; otherwise the task fails
    naming the first offending line or file, and nothing changes. A validation source that already
    comes in class folders needs no labels file. Returns (XCom) the catalog path and the labels
    file's fingerprint. ``data_dir`` is the folder the fetch step wrote the catalogs into; for it,
    ``storage_conn_id`` (also the connection of a labels file given as an ``s3://`` or ``gs://`` URI that
    names none) and ``allowed_conn_ids`` see :class:`~airflow_resnet_prep.operators.base.PrepOperator`.

    :param labels_source: URL or path of the labels file (line *i* = synset of
        ``ILSVRC2012_val_%08d`` *i*). (templated)
    :param http_conn_id: Optional Airflow connection for an authenticated download. (templated)
    :param extract: Move ``raw/val/<image>`` into ``raw/val/<synset>/`` too (by rename). (templated)
    :param download_sources: Copy a labels file in a bucket to ``data_dir/downloads/`` first. (templated)
    """

    template_fields: Sequence[str] = (*SourcesOperator.source_fields, "labels_source")
    source_args = ("labels_source",)
    ui_color = "#e8f4fd"

    def __init__(self, *, labels_source: str, **kwargs: Any) -> None:
        self.keep(locals())
        super().__init__(**kwargs)

    def run(self, context: Context, data_dir: DataDir, args: Arguments) -> dict[str, Any]:
        from airflow_resnet_prep.catalog.relabel import relabel

        result = relabel(
            data_dir,
            self.labels_source,
            **self.source_options(args),
            url_guard=self.url_guard("labels_source"),
        )
        self.record_lineage([self.labels_source], [f"{self.data_dir.rstrip('/')}/catalog"])
        return result.to_dict()
