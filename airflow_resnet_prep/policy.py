"""Who may choose what: the connections and places a run may reach.

Airflow trusts the DAG's author, not everyone who may trigger the DAG: a param is user input. So the
connections a run uses and the place it writes are checked here, in the task, before any connection is
looked up or any request is sent:

- a connection id (``http_conn_id``, ``storage_conn_id``, the ``conn_id@`` of an ``s3://``/``gs://`` URI)
  must be listed in ``[resnet_prep] allowed_conn_ids`` or named by the DAG's own code (the operator's
  ``allowed_conn_ids``: the factory passes the connections its defaults name);
- when ``[resnet_prep] allowed_data_roots`` is set, ``data_dir`` must lie under one of its roots.

Every refusal names the param and the option that would allow it, and nothing else (not the list of
allowed connections).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from airflow_resnet_prep import config
from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.storage import ObjectLocation, StorageError, parse_object_uri


class NotAllowedError(PrepError):
    """A param names a connection or a place the deployment does not allow."""


def _option_hint(option: str) -> str:
    return f"[{config.SECTION}] {option} (AIRFLOW__{config.SECTION.upper()}__{option.upper()})"


def _templated(value: str) -> bool:
    return "{{" in value or "{%" in value


def dag_conn_ids(
    allowed: Iterable[str] | None,
    *,
    conns: Iterable[str | None] = (),
    locations: Iterable[str | None] = (),
) -> tuple[str, ...]:
    """The connections the DAG's code allows one operator: ``allowed`` plus the connection ids it was
    given literally (``conns``; the ``conn_id@`` of object URIs in ``locations``). A literal argument was
    written by the DAG's author; a templated one (``{{ params.x }}``) may come from whoever triggers."""
    found = {c.strip() for c in allowed or () if c and c.strip()}
    for value in conns:
        if isinstance(value, str) and value.strip() and not _templated(value):
            found.add(value.strip())
    for value in locations:
        if isinstance(value, str) and not _templated(value):
            try:
                location = parse_object_uri(value)
            except StorageError:
                continue
            if location is not None and location.conn_id:
                found.add(location.conn_id)
    return tuple(sorted(found))


Root = str | ObjectLocation


def _parse_root(text: str) -> Root:
    try:
        location = parse_object_uri(text)
    except StorageError as exc:
        raise NotAllowedError(f"{_option_hint('allowed_data_roots')}: {exc}") from None
    if location is not None:
        return ObjectLocation(location.protocol, None, location.bucket, location.key)
    if not os.path.isabs(text):
        raise NotAllowedError(
            f"{_option_hint('allowed_data_roots')}: {text!r} is neither an absolute path nor an s3:// or "
            "gs:// prefix"
        )
    return os.path.realpath(text)


def _under(root: Root, place: Root) -> bool:
    if isinstance(root, ObjectLocation):
        return isinstance(place, ObjectLocation) and root.contains(place)
    return isinstance(place, str) and os.path.commonpath([root, place]) == root


@dataclass(frozen=True)
class Policy:
    """The connections and places allowed to one task: the deployment's config plus the DAG's own."""

    conn_ids: frozenset[str]
    data_roots: tuple[Root, ...] = ()

    @classmethod
    def load(cls, dag_conn_ids: Iterable[str] = ()) -> Policy:
        """The deployment's ``[resnet_prep]`` options, plus ``dag_conn_ids`` (what the DAG's code names)."""
        conn_ids = set(config.get_list("allowed_conn_ids")) | {c.strip() for c in dag_conn_ids if c.strip()}
        roots = tuple(_parse_root(text) for text in config.get_list("allowed_data_roots"))
        return cls(frozenset(conn_ids), roots)

    def check_conn(self, conn_id: str | None, param: str) -> None:
        """Refuse ``conn_id`` (given by ``param``) unless it is allowed; None or empty means none."""
        conn_id = (conn_id or "").strip()
        if conn_id and conn_id not in self.conn_ids:
            raise NotAllowedError(
                f"{param}: the connection {conn_id!r} is not allowed for this DAG. The deployment lists the "
                f"connections a run may use in {_option_hint('allowed_conn_ids')}; ask whoever runs this "
                "Airflow to add it there, or leave the param empty"
            )

    def check_location(self, location: str | None, param: str) -> None:
        """Refuse a source or data_dir URI whose ``conn_id@`` is not allowed."""
        text = (location or "").strip()
        try:
            parsed = parse_object_uri(text) if text else None
        except StorageError:
            return  # not usable anyway: the step that opens it refuses it with the reason
        if parsed is not None and parsed.conn_id:
            self.check_conn(parsed.conn_id, param)

    def place_allowed(self, data_dir: str) -> bool:
        """Whether ``data_dir`` (a path or an object URI) lies under an allowed root (always, without roots)."""
        if not self.data_roots:
            return True
        text = data_dir.strip()
        try:
            location = parse_object_uri(text)
        except StorageError:
            return False
        if location is not None:
            place: Root = location
        elif os.path.isabs(text):
            place = os.path.realpath(text)
        else:
            return False
        return any(_under(root, place) for root in self.data_roots)

    def check_data_dir(self, data_dir: str | None, param: str = "data_dir") -> None:
        text = (data_dir or "").strip()
        self.check_location(text, param)
        if text and not self.place_allowed(text):
            raise NotAllowedError(
                f"{param} {text!r} is outside the places this deployment allows; they are set in "
                f"{_option_hint('allowed_data_roots')}"
            )

    def check_run(
        self,
        *,
        data_dir: str | None = None,
        conns: Mapping[str, str | None] | None = None,
        sources: Mapping[str, str | None] | None = None,
    ) -> None:
        """Check one task's arguments: ``data_dir``, connection params (``{param: conn_id}``) and
        sources (``{param: location}``)."""
        for param, conn_id in (conns or {}).items():
            self.check_conn(conn_id, param)
        for param, location in (sources or {}).items():
            self.check_location(location, param)
        if data_dir is not None:
            self.check_data_dir(data_dir)
