"""docker-compose.yaml and Dockerfile, checked by parsing (``tests/compose`` also starts them for real).

The stack must be Airflow 3's official layout (Postgres, Redis, API server, scheduler, DAG processor,
Celery worker, triggerer, init, sharing an ``x-airflow-common`` anchor), built from the local
Dockerfile that installs this package, with ``dags/`` and one shared data volume mounted on every
Airflow container at the same path; images are variables with the official images as defaults, and
nothing depends on the official image's entrypoint beyond running ``airflow <command>``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from airflow_resnet_prep.config import OPTIONS
from airflow_resnet_prep.params import PARAMS

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yaml"
DOCKERFILE = REPO / "Dockerfile"
AIRFLOW_SERVICES = {
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-worker": "celery worker",
    "airflow-triggerer": "triggerer",
    "airflow-init": None,
}
DATA_MOUNT = "/data"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source of each volume of a service (short syntax ``source:target[:mode]``;
    the source may hold ``${VAR:-default}``, so split from the right)."""
    result = {}
    for volume in service.get("volumes", []):
        if volume.endswith((":ro", ":rw")):
            volume = volume[:-3]
        source, target = volume.rsplit(":", 1)
        result[target] = source
    return result


def airflow_version_of_makefile() -> str:
    match = re.search(r"^AIRFLOW_VERSION\s*:=\s*(\S+)", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert match, "Makefile: no AIRFLOW_VERSION"
    return match.group(1)


def test_services_of_the_official_layout(compose):
    services = compose["services"]
    assert {"postgres", "redis", *AIRFLOW_SERVICES} <= set(services)
    for name, command in AIRFLOW_SERVICES.items():
        if command is not None:
            assert services[name]["command"] == command, name
    # Published on this machine only (the admin's password is in the file), port variable, 8080 inside.
    assert services["airflow-apiserver"]["ports"] == ["127.0.0.1:${AIRFLOW_API_PORT:-8080}:8080"]


def test_images_are_variables_with_the_official_defaults(compose):
    services = compose["services"]
    assert services["postgres"]["image"] == "${POSTGRES_IMAGE:-postgres:16}"
    assert services["redis"]["image"] == "${REDIS_IMAGE:-redis:7.2-bookworm}"
    version = airflow_version_of_makefile()
    base = compose["x-airflow-common"]["build"]["args"]["AIRFLOW_BASE_IMAGE"]
    assert base == f"${{AIRFLOW_BASE_IMAGE:-apache/airflow:{version}}}"
    # The Dockerfile's own default is the same image.
    assert f"ARG AIRFLOW_BASE_IMAGE=apache/airflow:{version}" in DOCKERFILE.read_text().splitlines()
    # The test's stand-in for the official image installs the same Airflow (tests/compose).
    requirements = (REPO / "tests" / "compose" / "images" / "airflow" / "requirements.txt").read_text()
    assert f"apache-airflow=={version}" in requirements.splitlines()


def test_init_uses_plain_commands_not_entrypoint_features(compose):
    """Migration and the admin user are commands of airflow-init, which runs under /bin/bash; none of the
    official entrypoint's switches (``_AIRFLOW_DB_MIGRATE``, ``_AIRFLOW_WWW_USER_CREATE``, ``/entrypoint``)."""
    init = compose["services"]["airflow-init"]
    assert init["entrypoint"] == "/bin/bash"
    script = init["command"][-1]
    assert "airflow db migrate" in script
    assert "airflow users create --role Admin" in script
    text = COMPOSE.read_text(encoding="utf-8")
    for feature in (
        "_AIRFLOW_DB_MIGRATE",
        "_AIRFLOW_WWW_USER_CREATE",
        "_PIP_ADDITIONAL_REQUIREMENTS",
        "/entrypoint",
    ):
        assert feature not in text.split("---", 1)[1], feature


def test_worker_slots_do_not_oversubscribe_a_laptop(compose):
    """Each conversion task runs ``workers`` processes (default 0: one per core), so a worker container
    runs one task at a time by default: slots x cores processes would oversubscribe the machine."""
    assert PARAMS["workers"].default == 0
    env = compose["x-airflow-common"]["environment"]
    assert env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "${AIRFLOW_WORKER_CONCURRENCY:-1}"
    # ... and the deployment's `workers` default, for those who raise it, is empty unless set.
    assert env["AIRFLOW__RESNET_PREP__WORKERS"] == "${AIRFLOW__RESNET_PREP__WORKERS:-}"


def test_celery_executor_with_redis_and_postgres(compose):
    for name in AIRFLOW_SERVICES:
        env = compose["services"][name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:") or env[
            "AIRFLOW__CELERY__BROKER_URL"
        ].startswith("redis://:@redis:"), name
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://"), name
        assert "@postgres/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], name
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false", name
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"


def test_every_airflow_service_comes_from_the_common_anchor():
    """The anchored mapping is the very node merged into each Airflow service (``<<: *airflow-common``)."""
    text = COMPOSE.read_text(encoding="utf-8")
    assert re.search(r"^x-airflow-common:\s*\n\s*&airflow-common\s*$", text, re.MULTILINE)
    root = yaml.compose(text)
    top = {key.value: value for key, value in root.value}
    common = top["x-airflow-common"]
    services = {key.value: value for key, value in top["services"].value}
    for name in AIRFLOW_SERVICES:
        merged = [value for key, value in services[name].value if key.value == "<<"]
        assert merged and merged[0] is common, f"{name} does not merge *airflow-common"


def test_image_is_built_from_the_local_dockerfile(compose):
    images = set()
    for name in AIRFLOW_SERVICES:
        service = compose["services"][name]
        assert service["build"]["context"] == ".", name
        images.add(service["image"])
    assert len(images) == 1
    assert not next(iter(images)).endswith("apache/airflow:3.3.2"), "the stock image lacks this package"
    assert "_PIP_ADDITIONAL_REQUIREMENTS" not in COMPOSE.read_text(encoding="utf-8").split("---", 1)[1]


def dockerfile_instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined."""
    text = "\n".join(
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    return [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()]


def test_dockerfile_installs_this_package_with_airflow_pinned():
    version = airflow_version_of_makefile()
    lines = dockerfile_instructions()
    assert lines[:2] == [f"ARG AIRFLOW_BASE_IMAGE=apache/airflow:{version}", "FROM ${AIRFLOW_BASE_IMAGE}"]
    copies = [line.split()[1:] for line in lines if line.startswith("COPY")]
    copied = {arg for args in copies for arg in args[:-1] if not arg.startswith("--")}
    assert {"pyproject.toml", "README.md", "airflow_resnet_prep"} <= copied
    for path in copied:
        assert (REPO / path).exists(), f"Dockerfile copies {path}, which is not in the repo"
    assert all(args[-1].startswith("/opt/airflow-resnet-prep") for args in copies)
    runs = [line for line in lines if line.startswith("RUN") and "pip install" in line]
    # Dependencies (from pyproject.toml alone), then the package; Airflow pinned to the base's own version.
    assert len(runs) == 2
    for run in runs:
        assert '"apache-airflow==${AIRFLOW_VERSION}"' in run and "/opt/airflow-resnet-prep" in run, run
        assert 'version("apache-airflow")' in run, run


def test_dags_and_one_shared_data_volume_on_every_airflow_container(compose):
    for name in AIRFLOW_SERVICES:
        volumes = mounts(compose["services"][name])
        assert volumes["/opt/airflow/dags"].endswith("/dags"), name
        assert volumes[DATA_MOUNT] == "mlperf-data", name
    assert "mlperf-data" in compose["volumes"]
    env = compose["services"]["airflow-worker"]["environment"]
    assert env["DUMB_INIT_SETSID"] == "0"
    # The DAG's default data_dir lies on the shared volume.
    assert env["AIRFLOW__RESNET_PREP__DATA_DIR"].split(":-")[-1].rstrip("}").startswith(DATA_MOUNT + "/")


def test_param_defaults_set_by_compose_name_real_params(compose):
    env = compose["x-airflow-common"]["environment"]
    names = [
        k.removeprefix("AIRFLOW__RESNET_PREP__").lower()
        for k in env
        if k.startswith("AIRFLOW__RESNET_PREP__")
    ]
    assert "schedule" in names
    for name in names:
        if name != "schedule":
            assert name in PARAMS, f"AIRFLOW__RESNET_PREP__{name.upper()} names no param"
            assert name in OPTIONS, f"{name}: not a [resnet_prep] option, the DAG reads no default for it"


def test_one_naming_convention_and_the_image_tag_follows_the_package_version(compose):
    """Only ``AIRFLOW__RESNET_PREP__*`` (Airflow's own form of ``[resnet_prep]``) in the compose file and
    its docs; the image built from this checkout is tagged with the package's version."""
    from airflow_resnet_prep import __version__

    for path in (COMPOSE, REPO / "docs" / "compose.md", DOCKERFILE):
        assert "MLPERF_RESNET_PREP" not in path.read_text(encoding="utf-8"), path.name
    assert (
        compose["x-airflow-common"]["image"] == f"${{AIRFLOW_IMAGE_NAME:-airflow-resnet-prep:{__version__}}}"
    )
    # pyproject.toml reads the version from the package: one place to change it.
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "airflow_resnet_prep.__version__" }' in pyproject


# -- the same stack as the test cluster (tests/cluster) ---------------------------------------------------
# tests/support/cluster/settings.py is the one list of what the compose file and the cluster fixture share; these
# tests check the compose file against it, and the fixture builds its settings from it (cluster_env).


def resolved(value: Any) -> str:
    """A compose value with ``${VAR:-default}`` replaced by its default, as a string."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(value))


def test_compose_runs_the_services_the_cluster_fixture_runs(compose):
    from tests.support.cluster.settings import COMPOSE_ONLY, SERVICES

    services = compose["services"]
    assert set(services) == set(SERVICES) | set(COMPOSE_ONLY)
    for name, command in SERVICES.items():
        if name.startswith("airflow-"):
            assert services[name]["command"] == command, name


def test_compose_and_cluster_fixture_share_settings(compose):
    from tests.support.cluster.celery_cluster import cluster_env
    from tests.support.cluster.settings import DAG_DEFAULTS, SAME_KEY, SAME_SCHEME, SAME_VALUE

    fixture = cluster_env(
        sql_alchemy_conn="postgresql+psycopg2://airflow:airflow@127.0.0.1:5432/airflow",
        result_backend="db+postgresql://airflow:airflow@127.0.0.1:5432/airflow",
        broker_url="redis://127.0.0.1:6379/0",
        api_url="http://127.0.0.1:8080",
        concurrency=1,
    )
    for name in AIRFLOW_SERVICES:
        env = {key: resolved(value) for key, value in compose["services"][name]["environment"].items()}
        for key, value in SAME_VALUE.items():
            assert env.get(key) == value == fixture[key], (name, key)
        for key, scheme in SAME_SCHEME.items():
            assert env[key].partition("://")[0] == scheme == fixture[key].partition("://")[0], (name, key)
        for key in (*SAME_KEY, *DAG_DEFAULTS):
            assert key in compose["services"][name]["environment"], (name, key)
            assert key in fixture or key in DAG_DEFAULTS, key
    for variable, param in DAG_DEFAULTS.items():
        assert variable == "AIRFLOW__RESNET_PREP__" + param.upper() and param in PARAMS
