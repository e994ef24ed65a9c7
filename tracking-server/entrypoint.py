"""Prepare the tracking server's stores, then become `mlflow server`.

Order matters: the database must accept connections before its schema can be migrated, and the bucket
must exist before the first artifact upload. Each wait retries with backoff instead of sleeping a fixed
time, so a restart of any backend is survived without a human.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
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


def main() -> None:
    started = time.monotonic()
    uri = backend_store_uri()
    bucket = env("MLFLOW_ARTIFACTS_BUCKET")

    wait_for_database(uri)
    log(f"database reachable after {time.monotonic() - started:.1f} s")
    # A no-op when the schema is current; after an MLflow upgrade the server refuses to start until it has run.
    subprocess.run(["mlflow", "db", "upgrade", uri], check=True, stdout=subprocess.DEVNULL)
    log(f"schema up to date after {time.monotonic() - started:.1f} s")
    ensure_bucket(bucket)
    log(f"bucket {bucket} ready after {time.monotonic() - started:.1f} s; starting mlflow server")

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
        "proxied-artifacts",
        *sys.argv[1:],
    ]
    # Through the environment, not argv: the URI holds the database password and argv is visible in `ps`.
    os.environ["MLFLOW_BACKEND_STORE_URI"] = uri
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
