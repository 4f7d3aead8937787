"""PrepOperator: the base every operator of this provider stands on (as the amazon provider's operators
stand on ``AwsBaseOperator``).

It holds what every operator repeats, once:

- the shared arguments ``data_dir``, ``storage_conn_id`` and ``allowed_conn_ids``;
- the connections the DAG's own code names (:func:`~airflow_resnet_prep.policy.dag_conn_ids`), read from
  the literal constructor arguments, never from rendered templates (a template may hold what whoever
  triggers typed);
- the policy check, in :meth:`PrepOperator.execute`, the one door every operator's work passes through,
  before any connection is looked up or any request is sent;
- the ``data_dir`` turned into a :class:`~airflow_resnet_prep.layout.DataDir`, and the rendered arguments
  into typed values (:class:`Arguments`, typed by the param table), both handed to the operator's
  :meth:`PrepOperator.run`.

A subclass declares which of its arguments are connections (``conn_args``) and sources (``source_args``),
lists its template fields, keeps its own arguments (:meth:`PrepOperator.keep`: each as the attribute of
its name) and then calls ``super().__init__(**kwargs)`` *last*: the base reads the literal connection and
source arguments while it is constructed.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator, Context

from airflow_resnet_prep.operators.lineage import LineageMixin
from airflow_resnet_prep.operators.values import as_bool, as_int, as_text
from airflow_resnet_prep.params import PARAMS
from airflow_resnet_prep.policy import Policy, dag_conn_ids, dag_places

if TYPE_CHECKING:
    from airflow_resnet_prep.layout import DataDir


def default(name: str) -> Any:
    """The param table's default of ``name``: an operator argument named for a param defaults to it,
    so each default is written once (in :data:`~airflow_resnet_prep.params.PARAMS`)."""
    return PARAMS[name].default


_BY_SCHEMA: dict[str, Callable[[Any, str], Any]] = {
    "integer": as_int,
    "boolean": lambda value, name: as_bool(value),
    "string": lambda value, name: as_text(value),
}


class Arguments(dict[str, Any]):
    """An operator's rendered arguments, typed: a param's by its schema in the param table (``integer``,
    ``boolean``, ``string``: stripped, empty is None), any other by the operator's ``arg_types``.
    Read as attributes: ``args.train_shards`` is an int."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class PrepOperator(LineageMixin, BaseOperator):
    """The base of this provider's operators; see the module docstring.

    :param data_dir: Working and output folder: an absolute path every worker sees, or an
        ``s3://[conn_id@]bucket/prefix`` / ``gs://`` URI. (templated)
    :param storage_conn_id: Airflow connection (``aws``, ``google_cloud_platform``) for a ``data_dir``
        or source URI that names none (``s3://conn_id@bucket/key`` names its own). (templated)
    :param allowed_conn_ids: Connections this task may use besides those in ``[resnet_prep]
        allowed_conn_ids``; connection ids given to this operator literally (not templated) are allowed
        too. Any other connection named by a connection argument or a ``conn_id@`` URI is refused before
        any request, and ``data_dir`` must lie under ``[resnet_prep] allowed_data_roots`` when it is set;
        see :mod:`airflow_resnet_prep.policy`.
    :param allowed_places: Sources and data_dirs the DAG's code names (the factory passes its
        defaults'); with the source and data_dir arguments given here literally (not templated), they are
        allowed besides ``[resnet_prep] allowed_sources``, and a bucket among them may be reached with
        the worker's own identity.
    """

    #: The template fields every operator has; a subclass lists them first in its ``template_fields``.
    base_fields: ClassVar[tuple[str, ...]] = ("data_dir", "storage_conn_id")
    #: Arguments naming an Airflow connection, checked by the policy.
    conn_args: ClassVar[tuple[str, ...]] = ("storage_conn_id",)
    #: Arguments naming a source location (URL, path, bucket URI), checked by the policy.
    source_args: ClassVar[tuple[str, ...]] = ()
    #: How an argument that is not a param of the table is typed (the others follow its schema).
    arg_types: ClassVar[Mapping[str, Callable[[Any, str], Any]]] = {}
    #: Whether this operator starts writing a data_dir (the fetch step): it refuses one inside another
    #: data set's folder (:func:`~airflow_resnet_prep.policy.check_not_nested`).
    starts_data_dir: ClassVar[bool] = False

    def __init__(
        self,
        *,
        data_dir: str,
        storage_conn_id: str | None = None,
        allowed_conn_ids: Collection[str] | None = None,
        allowed_places: Collection[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.data_dir = data_dir
        self.storage_conn_id = storage_conn_id
        # The subclass set its own arguments before calling this, so they are still as written in the DAG.
        self.allowed_conn_ids = dag_conn_ids(
            allowed_conn_ids,
            conns=[getattr(self, name) for name in self.conn_args],
            locations=[data_dir, *(getattr(self, name) for name in self.source_args)],
        )
        self.dag_places = dag_places(
            [*(allowed_places or ()), data_dir, *(getattr(self, name) for name in self.source_args)]
        )

    def keep(self, arguments: Mapping[str, Any]) -> None:
        """Keep a subclass's own arguments (its ``locals()`` on entering ``__init__``), each as the
        attribute of its name, before ``super().__init__``."""
        for name, value in arguments.items():
            if name not in ("self", "kwargs", "__class__"):
                setattr(self, name, value)

    # -- the one door --------------------------------------------------------------------------------------
    def check_policy(self) -> None:
        """Refuse a connection, source or ``data_dir`` the deployment and the DAG's code do not allow;
        keep the policy for :meth:`url_guard` (the redirects of a download are checked as they come)."""
        self.policy = Policy.load(self.allowed_conn_ids, dag_places=self.dag_places)
        self.policy.check_run(
            data_dir=self.data_dir,
            conns={name: getattr(self, name) for name in self.conn_args},
            sources={name: getattr(self, name) for name in self.source_args},
            nested=self.starts_data_dir,
        )

    def url_guard(self, source_arg: str) -> Callable[[str], None]:
        """What refuses a URL of ``source_arg``'s download (the source, every redirect hop) before it is
        requested; see :meth:`airflow_resnet_prep.policy.Policy.url_guard`."""
        return self.policy.url_guard(source_arg)

    def arguments(self) -> Arguments:
        """The rendered template fields (but ``data_dir``), typed; see :class:`Arguments`."""
        typed = Arguments()
        for name in self.template_fields:
            if name == "data_dir":
                continue
            value = getattr(self, name)
            if name in self.arg_types:
                typed[name] = self.arg_types[name](value, name)
            elif name in PARAMS:
                typed[name] = _BY_SCHEMA[PARAMS[name].schema["type"]](value, name)
            else:
                typed[name] = value
        return typed

    def execute(self, context: Context) -> Any:
        from airflow_resnet_prep.layout import DataDir

        self.check_policy()
        args = self.arguments()
        return self.run(context, DataDir.of(self.data_dir, args.storage_conn_id), args)

    @abstractmethod
    def run(self, context: Context, data_dir: DataDir, args: Arguments) -> Any:
        """The operator's work, given its checked, typed arguments."""


class SourcesOperator(PrepOperator):
    """The base of the operators that read sources (fetch, relabel): how a source is reached.

    :param http_conn_id: Optional Airflow connection whose login/password or extra headers
        authenticate downloads. Credentials never reach logs, XCom or the manifest. (templated)
    :param extract: Also lay the images out as ``raw/{train,val}/...`` folders. (templated)
    :param download_sources: Copy sources in a bucket to ``data_dir/downloads/`` first, instead of
        reading them in place. (templated)
    """

    source_fields: ClassVar[tuple[str, ...]] = (
        *PrepOperator.base_fields,
        "http_conn_id",
        "extract",
        "download_sources",
    )
    conn_args = ("http_conn_id", "storage_conn_id")

    def __init__(
        self,
        *,
        http_conn_id: str | None = None,
        extract: bool | str = default("extract"),
        download_sources: bool | str = default("download_sources"),
        **kwargs: Any,
    ) -> None:
        self.keep(locals())
        super().__init__(**kwargs)

    @staticmethod
    def source_options(args: Arguments) -> dict[str, Any]:
        """The keyword arguments of :func:`~airflow_resnet_prep.catalog.fetch.fetch` and
        :func:`~airflow_resnet_prep.catalog.relabel.relabel` that say how sources are reached."""
        from airflow_resnet_prep.operators.connections import http_credentials_from_connection

        return {
            "credentials": http_credentials_from_connection(args.http_conn_id),
            "extract": args.extract,
            "storage_conn_id": args.storage_conn_id,
            "download_sources": args.download_sources,
        }


class AfterSourcesOperator(PrepOperator):
    """The base of the operators that read what fetch and relabel returned (the branch, publish).

    :param fetch_task_id: The task whose return value holds the catalogs and the sources' fingerprints.
    :param relabel_task_id: The task whose return value holds the labels file's fingerprint.
    """

    def __init__(
        self, *, fetch_task_id: str = "fetch", relabel_task_id: str = "relabel_val", **kwargs: Any
    ) -> None:
        self.keep(locals())
        super().__init__(**kwargs)

    def sources_returned(self, context: Context) -> tuple[dict[str, Any], dict[str, Any]]:
        """The return values of the fetch and relabel tasks of this run."""
        ti = context["ti"]
        return ti.xcom_pull(task_ids=self.fetch_task_id), ti.xcom_pull(task_ids=self.relabel_task_id)
