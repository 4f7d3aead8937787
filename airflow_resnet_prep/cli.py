"""The command line: the DAG's job in one process, without a scheduler.

``python -m airflow_resnet_prep --data-dir D --train-source T --val-source V [--<param> VALUE ...]``

It takes exactly the DAG's params (``params.PARAMS``), one option each, with the DAG's defaults: the
built-in ones, then the deployment's ``[resnet_prep]`` options (``AIRFLOW__RESNET_PREP__<PARAM>``), then
the command line. Values are checked against the same JSON schemas as the trigger form. A param the
command cannot honour is refused, not ignored: ``fanout`` (mapped Airflow tasks; here ``--workers``
processes share the work). ``http_conn_id`` reads the Airflow connection as a task does (the metadata DB,
a secrets backend or ``AIRFLOW_CONN_<ID>``), so Airflow must be installed and configured for it.

The work is :func:`airflow_resnet_prep.pipeline.run`; the result (the output paths, ``cached``,
``manifest``) is printed as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from airflow_resnet_prep.params import PARAMS, missing_required

PROG = "python -m airflow_resnet_prep"
#: Params the command cannot honour, and what to do instead.
REFUSED = {
    "fanout": "fanout splits the conversion over mapped Airflow tasks; this command runs it in one "
    "process: use --workers for parallelism, or run the DAG",
}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class UsageError(ValueError):
    """A param the command refuses: unknown, outside its schema, or one it would ignore."""


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse(name: str, text: str, *, as_json: bool = False) -> Any:
    """``text`` as the param's type. ``as_json`` (``--param``, as in 0.2.0): a JSON value is taken as
    it is, so ``on_bad_image="skip"`` is ``skip``; plain text stays text. Anything else that does not
    parse is handed on as text, for the schema to name what is wrong with it."""
    kind = PARAMS[name].schema["type"]
    try:
        decoded: Any = json.loads(text)
    except json.JSONDecodeError:
        decoded = text
    if kind == "string":
        return decoded if as_json and isinstance(decoded, str) else text
    if kind == "boolean" and text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    if kind == "integer":
        with contextlib.suppress(ValueError):  # not a number: the schema names what is wrong
            return int(text)
    return decoded


def check(values: dict[str, Any]) -> None:
    """Refuse unknown params, values outside their schema and params the command would ignore,
    naming the param (as Airflow names it when it refuses a run's params)."""
    from jsonschema import ValidationError, validate

    for name, value in values.items():
        if name not in PARAMS:
            raise UsageError(f"unknown param {name!r}; the params are: {', '.join(PARAMS)}")
        if name in REFUSED and value is not None:
            raise UsageError(f"{_option(name)}: {REFUSED[name]}")
        if value is None:
            continue
        schema = dict(PARAMS[name].schema)
        if PARAMS[name].required:
            schema.setdefault("minLength", 1)
        try:
            validate(value, schema)
        except ValidationError as exc:
            raise UsageError(f"Invalid input for param {name}: {exc.message}") from None


def parser(prog: str = PROG) -> argparse.ArgumentParser:
    from airflow_resnet_prep.params import defaults

    built_in = defaults()
    result = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n", 1)[0] + f"\n\n{prog} --data-dir D --train-source T --val-source V "
        "[--<param> VALUE ...]\n\nOptions not given take [resnet_prep]'s defaults, then the built-in ones.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, spec in PARAMS.items():
        if name in REFUSED:
            continue
        default = "none (required)" if spec.required else json.dumps(built_in[name])
        result.add_argument(
            _option(name),
            dest=name,
            metavar=spec.schema["type"].upper(),
            help=f"{spec.description} [built-in default: {default}]".replace("%", "%%"),
        )
    result.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any param as NAME=VALUE (a JSON value or plain text), as in 0.2.0",
    )
    return result


def values_from(args: argparse.Namespace) -> dict[str, Any]:
    """The run's params: the deployment's defaults overlaid with the command line, checked."""
    from airflow_resnet_prep.config import deployment_defaults

    given: dict[str, Any] = {}
    for item in args.param:
        name, sep, raw = item.partition("=")
        if not sep:
            raise UsageError(f"--param {item!r}: expected NAME=VALUE")
        if name not in PARAMS:
            raise UsageError(f"--param {name}: unknown param; the params are: {', '.join(PARAMS)}")
        given[name] = _parse(name, raw, as_json=True)
    for name in PARAMS:
        text = getattr(args, name, None)
        if text is not None:
            given[name] = _parse(name, text)
    check(given)
    values = {**deployment_defaults(), **given}
    missing = missing_required(values)
    if missing:
        raise UsageError(
            "required: "
            + ", ".join(
                f"{_option(n)} (or [resnet_prep] {n}, AIRFLOW__RESNET_PREP__{n.upper()})" for n in missing
            )
        )
    # One machine: a relative path is relative to where the command runs.
    if "://" not in values["data_dir"]:
        values["data_dir"] = os.path.abspath(values["data_dir"])
    return values


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send whatever writes to file descriptor 1 (Airflow's loggers, once its config is imported, print to
    stdout; worker processes inherit it) to stderr, so that stdout holds only the JSON result."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    args = parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with _stdout_to_stderr():
        try:
            values = values_from(args)
        except (UsageError, ValueError) as exc:
            parser(prog).error(str(exc))
        credentials = None
        if values.get("http_conn_id"):
            from airflow_resnet_prep.operators.connections import http_credentials_from_connection

            credentials = http_credentials_from_connection(values["http_conn_id"])
        from airflow_resnet_prep.pipeline import run

        result = run(values, credentials=credentials)
    print(json.dumps(result, indent=2))
    return 0
