"""Who may choose what: the connections and places a run may reach.

Airflow trusts the DAG's author, not everyone who may trigger the DAG: a param is user input. So the
connections a run uses and the place it writes are checked here, in the task, before any connection is
looked up or any request is sent:

- a connection id (``http_conn_id``, ``storage_conn_id``, the ``conn_id@`` of an ``s3://``/``gs://`` URI)
  must be listed in ``[resnet_prep] allowed_conn_ids`` or named by the DAG's own code (the operator's
  ``allowed_conn_ids``: the factory passes the connections its defaults name);
- when ``[resnet_prep] allowed_data_roots`` is set, ``data_dir`` must lie under one of its roots;
- when ``[resnet_prep] allowed_sources`` is set, every source and every redirect hop of its download
  must lie under one of its prefixes (URL prefixes: scheme, host and port exact, path by whole segments;
  paths by their real path; bucket prefixes), or be named literally by the DAG's code;
- a source on a link-local or unspecified address (a cloud metadata service) is refused always (the
  download's connection checks the addresses a name resolves to: :mod:`.sources.netguard`);
- a bucket URI with no ``conn_id@`` and no ``storage_conn_id`` would be reached with the worker's own
  identity (instance role, ``AWS_*``, default credentials): allowed only under a prefix the DAG's code
  names or the deployment lists (``allowed_data_roots`` for ``data_dir``, ``allowed_sources`` for sources);
- a ``data_dir`` inside another data set's folder (a parent holding a ``manifest.json``, a fetch record
  or conversion work) is refused (:func:`check_not_nested`).

Every refusal names the param and the option that would allow it, and nothing else (not the list of
allowed connections or places).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from airflow_resnet_prep import config
from airflow_resnet_prep.errors import PrepError
from airflow_resnet_prep.layout import FETCH_RECORD, MANIFEST, catalog_key
from airflow_resnet_prep.storage import (
    ObjectLocation,
    StorageError,
    display_uri,
    parse_object_uri,
    store_for,
)
from airflow_resnet_prep.urls import (
    forbidden_address,
    literal_address,
    mask_url,
    origin_of,
    parse,
    path_segments,
)


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


def dag_places(values: Iterable[str | None]) -> tuple[str, ...]:
    """The sources and data_dirs the DAG's code names literally (not templated): allowed to its runs
    like a listed prefix, the worker's own identity included for a bucket."""
    return tuple(
        sorted({v.strip() for v in values if isinstance(v, str) and v.strip() and not _templated(v)})
    )


@dataclass(frozen=True)
class UrlPrefix:
    """An http(s) prefix: its origin (scheme, host, port) and its path as whole segments."""

    origin: str
    segments: tuple[str, ...]


Root = str | ObjectLocation | UrlPrefix


def place_of(text: str) -> Root | None:
    """A source, a data_dir or a configured prefix as a place to compare: an object location (without
    its connection), an http(s) prefix read as the HTTP client reads it, or a real absolute path; None for
    what is none of them (relative, unreadable, an unsupported scheme)."""
    text = text.strip()
    try:
        location = parse_object_uri(text)
    except StorageError:
        return None
    if location is not None:
        return ObjectLocation(location.protocol, None, location.bucket, location.key)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme in ("http", "https"):
        origin = origin_of(text)
        try:
            segments = path_segments(text)
        except ValueError:
            return None
        return UrlPrefix(origin, segments) if origin and segments is not None else None
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            return None
        text = unquote(parts.path)
    elif scheme:
        return None
    return os.path.realpath(text) if os.path.isabs(text) else None


def _parse_root(text: str, option: str = "allowed_data_roots") -> Root:
    try:
        location = parse_object_uri(text)
    except StorageError as exc:
        raise NotAllowedError(f"{_option_hint(option)}: {exc}") from None
    root = place_of(text)
    urls = option == "allowed_sources"
    if root is None or (isinstance(root, UrlPrefix) and not urls) or (location and location.conn_id):
        kinds = "an absolute path, an http(s) URL prefix" if urls else "an absolute path"
        raise NotAllowedError(
            f"{_option_hint(option)}: {mask_url(text)!r} is neither {kinds} nor an s3:// or gs:// prefix "
            "(without a connection id); a relative path means a different folder on every worker"
        )
    return root


def _under(root: Root, place: Root) -> bool:
    if isinstance(root, ObjectLocation):
        return isinstance(place, ObjectLocation) and root.contains(place)
    if isinstance(root, UrlPrefix):
        return (
            isinstance(place, UrlPrefix)
            and place.origin == root.origin
            and place.segments[: len(root.segments)] == root.segments
        )
    return isinstance(place, str) and os.path.commonpath([root, place]) == root


def _any_under(roots: Iterable[Root], place: Root | None) -> bool:
    return place is not None and any(_under(root, place) for root in roots)


@dataclass(frozen=True)
class Policy:
    """The connections and places allowed to one task: the deployment's config plus the DAG's own."""

    conn_ids: frozenset[str]
    data_roots: tuple[Root, ...] = ()
    source_roots: tuple[Root, ...] = ()
    #: What the DAG's code names literally (sources, data_dirs): allowed like a listed prefix.
    dag_roots: tuple[Root, ...] = ()

    @classmethod
    def load(cls, dag_conn_ids: Iterable[str] = (), *, dag_places: Iterable[str] = ()) -> Policy:
        """The deployment's ``[resnet_prep]`` options, plus ``dag_conn_ids`` and ``dag_places`` (the
        connections and the sources or data_dirs the DAG's code names: see :func:`dag_places`)."""
        conn_ids = set(config.get_list("allowed_conn_ids")) | {c.strip() for c in dag_conn_ids if c.strip()}
        roots = tuple(_parse_root(text) for text in config.get_list("allowed_data_roots"))
        sources = tuple(_parse_root(text, "allowed_sources") for text in config.get_list("allowed_sources"))
        named = tuple(p for p in (place_of(text) for text in dag_places if not _templated(text)) if p)
        return cls(frozenset(conn_ids), roots, sources, named)

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

    def check_data_dir(
        self, data_dir: str | None, param: str = "data_dir", *, storage_conn_id: str | None = None
    ) -> None:
        text = (data_dir or "").strip()
        self.check_location(text, param)
        if text and not self.place_allowed(text):
            raise NotAllowedError(
                f"{param} {text!r} is outside the places this deployment allows; they are set in "
                f"{_option_hint('allowed_data_roots')}"
            )
        self.check_ambient(text, param, storage_conn_id)

    def check_ambient(
        self, data_dir: str, param: str = "data_dir", storage_conn_id: str | None = None
    ) -> None:
        """Refuse a data_dir in a bucket reached with the worker's (or the API server's) own identity
        outside ``allowed_data_roots`` and what the DAG's code names."""
        self._check_ambient(data_dir.strip(), param, storage_conn_id, self.data_roots, "allowed_data_roots")

    def _check_ambient(
        self, text: str, param: str, storage_conn_id: str | None, roots: tuple[Root, ...], option: str
    ) -> None:
        """Refuse a bucket URI that would be reached with the worker's own identity (no ``conn_id@``, no
        ``storage_conn_id``) unless the deployment lists it in ``option`` or the DAG's code names it."""
        try:
            location = parse_object_uri(text) if text else None
        except StorageError:
            return
        if location is None or location.conn_id or (storage_conn_id or "").strip():
            return
        place = place_of(text)
        if not _any_under(roots, place) and not _any_under(self.dag_roots, place):
            raise NotAllowedError(
                f"{param}: {location.protocol}://{location.bucket}/... names no connection, so it would be "
                "reached with the worker's own cloud identity (instance role, environment credentials), "
                f"which this deployment does not allow for it; give storage_conn_id or s3://<conn_id>@..., "
                f"or ask whoever runs this Airflow to list the bucket prefix in {_option_hint(option)}"
            )

    def check_source(self, source: str | None, param: str, *, storage_conn_id: str | None = None) -> None:
        """Refuse a source param (``train_source``, ``val_source``, ``labels_source``) that names a
        connection not allowed, a link-local or unspecified address, a bucket reached with the worker's
        own identity outside the allowed prefixes, or (when ``allowed_sources`` is set) anything outside
        ``allowed_sources`` and what the DAG's code names."""
        text = (source or "").strip()
        if not text:
            return
        self.check_location(text, param)
        if "://" in text and text.split("://", 1)[0].lower() in ("http", "https"):
            self.check_url(text, param)
            return
        if self.source_roots and not self._source_allowed(text):
            raise self._outside_sources(param)
        self._check_ambient(text, param, storage_conn_id, self.source_roots, "allowed_sources")

    def _source_allowed(self, text: str) -> bool:
        place = place_of(text)
        return _any_under(self.source_roots, place) or _any_under(self.dag_roots, place)

    @staticmethod
    def _outside_sources(param: str) -> NotAllowedError:
        return NotAllowedError(
            f"{param}: the source is outside the places this deployment allows sources to come from; they "
            f"are set in {_option_hint('allowed_sources')}"
        )

    def check_url(self, url: str, param: str) -> None:
        """Refuse an http(s) URL (a source or a redirect hop of ``param``'s download) on a link-local or
        unspecified address, or outside ``allowed_sources`` when it is set."""
        try:
            host = parse(url.strip()).host or ""
        except ValueError:
            host = ""
        address = literal_address(host)
        if address is not None and forbidden_address(address):
            raise NotAllowedError(
                f"{param}: a link-local or unspecified address (where cloud metadata services answer) is "
                "never a source, whatever the deployment allows"
            )
        if self.source_roots and not self._source_allowed(url):
            raise self._outside_sources(param)

    def url_guard(self, param: str) -> Callable[[str], None]:
        """:meth:`check_url` for ``param``, for the download to call on every redirect hop."""
        return lambda url: self.check_url(url, param)

    def check_run(
        self,
        *,
        data_dir: str | None = None,
        conns: Mapping[str, str | None] | None = None,
        sources: Mapping[str, str | None] | None = None,
        storage_conn_id: str | None = None,
        nested: bool = False,
    ) -> None:
        """Check one task's arguments: ``data_dir``, connection params (``{param: conn_id}``) and
        sources (``{param: location}``). ``storage_conn_id`` (default: ``conns["storage_conn_id"]``) is
        the connection a bucket URI without ``conn_id@`` uses. ``nested`` also refuses a data_dir inside
        another data set's folder (:func:`check_not_nested`; it looks at the data_dir's parents, so only
        the task that starts writing asks)."""
        conns = dict(conns or {})
        for param, conn_id in conns.items():
            self.check_conn(conn_id, param)
        if storage_conn_id is None:
            storage_conn_id = conns.get("storage_conn_id")
        for param, location in (sources or {}).items():
            self.check_source(location, param, storage_conn_id=storage_conn_id)
        if data_dir is not None:
            self.check_data_dir(data_dir, storage_conn_id=storage_conn_id)
            if nested:
                check_not_nested(data_dir, storage_conn_id)


#: What marks a folder as a data set's: its manifest, or the catalogs and fetch record a run writes first
#: (work state: a run that has not published yet).
DATA_SET_MARKERS = (MANIFEST, FETCH_RECORD, catalog_key("train"), catalog_key("val"))
#: How many parents are looked at (a data_dir deeper than that below a data set is not looked for).
MAX_PARENTS = 32


def _parents(text: str) -> list[str]:
    """The folders (or bucket prefixes) above a data_dir, nearest first."""
    location = parse_object_uri(text)
    if location is not None:
        keys = location.key.split("/") if location.key else []
        conn = f"{location.conn_id}@" if location.conn_id else ""
        head = f"{location.protocol}://{conn}{location.bucket}"
        return [head + "".join("/" + k for k in keys[:n]) for n in range(len(keys) - 1, -1, -1)]
    path = os.path.realpath(unquote(urlsplit(text).path) if text.startswith("file://") else text)
    found = []
    while os.path.dirname(path) != path:
        path = os.path.dirname(path)
        found.append(path)
    return found


def check_not_nested(data_dir: str, storage_conn_id: str | None = None, param: str = "data_dir") -> None:
    """Refuse a ``data_dir`` inside another data set's folder: a run writing there would put files of
    its choosing (a report page, an image named like a shard) where the other run's readers and report
    view find them. A parent counts when it holds one of :data:`DATA_SET_MARKERS`."""
    text = (data_dir or "").strip()
    try:
        parents = _parents(text)[:MAX_PARENTS]
    except StorageError:
        return  # unusable anyway: the step that opens it says why
    for parent in parents:
        try:
            store = store_for(parent, storage_conn_id)
            marked = any(store.exists(marker) for marker in DATA_SET_MARKERS)
        except (StorageError, OSError):
            continue  # a parent nobody may read holds no data set of ours
        if marked:
            raise NotAllowedError(
                f"{param} {mask_url(text)!r} lies inside another data set's folder ({display_uri(parent)} holds its "
                "manifest or work state); give a data_dir of its own, outside every other run's"
            )
