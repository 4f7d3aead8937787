"""The compose test's fixtures (``pytest -m compose`` runs only it, ``-m 'not compose'`` skips it).

``docker_images``: Docker installed and started if needed, the base images built or reused
(``images.py``). ``stack``: the repo's ``docker-compose.yaml`` built with the project's Dockerfile on those
images and started with two Celery workers; always taken down (``down -v``) at the end.

Outside CI, a machine where Docker cannot be installed or started skips the test with the reason; under
CI (``CI=true``) that fails, as every other missing piece does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.compose import images
from tests.compose.stack import ComposeStack
from tests.support.live_airflow import free_port

PROJECT_IMAGE = f"{images.REPOSITORY}/project:latest"


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def unavailable(reason: str) -> None:
    """Skip, or fail under CI, where Docker is installed and started on purpose."""
    if under_ci():
        pytest.fail(f"compose test under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_images() -> dict[str, object]:
    """``{"images": {name: tag}, "compose": argv, "log": [...], "seconds": float}``."""
    started = time.monotonic()
    log: list[str] = []
    try:
        log.append(f"dockerd {images.ensure_docker()}")
        compose_cli = images.compose_command()
        tags = images.base_images(log)
    except images.DockerUnavailable as exc:
        unavailable(str(exc))
    return {"images": tags, "compose": compose_cli, "log": log, "seconds": time.monotonic() - started}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_images) -> Iterator[ComposeStack]:
    """The compose stack, up (``--wait``) with two workers, the project's image built on the test images.

    One stack of this project at a time on a machine (a lock in the cache folder); a stack left behind by
    a killed session is taken down first."""
    tags = docker_images["images"]
    with images.cache_lock("stack"):
        stack = ComposeStack(
            tmp_path_factory.mktemp("compose"),
            docker_images["compose"],
            {
                "AIRFLOW_BASE_IMAGE": tags["airflow"],
                "AIRFLOW_IMAGE_NAME": PROJECT_IMAGE,
                "POSTGRES_IMAGE": tags["postgres"],
                "REDIS_IMAGE": tags["redis"],
                "AIRFLOW_API_PORT": str(free_port()),
            },
        )
        stack.log += docker_images["log"]
        stack.log.append(f"base images ready: {docker_images['seconds']:.0f} s")
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "10", timeout=300)
        old = images.docker("image", "inspect", "--format", "{{.Id}}", PROJECT_IMAGE, timeout=30, check=False)
        try:
            # The project's own Dockerfile, through the compose file's build section, once: every Airflow
            # service has that section (the official layout), and the classic builder would build the
            # same image once per service, in parallel.
            stack.timed("compose build (project image)", "build", "airflow-apiserver", timeout=1800)
            new = images.docker("image", "inspect", "--format", "{{.Id}}", PROJECT_IMAGE, timeout=30).stdout
            if old.returncode == 0 and old.stdout != new:
                images.docker("rmi", old.stdout.strip(), timeout=60, check=False)  # the previous build
            try:
                stack.timed(
                    "compose up --wait (2 workers)",
                    "up",
                    "-d",
                    "--no-build",
                    "--wait",
                    "--scale",
                    "airflow-worker=2",
                    timeout=900,
                )
            except RuntimeError as exc:
                raise AssertionError(f"{exc}\n--- service logs:\n{stack.service_logs()}") from None
            stack.log += stack.startup_timeline()
            yield stack
        finally:
            stack.down()
            report = "\n".join([f"compose test, {time.strftime('%Y-%m-%d %H:%M:%S')}:", *stack.log])
            print("\n" + report)
            # The timings of the last runs on this machine (docs/compose.md quotes them).
            with open(images.cache_dir() / "timings.log", "a") as out:
                out.write(report + "\n\n")
