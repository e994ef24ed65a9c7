"""Live: the chart on an external Postgres that speaks TLS, with basic auth (issue 23, items 3 and 7).

A Postgres with a certificate from a test CA stands in for a managed database. The chart gets the backend URI
`...?sslmode=verify-full&sslrootcert=/etc/pg-ca/ca.crt` from a Secret and the CA through
trackingServer.extraVolumes / extraVolumeMounts (a Secret volume). Shown here:
- derived auth database: prepare creates `mlflow_auth` beside the tracking database and the server logs users
  in from it, over TLS verified against the CA (the old `rsplit("/")` dropped the query, so this URI broke);
- explicit auth database: with auth.databaseUriSecret and a database role without CREATEDB, prepare creates no
  database and bootstraps the admin into the one given;
- every connection the stack holds is encrypted (pg_stat_ssl).
MinIO is the chart's bundled one. Needs the tracking-server image; about 2 minutes.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from mlflow_stack_server import stack_tls
from tests.chart.chart import ci_values, render
from tests.chart_live.pods import PREFIX, Pods, docker, split_image

TRACKING_SERVER_IMAGE = os.environ.get("TRACKING_SERVER_IMAGE", "mlflow-stack/tracking-server:3.17.2")
DATABASE_HOST = f"{PREFIX}-tls-postgres"
CA_MOUNT = "/etc/pg-ca"
ADMIN = ("admin", secrets.token_hex(12))
PASSWORDS = {"mlflow": secrets.token_hex(12), "limited": secrets.token_hex(12)}
TLS = f"sslmode=verify-full&sslrootcert={CA_MOUNT}/ca.crt"


def _certificates(folder: Path) -> None:
    """A CA and a server certificate for DATABASE_HOST, as a managed database's provider would give, made by the
    stack's own certificate functions (stack_tls), with a CA name of their own."""
    ca_key, ca = stack_tls.create_ca("chart-live test CA")
    key, server = stack_tls.issue_server_certificate(ca_key, ca, (DATABASE_HOST,))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(stack_tls.private_key_pem(key))
    for path in folder.iterdir():
        path.chmod(0o644)


INIT_SQL = """
CREATE ROLE mlflow LOGIN CREATEDB PASSWORD '{mlflow}';
CREATE DATABASE mlflow OWNER mlflow;
-- A managed database's usual grant: no CREATEDB, the databases made by the operator.
CREATE ROLE limited LOGIN NOCREATEDB PASSWORD '{limited}';
CREATE DATABASE limited_tracking OWNER limited;
CREATE DATABASE limited_users OWNER limited;
"""


def psql(sql: str) -> str:
    result = docker("exec", DATABASE_HOST, "psql", "-U", "postgres", "-d", "postgres", "-At", "-c", sql)
    return result.stdout.strip()


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("pg-tls")
    _certificates(folder / "certs")
    (folder / "init.sql").write_text(INIT_SQL.format(**PASSWORDS))
    (folder / "init.sql").chmod(0o644)
    pods = Pods([], {})
    pods.create_network()
    # The key must belong to the server's user and be private: copied in place before Postgres starts.
    start = (
        "cp /certs/server.crt /certs/server.key /var/lib/postgresql/ && chown postgres /var/lib/postgresql/server.* "
        "&& chmod 600 /var/lib/postgresql/server.key && exec docker-entrypoint.sh postgres -c ssl=on "
        "-c ssl_cert_file=/var/lib/postgresql/server.crt -c ssl_key_file=/var/lib/postgresql/server.key"
    )
    docker(
        "run", "-d", "--name", DATABASE_HOST, "--network", pods.network, "-e", "POSTGRES_PASSWORD=" + secrets.token_hex(8),
        "-v", f"{folder / 'certs'}:/certs:ro", "-v", f"{folder / 'init.sql'}:/docker-entrypoint-initdb.d/init.sql:ro",
        "--entrypoint", "sh", "postgres:16-bookworm", "-c", start,
    )  # fmt: skip
    try:
        yield folder
    finally:
        if os.environ.get("KEEP_CHART_PODS") != "1":
            pods.remove_all()


def _stack(folder: Path, role: str, database: str, extra: list[str], secrets_extra: dict[str, Any]) -> Pods:
    repository, tag = split_image(TRACKING_SERVER_IMAGE)
    manifests = render(
        ci_values("external-postgres-s3"),
        set_values=[
            f"images.trackingServer.repository={repository}",
            f"images.trackingServer.tag={tag}",
            "trackingServer.replicas=1",
            "trackingServer.hpa.enabled=false",
            "s3.bundled=true",
            "s3.existingSecret=mlflow-s3",
            "auth.enabled=true",
            "auth.existingSecret=mlflow-auth",
            "auth.clientSecret=mlflow-client",
            'trackingServer.extraVolumes=[{"name": "pg-ca", "secret": {"secretName": "pg-ca"}}]',
            f'trackingServer.extraVolumeMounts=[{{"name": "pg-ca", "mountPath": "{CA_MOUNT}", "readOnly": true}}]',
            *extra,
        ],
    )
    uri = f"postgresql+psycopg2://{role}:{PASSWORDS[role]}@{DATABASE_HOST}:5432/{database}?{TLS}"
    return Pods(
        manifests,
        {
            "mlflow-database": {"uri": uri},
            "mlflow-s3": {
                "AWS_ACCESS_KEY_ID": "mlflow" + secrets.token_hex(4),
                "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
            },
            "mlflow-auth": {
                "admin-username": ADMIN[0],
                "admin-password": ADMIN[1],
                "flask-secret-key": secrets.token_hex(32),
            },
            "mlflow-client": {"username": "trainer", "password": secrets.token_hex(12)},
            "pg-ca": {"ca.crt": (folder / "certs" / "ca.crt").read_text()},
            **secrets_extra,
        },
    )


def _stop(pods: Pods) -> None:
    """Remove one stack's containers, so the next one's Service names resolve to its own pods only."""
    for thread in pods.threads:
        thread.join(timeout=60)
    if pods.started:
        docker("rm", "-f", *pods.started, check=False)


def _serve(pods: Pods, suffix: str) -> str:
    pods.run(pods.workload("StatefulSet", "minio"), suffix=suffix)
    deployment = pods.workload("Deployment", "tracking")
    name = pods.run(deployment, suffix=suffix)
    server: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    pods.wait_ready(name, server, timeout=300)
    assert pods.init_attempts[name][-1] == 0, pods.init_logs(name)
    return name


def _login(pods: Pods, name: str, auth: tuple[str, str]) -> int:
    host = pods.workload("Service", "tracking")["metadata"]["name"]
    response = requests.get(
        f"http://{pods.ip(name)}:5000/api/2.0/mlflow/experiments/search",
        params={"max_results": 1},
        headers={"Host": f"{host}:5000"},
        auth=auth,
        timeout=20,
    )
    return response.status_code


def test_auth_database_beside_the_tracking_one_keeps_sslmode_and_sslrootcert(database: Path) -> None:
    pods = _stack(database, "mlflow", "mlflow", [], {})
    try:
        _check_derived(pods, _serve(pods, "-derived"))
    finally:
        _stop(pods)


def _check_derived(pods: Pods, name: str) -> None:
    assert _login(pods, name, ADMIN) == 200
    assert _login(pods, name, (ADMIN[0], "wrong")) == 401
    assert psql("SELECT 1 FROM pg_database WHERE datname = 'mlflow_auth'") == "1"
    users = docker(
        "exec", DATABASE_HOST, "psql", "-U", "postgres", "-d", "mlflow_auth", "-At", "-c", "SELECT username FROM users ORDER BY 1"
    ).stdout.split()  # fmt: skip
    assert users == sorted([ADMIN[0], "trainer"])
    # Every connection of the server (tracking store, registry, auth) is TLS.
    encrypted = psql(
        "SELECT DISTINCT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'mlflow'"
    )
    assert encrypted == "t"
    databases = psql(
        "SELECT string_agg(DISTINCT datname, ',' ORDER BY datname) FROM pg_stat_activity WHERE usename = 'mlflow'"
    )
    assert set(databases.split(",")) >= {"mlflow", "mlflow_auth"}


def test_an_explicit_auth_database_needs_no_createdb(database: Path) -> None:
    auth_uri = f"postgresql+psycopg2://limited:{PASSWORDS['limited']}@{DATABASE_HOST}:5432/limited_users?{TLS}"
    pods = _stack(
        database,
        "limited",
        "limited_tracking",
        ["auth.databaseUriSecret=mlflow-auth-db"],
        {"mlflow-auth-db": {"uri": auth_uri}},
    )
    try:
        _check_explicit(pods, _serve(pods, "-explicit"))
    finally:
        _stop(pods)


def _check_explicit(pods: Pods, name: str) -> None:
    assert _login(pods, name, ADMIN) == 200
    assert psql("SELECT rolcreatedb FROM pg_roles WHERE rolname = 'limited'") == "f"
    users = docker(
        "exec", DATABASE_HOST, "psql", "-U", "postgres", "-d", "limited_users", "-At", "-c", "SELECT username FROM users ORDER BY 1"
    ).stdout.split()  # fmt: skip
    assert users == sorted([ADMIN[0], "trainer"])
    assert (
        psql("SELECT DISTINCT ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'limited'")
        == "t"
    )
