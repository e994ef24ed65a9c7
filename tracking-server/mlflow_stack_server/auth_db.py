"""Where MLflow's basic auth keeps its users and permissions, and whether prepare must create that database.

Pure functions (no connection is made here) so that every URI shape can be checked without a database.

By default the users live in a database of their own (MLFLOW_AUTH_DB, `mlflow_auth`) on the same server as
the tracking data: its URI is the backend store's with only the database name changed, so the driver, the
credentials and every query option (`?sslmode=verify-full&sslrootcert=/etc/ssl/pg/ca.crt`, a unix socket's
`host=`) carry over. Creating that database needs CREATEDB, which managed databases often refuse; an
explicit MLFLOW_AUTH_DATABASE_URI names a database the operator created, and prepare then creates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import make_url


@dataclass(frozen=True)
class AuthDatabase:
    uri: str
    # The database prepare must create when missing (CREATE DATABASE), or None when it was given.
    create: str | None


def auth_database(backend_store_uri: str, database_name: str, explicit_uri: str = "") -> AuthDatabase:
    """The auth database: MLFLOW_AUTH_DATABASE_URI as given, else the backend's URI on `database_name`."""
    if explicit_uri:
        return AuthDatabase(uri=explicit_uri, create=None)
    if not database_name:
        raise ValueError("the auth database name is empty (MLFLOW_AUTH_DB)")
    backend = make_url(backend_store_uri)
    if not backend.database:
        raise ValueError("the backend store URI names no database, so the auth database cannot sit beside it")
    uri = backend.set(database=database_name).render_as_string(hide_password=False)
    return AuthDatabase(uri=uri, create=database_name)


def create_database_statement(name: str) -> str:
    """CREATE DATABASE with the name quoted as a Postgres identifier (a double quote inside is doubled)."""
    if not name or "\x00" in name:
        raise ValueError(f"invalid database name {name!r}")
    return 'CREATE DATABASE "' + name.replace('"', '""') + '"'
