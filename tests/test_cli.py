"""The command line (``python -m airflow_resnet_prep``; ``python -m airflow_resnet_prep.pipeline`` as in
0.2.0): exactly the DAG's params, the DAG's defaults (built-in, then ``[resnet_prep]``), the form's checks,
and nothing accepted that it would ignore."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from airflow_resnet_prep import cli
from airflow_resnet_prep.params import PARAMS
from tests.support.httpserver import FileServer


@pytest.mark.parametrize("module", ["airflow_resnet_prep", "airflow_resnet_prep.pipeline"])
def test_help_names_the_module_as_users_run_it(module):
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.startswith(f"usage: python -m {module} ")
    assert "pipeline.py" not in out.stdout and "__main__.py" not in out.stdout
    assert "--train-shards" in out.stdout and "1024" in out.stdout


def test_the_options_are_exactly_the_dags_params():
    options = {action.dest for action in cli.parser()._actions if action.dest not in ("help", "param")}
    assert options == set(PARAMS) - set(cli.REFUSED)
    assert set(cli.REFUSED) == {"fanout"}


def run_cli(argv: list[str], capsys) -> tuple[int | None, str]:
    """``main(argv)``: its exit code (None when it returned) and what it printed."""
    try:
        code: int | None = cli.main(argv)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


REQUIRED = ["--data-dir", "/tmp/never", "--train-source", "/t.tar", "--val-source", "/v.tar"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--param", "fanout=4"], "--fanout: fanout splits the conversion over mapped Airflow tasks"),
        (["--param", "http_conn=mirror"], "--param http_conn: unknown param"),
        (["--param", "train_shards"], "expected NAME=VALUE"),
        (["--train-shards", "0"], "Invalid input for param train_shards: 0 is less than the minimum of 1"),
        (
            ["--implementation", "tensorflow"],
            "Invalid input for param implementation: 'tensorflow' is not one",
        ),
        (["--extract", "maybe"], "Invalid input for param extract: 'maybe' is not of type 'boolean'"),
        (["--val-source", ""], "Invalid input for param val_source: '' should be non-empty"),
    ],
    ids=["fanout", "unknown", "no-value", "shards", "implementation", "boolean", "empty-required"],
)
def test_what_it_would_ignore_or_the_form_refuses_is_refused_naming_the_param(argv, message, capsys):
    code, text = run_cli([*REQUIRED, *argv], capsys)
    assert code == 2
    assert message in text, text


def test_missing_required_params_name_the_option_and_the_config(capsys, monkeypatch):
    for name in ("DATA_DIR", "TRAIN_SOURCE", "VAL_SOURCE"):
        monkeypatch.delenv(f"AIRFLOW__RESNET_PREP__{name}", raising=False)
    code, text = run_cli(["--data-dir", "/tmp/never"], capsys)
    assert code == 2
    assert (
        "required: --train-source (or [resnet_prep] train_source, AIRFLOW__RESNET_PREP__TRAIN_SOURCE)" in text
    )
    assert "--val-source" in text and "--data-dir (" not in text


def test_param_values_are_json_or_plain_text_as_in_0_2_0():
    params = ['on_bad_image="skip"', "mxnet_version=22.04", "workers=2", "decode_check=true"]
    argv = [*REQUIRED, *(a for p in params for a in ("--param", p)), "--resize", "256"]
    args = cli.parser().parse_args([*argv, "--labels-source", '"quoted"'])
    values = cli.values_from(args)
    assert values["on_bad_image"] == "skip" and values["mxnet_version"] == "22.04"
    assert values["workers"] == 2 and values["decode_check"] is True and values["resize"] == 256
    assert values["labels_source"] == '"quoted"'  # an option's text is taken as it is


def test_the_deployments_defaults_apply_then_the_command_line(monkeypatch):
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__TRAIN_SOURCE", "/imagenet/train.tar")
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__VAL_SOURCE", "/imagenet/val.tar")
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__TRAIN_SHARDS", "256")
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__IMPLEMENTATION", "reference")
    args = cli.parser().parse_args(
        ["--data-dir", "rel/out", "--implementation", "nvidia", "--param", "force=true"]
    )
    values = cli.values_from(args)
    assert values["train_source"] == "/imagenet/train.tar" and values["train_shards"] == 256
    assert values["implementation"] == "nvidia"  # the command line wins
    assert values["force"] is True
    assert values["data_dir"].endswith("/rel/out") and values["data_dir"].startswith("/")


def test_http_conn_id_authenticates_the_downloads(sample, tmp_path, monkeypatch, capsys):
    """``--http-conn-id`` takes effect: the labels file on a server that wants a password is fetched with
    the connection's, which comes from ``AIRFLOW_CONN_<ID>`` as in a task; without it the run fails."""
    labels = sample.labels.read_bytes()
    with FileServer(files={"labels.txt": labels}, auth=("prep", "s3cret")) as server:
        monkeypatch.setenv(
            "AIRFLOW_CONN_LABELS_MIRROR",
            json.dumps(
                {
                    "conn_type": "http",
                    "host": "127.0.0.1",
                    "port": server.port,
                    "login": "prep",
                    "password": "s3cret",
                }
            ),
        )
        argv = [
            "--train-source", str(sample.train_tar), "--val-source", str(sample.val_tar),
            "--labels-source", server.url("labels.txt"), "--workers", "1",
        ]  # fmt: skip
        with pytest.raises(Exception, match="401"):
            cli.main(["--data-dir", str(tmp_path / "without"), *argv])
        code, text = run_cli(
            ["--data-dir", str(tmp_path / "with"), *argv, "--http-conn-id", "labels_mirror"], capsys
        )
        assert code == 0, text
        last = server.gets("labels.txt")[-1]
        assert last.headers.get("Authorization", "").startswith("Basic "), last
    result = json.loads(text[text.index("{") :])
    assert result["cached"] is False
    assert (tmp_path / "with" / "manifest.json").is_file()
    assert "s3cret" not in text


def test_stdout_holds_only_the_json_result(sample, tmp_path):
    """Airflow's loggers print to stdout once its config is read (for ``[resnet_prep]``): the command
    sends them to stderr, so its output can be piped into a JSON reader; a rerun says it reused."""
    argv = [sys.executable, "-m", "airflow_resnet_prep", "--data-dir", str(tmp_path / "out")]
    argv += ["--train-source", str(sample.train_tar), "--val-source", str(sample.val_tar)]
    argv += ["--labels-source", str(sample.labels), "--workers", "1"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads(first.stdout)["cached"] is False
    assert "train:" in first.stderr  # the log went to stderr
    again = subprocess.run([*argv, "--quality", "50"], capture_output=True, text=True, timeout=300)
    assert "quality=50 (written with 95)" in json.loads(again.stdout)["reused"]
