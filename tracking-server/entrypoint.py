"""Prepare the tracking server's stores, then become `mlflow server`.

Order matters: the database must accept connections before its schema can be migrated, and the bucket
must exist before the first artifact upload. Each wait retries with backoff instead of sleeping a fixed
time, so a restart of any backend is survived without a human.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

WAIT_SECONDS = float(os.environ.get("MLFLOW_BOOTSTRAP_TIMEOUT", "120"))
T = TypeVar("T")


def log(message: str) -> None:
    print(f"[tracking-server] {message}", flush=True)


def env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        sys.exit(f"[tracking-server] error: {name} is not set")
    return value


class FatalError(Exception):
    """A failure that waiting will not fix."""


def retry(what: str, attempt: Callable[[], T]) -> T:
    deadline, delay = time.monotonic() + WAIT_SECONDS, 0.5
    while True:
        try:
            return attempt()
        except FatalError as error:
            sys.exit(f"[tracking-server] error: {what}: {error}")
        except Exception as error:  # psycopg2 and botocore raise many types for "not there yet"
            reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            if time.monotonic() + delay > deadline:
                sys.exit(f"[tracking-server] error: {what} failed for {WAIT_SECONDS:.0f} s ({reason})")
            log(f"{what}: not ready ({reason}), retrying in {delay:.1f} s")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def backend_store_uri() -> str:
    # psycopg2 named explicitly: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed.
    user, password = quote(env("POSTGRES_USER"), safe=""), quote(env("POSTGRES_PASSWORD"), safe="")
    host, port = os.environ.get("POSTGRES_HOST", "postgres"), os.environ.get("POSTGRES_PORT", "5432")
    return f"postgresql+psycopg2://{user}:{password}@{host}:{port}/{quote(env('POSTGRES_DB'), safe='')}"


def wait_for_database(uri: str) -> None:
    import sqlalchemy

    def connect() -> None:
        engine = sqlalchemy.create_engine(uri, pool_pre_ping=True)
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT 1"))
        except sqlalchemy.exc.OperationalError as error:
            if "password authentication failed" in str(error):
                # Postgres keeps the password of the volume's first start; retrying cannot help.
                raise FatalError(
                    "password authentication failed: the postgres-data volume was created with another "
                    "POSTGRES_PASSWORD (set that one in .env, or ALTER ROLE inside the database)"
                ) from error
            raise
        finally:
            engine.dispose()

    retry("connecting to Postgres", connect)


def ensure_bucket(bucket: str) -> None:
    import boto3
    from botocore.exceptions import ClientError

    s3 = boto3.client("s3", endpoint_url=env("MLFLOW_S3_ENDPOINT_URL"))

    def create_if_missing() -> None:
        try:
            s3.head_bucket(Bucket=bucket)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
            s3.create_bucket(Bucket=bucket)
            log(f"created bucket {bucket}")

    retry(f"checking bucket {bucket}", create_if_missing)


AUTH_REQUIRED = ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")


def auth_mode() -> str:
    mode = os.environ.get("MLFLOW_AUTH", "none") or "none"
    if mode not in ("none", "basic"):
        sys.exit(f"[tracking-server] error: MLFLOW_AUTH={mode!r}; expected 'none' or 'basic'")
    if mode == "basic":
        missing = [name for name in AUTH_REQUIRED if not os.environ.get(name)]
        if missing:
            # No defaults on purpose: a stack with auth "on" and a guessable password is worse than none.
            sys.exit(f"[tracking-server] error: MLFLOW_AUTH=basic needs {', '.join(missing)} (set in .env)")
    return mode


def prepare_basic_auth(uri: str) -> None:
    """Users and permissions live in their own database next to the tracking data, created on first start."""
    import sqlalchemy

    auth_db = os.environ.get("MLFLOW_AUTH_DB", "mlflow_auth")
    engine = sqlalchemy.create_engine(uri, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        exists = connection.execute(
            sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": auth_db}
        )
        if exists.scalar() is None:
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{auth_db}"'))
            log(f"created database {auth_db} for users and permissions")
    engine.dispose()
    config = Path(tempfile.mkdtemp(prefix="mlflow-auth-")) / "basic_auth.ini"
    auth_uri = uri.rsplit("/", 1)[0] + "/" + quote(auth_db, safe="")
    # READ by default: a new user sees everything and changes nothing until granted more.
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {auth_uri.replace('%', '%%')}\n"
        f"admin_username = {os.environ['MLFLOW_AUTH_ADMIN_USERNAME']}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    config.chmod(0o600)
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(config)

    from mlflow.environment_variables import _MLFLOW_AUTH_ADMIN_BOOTSTRAPPED, _MLFLOW_INTERNAL_GATEWAY_AUTH_TOKEN
    from mlflow.server.auth import bootstrap_admin_user, get_flask_server_secret_key

    # What `mlflow server --app-name basic-auth` does before forking workers; our app name is another one.
    get_flask_server_secret_key()
    bootstrap_admin_user()
    os.environ[_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED.name] = "true"
    os.environ[_MLFLOW_INTERNAL_GATEWAY_AUTH_TOKEN.name] = secrets.token_hex(32)


def size_connection_pool(uri: str, mode: str) -> None:
    """Give each store's SQLAlchemy pool room for every request thread to nest a second session.

    Unless set by hand: pool_size = overflow = MLFLOW_REQUEST_THREADS (see mlflow_stack_server for why
    twice the threads). Warns when the workers could open more connections than Postgres accepts.
    """
    import sqlalchemy

    threads = int(os.environ.get("MLFLOW_REQUEST_THREADS", "8"))
    workers = int(os.environ.get("MLFLOW_WORKERS", "2"))
    os.environ.setdefault("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", str(threads))
    os.environ.setdefault("MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", str(threads))
    pool_size = int(os.environ["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"])
    # Per worker: the tracking and registry stores (and auth's) each keep pool_size idle connections,
    # and at most two per request thread are in use at once.
    engines = 3 if mode == "basic" else 2
    needed = workers * (2 * threads + pool_size * (engines - 1))
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as connection:
            allowed = int(connection.execute(sqlalchemy.text("SHOW max_connections")).scalar_one())
            reserved = int(connection.execute(sqlalchemy.text("SHOW superuser_reserved_connections")).scalar_one())
    finally:
        engine.dispose()
    log(f"{workers} workers x {threads} request threads: up to {needed} of {allowed - reserved} connections")
    if needed > allowed - reserved:
        log(
            f"warning: raise POSTGRES_MAX_CONNECTIONS above {needed + reserved} or lower MLFLOW_WORKERS / "
            "MLFLOW_REQUEST_THREADS; under load requests would fail with 'too many clients'"
        )


def main() -> None:
    started = time.monotonic()
    mode = auth_mode()
    uri = backend_store_uri()
    bucket = env("MLFLOW_ARTIFACTS_BUCKET")

    wait_for_database(uri)
    log(f"database reachable after {time.monotonic() - started:.1f} s")
    # A no-op when the schema is current; after an MLflow upgrade the server refuses to start until it has run.
    subprocess.run(["mlflow", "db", "upgrade", uri], check=True, stdout=subprocess.DEVNULL)
    log(f"schema up to date after {time.monotonic() - started:.1f} s")
    ensure_bucket(bucket)
    log(f"bucket {bucket} ready after {time.monotonic() - started:.1f} s")
    size_connection_pool(uri, mode)
    if mode == "basic":
        prepare_basic_auth(uri)
        log(f"basic auth ready after {time.monotonic() - started:.1f} s")
    log(f"starting mlflow server (auth: {mode})")

    command = [
        "mlflow",
        "server",
        "--host",
        "0.0.0.0",
        "--port",
        os.environ.get("MLFLOW_SERVER_PORT", "5000"),
        "--workers",
        os.environ.get("MLFLOW_WORKERS", "2"),
        # Proxied artifacts: clients upload and download through this server and need no S3 credentials.
        "--serve-artifacts",
        "--artifacts-destination",
        f"s3://{bucket}/",
        # MLflow's app, wrapped so that clients are never sent to the internal S3 endpoint (see the module).
        "--app-name",
        "proxied-artifacts-basic-auth" if mode == "basic" else "proxied-artifacts",
        *sys.argv[1:],
    ]
    # Through the environment, not argv: the URI holds the database password and argv is visible in `ps`.
    os.environ["MLFLOW_BACKEND_STORE_URI"] = uri
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
