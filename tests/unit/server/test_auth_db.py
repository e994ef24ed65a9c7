"""The auth database's URI: the backend's with only the database changed, or the one given (issue 23, item 7)."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from mlflow_stack_server.auth_db import auth_database, create_database_statement

TLS = (
    "postgresql+psycopg2://mlflow:p%40ss%2Fw@db.example.com:5432/mlflow?sslmode=verify-full&sslrootcert=/etc/pg/ca.crt"
)


def test_query_options_survive_and_only_the_database_changes() -> None:
    auth = auth_database(TLS, "mlflow_auth")
    url, backend = make_url(auth.uri), make_url(TLS)
    assert url.database == "mlflow_auth"
    # The old rsplit("/") kept "…/etc/pg/" + the name: the query and the certificate's path were lost.
    assert dict(url.query) == {"sslmode": "verify-full", "sslrootcert": "/etc/pg/ca.crt"}
    assert (url.drivername, url.username, url.password, url.host, url.port) == (
        backend.drivername,
        backend.username,
        "p@ss/w",
        "db.example.com",
        5432,
    )
    assert auth.create == "mlflow_auth"


def test_sslmode_require_alone_is_kept() -> None:
    auth = auth_database("postgresql+psycopg2://u:p@h:5432/mlflow?sslmode=require", "users")
    assert auth.uri == "postgresql+psycopg2://u:p@h:5432/users?sslmode=require"


def test_a_unix_socket_host_in_the_query_is_kept() -> None:
    auth = auth_database("postgresql+psycopg2://u:p@/mlflow?host=/var/run/postgresql", "mlflow_auth")
    assert make_url(auth.uri).query == {"host": "/var/run/postgresql"}
    assert make_url(auth.uri).database == "mlflow_auth"


def test_an_explicit_uri_is_used_as_given_and_nothing_is_created() -> None:
    explicit = "postgresql+psycopg2://auth:x@other:5432/users_db?sslmode=require"
    auth = auth_database(TLS, "mlflow_auth", explicit)
    assert auth.uri == explicit
    assert auth.create is None


@pytest.mark.parametrize(
    ("backend", "name", "message"),
    [
        ("postgresql+psycopg2://u:p@h:5432", "mlflow_auth", "names no database"),
        (TLS, "", "name is empty"),
    ],
)
def test_impossible_combinations_fail_clearly(backend: str, name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        auth_database(backend, name)


def test_create_database_quotes_the_name() -> None:
    assert create_database_statement("mlflow_auth") == 'CREATE DATABASE "mlflow_auth"'
    assert create_database_statement('a"b') == 'CREATE DATABASE "a""b"'
    with pytest.raises(ValueError, match="invalid database name"):
        create_database_statement("")
