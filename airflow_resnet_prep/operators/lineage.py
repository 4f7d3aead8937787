"""OpenLineage for the operators: what each task read and wrote, as the OpenLineage provider reports it.

Each operator records its inputs and outputs (locations as the user wrote them) while it runs; the
OpenLineage provider, when installed (extra ``[openlineage]``), asks for them when the task completes
(``get_openlineage_facets_on_complete``). Locations become datasets by OpenLineage's naming
conventions: a local path is ``file`` + its absolute path, ``s3://bucket/key`` is namespace
``s3://bucket`` + ``key`` (likewise ``gs://``), an http(s) URL is its origin + path (no userinfo, query
or fragment). Connection ids and credentials never appear in a dataset. (OpenLineage's own run facets
carry the DAG run's conf, params as typed included: see docs/security.md.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from airflow_resnet_prep.storage import StorageError, parse_object_uri
from airflow_resnet_prep.urls import origin_of, parse


def dataset_name(location: str) -> tuple[str, str] | None:
    """``(namespace, name)`` of a location; None when it names nothing (empty, unparseable)."""
    text = (location or "").strip()
    if not text:
        return None
    try:
        obj = parse_object_uri(text)
    except StorageError:
        return None
    if obj is not None:
        return f"{obj.protocol}://{obj.bucket}", obj.key or "/"
    origin = origin_of(text)
    if origin is not None:
        # The path as the HTTP client reads it; query and fragment (where signed URLs keep secrets) never.
        return origin, parse(text).path or "/"
    if text.startswith("file://"):
        text = urlsplit(text).path
    return ("file", text.rstrip("/") or "/") if text.startswith("/") else None


class LineageMixin:
    """Collects a task's inputs and outputs during ``execute`` and hands them to OpenLineage."""

    _lineage: tuple[list[str], list[str]] = ([], [])

    def record_lineage(self, inputs: Iterable[str | None], outputs: Iterable[str | None]) -> None:
        self._lineage = ([i for i in inputs if i], [o for o in outputs if o])

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        from airflow.providers.common.compat.openlineage.facet import Dataset
        from airflow.providers.openlineage.extractors import OperatorLineage

        def datasets(locations: list[str]) -> list[Dataset]:
            named = [dataset_name(loc) for loc in locations]
            return [Dataset(namespace=ns, name=name) for ns, name in dict.fromkeys(n for n in named if n)]

        inputs, outputs = self._lineage
        return OperatorLineage(inputs=datasets(inputs), outputs=datasets(outputs))
