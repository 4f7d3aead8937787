"""Attacks through the sources, round 2, by someone who may only trigger the DAG: slipping a connection's
credentials past the origin check with a parser mismatch, reaching an internal (metadata) service,
reading its answer back through an error, and secrets in URLs. Every server is a real one on 127.0.0.1
that records each request and its headers; operators run for real (``execute``).
"""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from airflow_resnet_prep.errors import LabelsError, SourceError
from airflow_resnet_prep.policy import NotAllowedError
from airflow_resnet_prep.sources.credentials import HttpCredentials
from airflow_resnet_prep.sources.download import resolve_source
from airflow_resnet_prep.urls import hop_problem, mask_text, mask_url, origin_of
from tests.support.httpserver import FileServer

USER, SECRET, API_KEY = "mirror-user", "pw-9f3c1d77", "key-51aa0c"
METADATA_PATH = "latest/meta-data/iam/security-credentials/prep-role"
METADATA_BODY = (
    b'{"AccessKeyId":"ASIAQEXAMPLE","SecretAccessKey":"wJalrXUtnFEMI-metadata-secret","Token":"tok"}\n'
)
FAST = {"retries": 0, "backoff_s": 0.01, "timeout_s": 5.0}


def _leaked(server: FileServer) -> list[str]:
    """Every request to ``server`` that carried basic auth or the API key."""
    return [
        f"{r.method} {r.path}: {name}"
        for r in server.requests
        for name, value in r.headers.items()
        if name.lower() == "authorization" or API_KEY in value or SECRET in value
    ]


@pytest.fixture
def sample_files(sample) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (sample.train_tar, sample.val_tar, sample.labels)}


@pytest.fixture
def other(sample_files):
    """A server of the attacker's: serves the same files and records what it is sent."""
    with FileServer(files=sample_files) as srv:
        yield srv


@pytest.fixture
def metadata():
    """A stand-in for a cloud metadata service: an internal HTTP server answering credentials."""
    with FileServer(files={METADATA_PATH: METADATA_BODY}) as srv:
        yield srv


def _mirror(sample_files, redirects=None) -> FileServer:
    return FileServer(
        files=sample_files, auth=(USER, SECRET), required_headers={"X-Api-Key": API_KEY}, redirects=redirects
    )


def _mirror_connection(monkeypatch, port: int) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_MIRROR_CONN",
        json.dumps(
            {
                "conn_type": "http",
                "host": "127.0.0.1",
                "port": port,
                "login": USER,
                "password": SECRET,
                "extra": {"headers": {"X-Api-Key": API_KEY}},
            }
        ),
    )
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_CONN_IDS", "mirror_conn")


@pytest.fixture
def connect_attempts(monkeypatch) -> list[tuple]:
    """Every TCP connection this process tries (recorded, then made as usual)."""
    seen: list[tuple] = []
    real = socket.socket.connect

    def connect(self, address):
        seen.append(address)
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


def _relabel_op(tmp_path: Path, labels_source: str, conn: str = ""):
    from airflow_resnet_prep.operators.relabel import RelabelValOperator

    op = RelabelValOperator(
        task_id="relabel_val",
        data_dir=str(tmp_path / "data"),
        labels_source="{{ params.labels_source }}",
        http_conn_id="{{ params.http_conn_id }}",
    )
    op.labels_source, op.http_conn_id = labels_source, conn  # what the trigger's params rendered to
    return op


def _fetch_op(tmp_path: Path, train: str, val: str, conn: str = "", **kw):
    from airflow_resnet_prep.operators.fetch import FetchImagenetOperator

    op = FetchImagenetOperator(
        task_id="fetch",
        data_dir=kw.pop("data_dir", str(tmp_path / "data")),
        train_source="{{ params.train_source }}",
        val_source="{{ params.val_source }}",
        http_conn_id="{{ params.http_conn_id }}",
        **kw,
    )
    op.train_source, op.val_source, op.http_conn_id = train, val, conn
    return op


@pytest.fixture
def fetched(tmp_path, sample):
    """A data_dir whose fetch step ran (local sources), for the relabel step's attacks."""
    _fetch_op(tmp_path, str(sample.train_tar), str(sample.val_tar)).execute({"params": {}, "ti": None})


# -- 1. one parser: the backslash redirect -----------------------------------------------------------


def test_parsers_disagree_on_a_backslash_and_the_origin_is_the_clients() -> None:
    """The attack's root: urlsplit reads the host after the '@', urllib3 (what requests connects to)
    the one before. The origin check now reads it as the client does, and the hop is refused anyway."""
    url = "http://127.0.0.1:1111\\@127.0.0.1:2222/labels.txt"
    assert urlsplit(url).port == 2222
    assert origin_of(url) == "http://127.0.0.1:1111"
    assert "backslash" in (hop_problem(url) or "")


def test_a_backslash_redirect_carries_no_credentials_to_another_port(
    tmp_path, sample, sample_files, other, fetched, monkeypatch
) -> None:
    name = sample.labels.name
    with _mirror(sample_files) as mirror:
        mirror.redirects[name] = f"http://127.0.0.1:{other.port}\\@127.0.0.1:{mirror.port}/{name}"
        _mirror_connection(monkeypatch, mirror.port)
        with pytest.raises(SourceError, match="backslash") as err:
            _relabel_op(tmp_path, mirror.url(name), "mirror_conn").execute({"params": {}, "ti": None})
        assert _leaked(mirror), "the first hop, to the mirror itself, did carry the credentials"
    assert other.requests == [], "nothing reaches the other port: not the credentials, not a request"
    assert SECRET not in str(err.value) and API_KEY not in str(err.value)


@pytest.mark.parametrize(
    ("location", "problem"),
    [
        ("http://{u}:{p}@127.0.0.1:{port}/{name}", "user:password@"),
        ("http://127.0.0.1:{port}/x {name}", "whitespace"),
        ("http://127.0.0.1:{port}/x\t{name}", "whitespace or a control character"),
        ("/x\\..\\{name}", "backslash"),
    ],
    ids=["userinfo", "space", "tab", "relative-backslash"],
)
def test_a_redirect_hop_with_userinfo_whitespace_or_control_characters_is_refused(
    tmp_path, sample, sample_files, other, location, problem
) -> None:
    name = sample.train_tar.name
    target = location.format(u=USER, p=SECRET, port=other.port, name=name)
    with FileServer(files=sample_files, redirects={name: target}) as first:
        with pytest.raises(SourceError, match=problem) as err:
            resolve_source(first.url(name), tmp_path / "dl", **FAST)
    assert other.requests == []
    assert SECRET not in str(err.value)


# -- 2. internal services: the metadata endpoint -----------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/" + METADATA_PATH,
        "http://[fe80::1]/" + METADATA_PATH,
        "http://0.0.0.0:9/" + METADATA_PATH,
        "http://[::ffff:169.254.169.254]/" + METADATA_PATH,
    ],
    ids=["ipv4-link-local", "ipv6-link-local", "unspecified", "mapped"],
)
def test_a_link_local_or_unspecified_source_is_refused_without_a_connection_attempt(
    tmp_path, fetched, connect_attempts, url
) -> None:
    """Refused by the policy, always (no option allows it), naming the param; and by the download itself
    when called without a policy."""
    del connect_attempts[:]
    with pytest.raises(NotAllowedError, match="labels_source") as err:
        _relabel_op(tmp_path, url).execute({"params": {}, "ti": None})
    assert "link-local" in str(err.value)
    with pytest.raises(SourceError, match="link-local"):
        resolve_source(url, tmp_path / "dl", **FAST)
    assert connect_attempts == []


@pytest.mark.parametrize("host", ["2852039166", "0251.0376.0251.0376", "169.254.43518"])
def test_other_spellings_of_the_metadata_address_are_refused_where_the_socket_is_made(
    tmp_path, fetched, connect_attempts, host
) -> None:
    """Decimal, octal and short forms that the resolver turns into 169.254.169.254: the policy sees a
    name, the connection sees the address and refuses it, before any connection attempt."""
    del connect_attempts[:]
    with pytest.raises(SourceError, match="link-local"):
        _relabel_op(tmp_path, f"http://{host}/{METADATA_PATH}").execute({"params": {}, "ti": None})
    assert connect_attempts == []


def test_a_name_that_resolves_to_a_metadata_address_is_refused_before_connecting(
    tmp_path, metadata, connect_attempts, monkeypatch
) -> None:
    """What the connection will use is checked: the name is resolved once, every address checked, and
    the socket goes to a checked one. A name answering a harmless address and a link-local one (or a
    rebinding name answering the link-local one now) gets no connection at all."""
    real = socket.getaddrinfo
    answers = {
        "metadata.rebind.test": ["127.0.0.1", "169.254.169.254"],
        "only.rebind.test": ["169.254.169.254"],
    }

    def getaddrinfo(host, port, *args, **kwargs):
        if host in answers:  # a DNS server of the attacker's
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for host in answers:
        with pytest.raises(SourceError, match="link-local"):
            resolve_source(f"http://{host}:{metadata.port}/{METADATA_PATH}", tmp_path / "dl", **FAST)
    assert connect_attempts == [] and metadata.requests == []


def test_an_internal_service_outside_allowed_sources_is_refused_before_any_request(
    tmp_path, sample, metadata, fetched, monkeypatch
) -> None:
    with FileServer(files={sample.labels.name: sample.labels.read_bytes()}) as mirror:
        monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_SOURCES", mirror.url(""))
        with pytest.raises(NotAllowedError) as err:
            _relabel_op(tmp_path, metadata.url(METADATA_PATH)).execute({"params": {}, "ti": None})
        text = str(err.value)
        assert "labels_source" in text and "allowed_sources" in text
        assert str(mirror.port) not in text, "the refusal does not list what is allowed"
        assert metadata.requests == []
        # the positive control: the allowed mirror still works
        result = _relabel_op(tmp_path, mirror.url(sample.labels.name)).execute({"params": {}, "ti": None})
        assert result["images"] == sample.val_count


def test_a_redirect_out_of_allowed_sources_is_refused_before_it_is_followed(
    tmp_path, sample, sample_files, metadata, fetched, monkeypatch
) -> None:
    name = sample.labels.name
    with FileServer(files=sample_files, redirects={name: metadata.url(METADATA_PATH)}) as mirror:
        monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_SOURCES", mirror.url(""))
        with pytest.raises(NotAllowedError, match=r"labels_source.*allowed_sources"):
            _relabel_op(tmp_path, mirror.url(name)).execute({"params": {}, "ti": None})
        assert mirror.gets(name)
    assert metadata.requests == []


def test_an_internal_answer_read_as_labels_is_never_quoted(tmp_path, metadata, fetched, caplog) -> None:
    """Without allowed_sources (the development default) loopback may be read: the labels step then
    fails naming the file and the line, and no byte of the answer reaches the error or the log."""
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LabelsError, match="line 1 is not a synset id") as err:
        _relabel_op(tmp_path, metadata.url(METADATA_PATH)).execute({"params": {}, "ti": None})
    assert metadata.gets(Path(METADATA_PATH).name) or metadata.requests
    for secret in ("ASIA", "AccessKeyId", "metadata-secret", "wJalr"):
        assert secret not in str(err.value)
        assert secret not in caplog.text


def test_local_and_file_sources_outside_allowed_sources_are_refused(tmp_path, sample, fetched, monkeypatch):
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_SOURCES", str(sample.labels.parent))
    for source in (str(secret), f"file://{secret}", str(sample.labels.parent / ".." / secret.name)):
        with pytest.raises(NotAllowedError, match=r"labels_source.*allowed_sources") as err:
            _relabel_op(tmp_path, source).execute({"params": {}, "ti": None})
        assert "hunter2" not in str(err.value)
    result = _relabel_op(tmp_path, str(sample.labels)).execute({"params": {}, "ti": None})
    assert result["images"] == sample.val_count


def test_sources_the_dag_names_literally_are_allowed(tmp_path, sample, monkeypatch) -> None:
    """A source written in the DAG's code is the author's choice, not the trigger's."""
    from airflow_resnet_prep.operators.fetch import FetchImagenetOperator

    monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_SOURCES", "/nowhere/in/particular")
    op = FetchImagenetOperator(
        task_id="fetch",
        data_dir=str(tmp_path / "data"),
        train_source=str(sample.train_tar),
        val_source="{{ params.val_source }}",
        allowed_places=[str(sample.val_tar)],  # as the factory passes its defaults
    )
    op.val_source = str(sample.val_tar)
    assert op.execute({"params": {}, "ti": None})["counts"]["train"] == sample.train_count
    op.val_source = str(sample.labels)  # anything else the trigger gives is not
    with pytest.raises(NotAllowedError, match="val_source"):
        op.execute({"params": {}, "ti": None})


# -- 2b. the positive control: an allowed mirror with its credentials --------------------------------


def test_an_allowed_mirror_still_gets_its_credentials(tmp_path, sample, sample_files, monkeypatch) -> None:
    with _mirror(sample_files) as mirror:
        _mirror_connection(monkeypatch, mirror.port)
        monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_SOURCES", f"http://127.0.0.1:{mirror.port}/")
        op = _fetch_op(
            tmp_path, mirror.url(sample.train_tar.name), mirror.url(sample.val_tar.name), "mirror_conn"
        )
        assert op.execute({"params": {}, "ti": None})["counts"]["val"] == sample.val_count
        assert _leaked(mirror), "the mirror received its credentials"


# -- 5. secrets in URLs ------------------------------------------------------------------------------


def test_query_secrets_and_fragments_are_masked_everywhere_a_url_is_written(
    tmp_path, sample, sample_files, caplog
) -> None:
    """``?X-Amz-Signature=S1&pass=S2#tok=S3``: no S in the log, the XCom, catalog/fetch.json, the
    manifest or the report."""
    from airflow_resnet_prep.pipeline import run
    from airflow_resnet_prep.report import write_report

    caplog.set_level(logging.DEBUG)
    secrets = ("S1-sig-0a7f", "S2-pass-4c1e", "S3-tok-9d2b")
    query = f"?X-Amz-Signature={secrets[0]}&pass={secrets[1]}&version=2#tok={secrets[2]}"
    data_dir = tmp_path / "data"
    with FileServer(files=sample_files) as srv:
        op = _fetch_op(tmp_path, srv.url(sample.train_tar.name) + query, srv.url(sample.val_tar.name) + query)
        xcom = op.execute({"params": {}, "ti": None})
        out = run(
            {
                "data_dir": str(data_dir),
                "train_source": srv.url(sample.train_tar.name) + query,
                "val_source": srv.url(sample.val_tar.name) + query,
                "labels_source": str(sample.labels),
                "implementation": "nvidia",
            }
        )
    write_report(str(data_dir))
    written = {
        "xcom": json.dumps(xcom),
        "fetch.json": (data_dir / "catalog" / "fetch.json").read_text(),
        "manifest.json": Path(out["manifest"]).read_text(),
        "report": (data_dir / "report" / "index.html").read_text(),
        "log": caplog.text,
    }
    for where, text in written.items():
        for secret in secrets:
            assert secret not in text, f"{secret} in {where}"
    assert "version=2" in written["manifest.json"], "a harmless key stays readable"
    assert "X-Amz-Signature=***" in written["fetch.json"]


def test_a_redirect_hops_secret_never_reaches_an_error(tmp_path, sample, sample_files) -> None:
    name = sample.train_tar.name
    with FileServer(files=sample_files) as target:
        hop = target.url("gone.tar") + "?X-Amz-Signature=HOPSECRET1&token=HOPSECRET2#frag=HOPSECRET3"
        with FileServer(files=sample_files, redirects={name: hop}) as first:
            with pytest.raises(SourceError) as err:
                resolve_source(first.url(name) + "?sig=FIRSTSECRET", tmp_path / "dl", **FAST)
    text = str(err.value)
    assert "HTTP 404" in text
    for secret in ("HOPSECRET1", "HOPSECRET2", "HOPSECRET3", "FIRSTSECRET"):
        assert secret not in text


def test_mask_url_and_mask_text() -> None:
    assert mask_url("https://u:p@h:8443/a/b.tar?X-Amz-Credential=AK%2F1&alt=media&x#f") == (
        "https://h:8443/a/b.tar?X-Amz-Credential=***&alt=media&***"
    )
    assert mask_url("/local/path?x=1") == "/local/path?x=1"  # a path is a path
    line = "GET /a.tar?sig=abc&dl=1 HTTP/1.1 ... with url: /b?token=zz (Caused by http://h/c?k=v#t=1)"
    assert (
        mask_text(line)
        == "GET /a.tar?sig=***&dl=1 HTTP/1.1 ... with url: /b?token=*** (Caused by http://h/c?k=***)"
    )


def test_credentials_in_a_source_url_stay_bound_to_its_origin(tmp_path, sample, sample_files, other) -> None:
    """``user:pass@`` in the source itself still works (its own origin only), and is masked."""
    name = sample.train_tar.name
    with FileServer(files=sample_files, auth=(USER, SECRET), redirects={name: other.url(name)}) as srv:
        fetched = resolve_source(srv.url(name, userinfo=f"{USER}:{SECRET}"), tmp_path / "dl", **FAST)
    assert fetched.fingerprint["source"] == srv.url(name)
    assert other.gets(name) and _leaked(other) == []
    # the credentials of :2222 are not for a URL the client sends to :1111, whatever urlsplit thinks
    creds = HttpCredentials("http://127.0.0.1:2222", (USER, SECRET), {"X-Api-Key": API_KEY})
    assert creds.for_url("http://127.0.0.1:1111\\@127.0.0.1:2222/x") == (None, {})
    assert creds.for_url("http://127.0.0.1:2222/x")[0] == (USER, SECRET)
