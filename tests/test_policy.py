"""airflow_resnet_prep.policy: which connections and places a run may reach, from the deployment's
``[resnet_prep]`` options (set here as ``AIRFLOW__RESNET_PREP__*``, as a deployment would) and the DAG's
own code."""

from __future__ import annotations

import pytest

from airflow_resnet_prep.policy import NotAllowedError, Policy, dag_conn_ids, dag_places


@pytest.fixture
def deployment(monkeypatch: pytest.MonkeyPatch):
    def configure(conn_ids: str = "", roots: str = "") -> Policy:
        monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_CONN_IDS", conn_ids)
        monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_DATA_ROOTS", roots)
        return Policy.load()

    return configure


def test_only_listed_connections_pass_and_the_refusal_names_param_and_option(deployment) -> None:
    policy = deployment("mirror, prep_s3")
    policy.check_conn("mirror", "http_conn_id")
    policy.check_conn(" prep_s3 ", "storage_conn_id")
    policy.check_conn(None, "http_conn_id")  # none named: nothing to allow
    policy.check_conn("", "http_conn_id")
    with pytest.raises(NotAllowedError) as err:
        policy.check_conn("prod_db", "http_conn_id")
    text = str(err.value)
    assert "http_conn_id" in text and "'prod_db'" in text
    assert "allowed_conn_ids" in text and "AIRFLOW__RESNET_PREP__ALLOWED_CONN_IDS" in text
    assert "mirror" not in text and "prep_s3" not in text  # the allowed ones are not disclosed


def test_nothing_configured_allows_only_what_the_dag_names(deployment, monkeypatch) -> None:
    assert deployment().conn_ids == frozenset()
    with pytest.raises(NotAllowedError):
        Policy.load().check_conn("anything", "storage_conn_id")
    Policy.load(["dag_default"]).check_conn("dag_default", "storage_conn_id")
    # the older variable of deployments set up before the config section still counts
    monkeypatch.delenv("AIRFLOW__RESNET_PREP__ALLOWED_CONN_IDS")
    monkeypatch.setenv("MLPERF_RESNET_PREP_ALLOWED_CONN_IDS", "legacy")
    Policy.load().check_conn("legacy", "http_conn_id")


def test_connections_inside_uris_are_checked_under_the_param_that_names_them(deployment) -> None:
    policy = deployment("ok")
    policy.check_location("s3://ok@bucket/train.tar", "train_source")
    policy.check_location("s3://bucket/train.tar", "train_source")  # no connection named: storage_conn_id's
    policy.check_location("/data/train.tar", "train_source")
    policy.check_location("https://example.com/train.tar", "train_source")
    for uri in ("s3://prod@bucket/x.tar", "gs://prod@b/x", "s3a://prod@b/x", "gcs://prod@b/x"):
        with pytest.raises(NotAllowedError, match="train_source"):
            policy.check_location(uri, "train_source")


def test_literal_connection_ids_are_the_dag_authors(deployment) -> None:
    ids = dag_conn_ids(
        ["listed"],
        conns=("literal", "{{ params.http_conn_id }}", None, " "),
        locations=("s3://in_uri@bucket/p", "{{ params.data_dir }}", "gs://{{ params.c }}@b/k", "/local"),
    )
    assert ids == ("in_uri", "listed", "literal")


@pytest.mark.parametrize(
    ("data_dir", "allowed"),
    [
        ("/data/prep", True),
        ("/data/prep/imagenet/run1", True),
        ("/data/prep/../../etc", False),  # spelled inside, lands outside
        ("/data/prepared", False),  # a sibling sharing the prefix's letters
        ("/tmp/x", False),
        ("relative/path", False),
        ("s3://team-bucket/imagenet", True),
        ("s3://conn@team-bucket/imagenet/run1", True),
        ("s3a://team-bucket/imagenet/x", True),
        ("s3://team-bucket/imagenet2", False),
        ("s3://team-bucket/other", False),
        ("s3://other-bucket/imagenet", False),
        ("gs://team-bucket/imagenet", False),  # another store with a bucket of the same name
        ("gs://gcs-bucket/anything/below", True),
    ],
)
def test_data_dir_must_lie_under_an_allowed_root(deployment, data_dir: str, allowed: bool) -> None:
    policy = deployment("conn", "/data/prep, s3://team-bucket/imagenet/, gs://gcs-bucket")
    assert policy.place_allowed(data_dir) is allowed
    if allowed:
        policy.check_data_dir(data_dir)
    else:
        with pytest.raises(NotAllowedError, match="allowed_data_roots"):
            policy.check_data_dir(data_dir)


def test_a_symlink_out_of_a_root_does_not_count_as_inside(deployment, tmp_path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    policy = deployment("", str(root))
    assert policy.place_allowed(str(root / "inside"))
    assert not policy.place_allowed(str(root / "escape" / "data"))


def test_without_roots_any_place_is_allowed(deployment) -> None:
    policy = deployment()
    assert policy.place_allowed("/anywhere") and policy.place_allowed("s3://any/where")


def test_a_malformed_root_is_a_clear_error(deployment) -> None:
    with pytest.raises(NotAllowedError, match=r"allowed_data_roots.*relative"):
        deployment("", "relative")


@pytest.fixture
def sources(monkeypatch: pytest.MonkeyPatch):
    def configure(prefixes: str, dag_places: tuple[str, ...] = ()) -> Policy:
        monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_CONN_IDS", "conn")
        monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_SOURCES", prefixes)
        return Policy.load(dag_places=dag_places)

    return configure


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("https://mirror.example.com/imagenet/train.tar", True),
        ("https://MIRROR.example.com:443/imagenet/a/b.tar?sig=1", True),
        ("https://mirror.example.com/imagenet", True),
        ("https://mirror.example.com/imagenet2/train.tar", False),  # the path by whole segments
        ("https://mirror.example.com/imagenet/../etc/passwd", False),  # dot segments resolved first
        ("https://mirror.example.com/imagenet/%2e%2e/etc", False),  # ... and their encoded spelling
        ("http://mirror.example.com/imagenet/train.tar", False),  # another scheme
        ("https://mirror.example.com:8443/imagenet/train.tar", False),  # another port
        ("https://mirror.example.com.evil.org/imagenet/train.tar", False),  # a look-alike host
        ("https://mirror.example.com@evil.org/imagenet/train.tar", False),  # userinfo: the host is after @
        ("https://evil.org\\@mirror.example.com/imagenet/train.tar", False),  # the client reads evil.org
        ("/data/imagenet/train.tar", True),
        ("file:///data/imagenet/val.tar", True),
        ("/data/imagenet/../secrets/x", False),
        ("/data/imagenet2/x", False),
        ("s3://team/imagenet/train.tar", True),
        ("s3://conn@team/imagenet/train.tar", True),
        ("s3://conn@team/other/train.tar", False),
        ("gs://team/imagenet/train.tar", False),  # another store
        ("ftp://mirror.example.com/imagenet/x", False),
    ],
)
def test_sources_must_lie_under_allowed_sources(sources, source: str, allowed: bool) -> None:
    policy = sources("https://mirror.example.com/imagenet/, /data/imagenet, s3://team/imagenet")
    if allowed:
        policy.check_source(source, "train_source")
        if source.startswith("http"):
            policy.check_url(source, "train_source")  # as a redirect hop to it would be
    else:
        with pytest.raises(NotAllowedError) as err:
            policy.check_source(source, "train_source")
        assert "train_source" in str(err.value)
        assert "mirror.example.com" not in str(err.value) and "/data/imagenet" not in str(err.value)


def test_without_allowed_sources_only_metadata_addresses_and_ambient_buckets_are_refused(sources) -> None:
    policy = sources("")
    for ok in ("http://127.0.0.1:8080/x.tar", "https://10.0.0.5/x.tar", "/anywhere/x.tar", "s3://conn@b/x"):
        policy.check_source(ok, "val_source")
    for bad in ("http://169.254.169.254/latest/", "http://[fe80::a]/x", "http://0.0.0.0/x", "http://[::]/x"):
        with pytest.raises(NotAllowedError, match="link-local"):
            policy.check_source(bad, "val_source")
    with pytest.raises(NotAllowedError, match=r"val_source.*allowed_sources"):
        policy.check_source("s3://bucket/x.tar", "val_source")  # the worker's own identity
    policy.check_source("s3://bucket/x.tar", "val_source", storage_conn_id="conn")


def test_the_dag_names_sources_literally(sources) -> None:
    policy = sources("https://mirror.example.com/", dag_places=("/opt/copy/val.tar", "{{ params.x }}"))
    policy.check_source("/opt/copy/val.tar", "val_source")
    with pytest.raises(NotAllowedError):
        policy.check_source("/opt/copy/other.tar", "val_source")
    assert dag_places(["/a", "{{ params.b }}", " ", None, "s3://c/d"]) == ("/a", "s3://c/d")


@pytest.mark.parametrize(
    "prefix", ["relative/path", "s3://conn@bucket/x", "ftp://host/x", "https://h/%2e%2e/x"]
)
def test_a_malformed_allowed_source_is_a_clear_error(sources, prefix: str) -> None:
    with pytest.raises(NotAllowedError, match="allowed_sources"):
        sources(prefix)


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_a_bucket_without_a_connection_needs_a_listed_or_dag_named_prefix(
    sources, monkeypatch, scheme
) -> None:
    """The worker's own identity (instance role, AWS_* variables, GCE default credentials) is borrowed
    only for prefixes the deployment lists or the DAG's code names; with a connection, as before."""
    policy = sources("")
    with pytest.raises(NotAllowedError, match=r"data_dir.*own cloud identity.*allowed_data_roots"):
        policy.check_data_dir(f"{scheme}://team/prep")
    policy.check_data_dir(f"{scheme}://conn@team/prep")
    policy.check_data_dir(f"{scheme}://team/prep", storage_conn_id="conn")
    Policy.load(dag_places=[f"{scheme}://team/prep"]).check_data_dir(f"{scheme}://team/prep/run1")
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_DATA_ROOTS", f"{scheme}://team/prep")
    Policy.load().check_data_dir(f"{scheme}://team/prep/run1")
    monkeypatch.setenv("AIRFLOW__RESNET_PREP__ALLOWED_SOURCES", f"{scheme}://team/imagenet")
    Policy.load().check_source(f"{scheme}://team/imagenet/train.tar", "train_source")
    with pytest.raises(NotAllowedError, match="train_source"):
        Policy.load().check_source(f"{scheme}://team/prep/train.tar", "train_source")
