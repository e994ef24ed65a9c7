"""The tracking server's two steps: `prepare` (once per deployment) and `serve` (any number of replicas).

    tracking-server-entrypoint prepare   wait for Postgres, migrate the schema (under an advisory lock),
                                         make sure the bucket exists, bootstrap the auth database (basic) or
                                         migrate the OIDC database (oidc); exit 0
    tracking-server-entrypoint [serve]   wait for Postgres, check the schema is current, size the pools, with
                                         oidc check the provider and the client secret, become `mlflow
                                         server` (arguments starting with `-` are passed on)

Why split: N replicas that each migrated, created the bucket and bootstrapped the admin at start would race
on all three. Compose runs `prepare` as a one-shot service the servers wait for; Kubernetes as a hook Job.
Each wait retries with backoff instead of sleeping a fixed time, so a restart of any backend is survived.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import tenacity

from mlflow_stack_server import oidc_auth
from mlflow_stack_server.auth_changes import OIDC_UNWATCHED_COLUMNS, prepare_change_notifications
from mlflow_stack_server.auth_db import AuthDatabase, auth_database, create_database_statement
from mlflow_stack_server.console import Console
from mlflow_stack_server.fast_path_guard import fast_path_state
from mlflow_stack_server.migration_lock import migration_lock
from mlflow_stack_server.oidc_login_cache import RECHECK_CONNECTIONS
from mlflow_stack_server.settings import Settings

T = TypeVar("T")
console = Console("[tracking-server]")
log = console.log
FIRST_RETRY_SECONDS = 0.5  # doubled after each failed attempt, up to
LONGEST_RETRY_SECONDS = 5.0


class FatalError(Exception):
    """A failure that waiting will not fix."""


def _reason(error: BaseException | None) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def retry(what: str, attempt: Callable[[], T], wait_seconds: float) -> T:
    """`attempt()` until it succeeds, with backoff, for up to `wait_seconds`; a FatalError or the deadline ends the
    process with one line. Any other exception is "not there yet": psycopg2 and botocore raise many types for it."""

    def report(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        pause = state.next_action.sleep if state.next_action else 0.0
        log(f"{what}: not ready ({_reason(error)}), retrying in {pause:.1f} s")

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_not_exception_type(FatalError),
        wait=tenacity.wait_exponential(multiplier=FIRST_RETRY_SECONDS, max=LONGEST_RETRY_SECONDS),
        # Give up before a pause that would end past the deadline, not after it.
        stop=tenacity.stop_before_delay(wait_seconds),
        before_sleep=report,
        reraise=True,
    )
    try:
        return retrying(attempt)
    except FatalError as error:
        console.fail(f"{what}: {error}")
    except Exception as error:
        console.fail(f"{what} failed for {wait_seconds:.0f} s ({_reason(error)})")


def wait_for_database(settings: Settings) -> None:
    import sqlalchemy

    def connect() -> None:
        engine = sqlalchemy.create_engine(settings.backend_store_uri, pool_pre_ping=True)
        try:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT 1"))
        except sqlalchemy.exc.OperationalError as error:
            if "password authentication failed" in str(error):
                # Postgres keeps the password of the volume's first start; retrying cannot help. The usual cause
                # in compose: the `secrets` volume was deleted and a new password generated next to old data.
                raise FatalError(
                    "Postgres refused the password: the postgres-data volume was created with another one. "
                    "Put the old password in .env as POSTGRES_PASSWORD, or give the database the current one "
                    "with `scripts/secrets.sh reset-postgres-password`, or start empty with `docker compose "
                    "down -v` (README, Troubleshooting)"
                ) from error
            raise
        finally:
            engine.dispose()

    retry("connecting to Postgres", connect, settings.wait_seconds)


def schema_revisions(uri: str) -> tuple[str | None, str]:
    """(the database's alembic revision or None when empty, the revision this MLflow expects)."""
    import sqlalchemy
    from mlflow.store.db.utils import _get_latest_schema_revision, _get_schema_version

    engine = sqlalchemy.create_engine(uri)
    try:
        return _get_schema_version(engine), _get_latest_schema_revision()
    finally:
        engine.dispose()


def migrate_once(settings: Settings) -> None:
    """`mlflow db upgrade` under a Postgres advisory lock: concurrent prepares queue, the first migrates,
    the others find the schema current and change nothing."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(settings.backend_store_uri)
    try:
        with engine.connect() as lock_holder:
            waited = time.monotonic()
            with migration_lock(lock_holder):
                log(f"migration lock held after {time.monotonic() - waited:.1f} s of waiting")
                current, head = schema_revisions(settings.backend_store_uri)
                if current == head:
                    log(f"schema already at {head}: nothing to migrate")
                    return
                log(f"migrating schema from {current or 'an empty database'} to {head}")
                from mlflow.store.db.utils import _initialize_tables, _is_empty_database, _upgrade_db

                # What `mlflow db upgrade` does, in this process so that the lock above covers it.
                target = sqlalchemy.create_engine(settings.backend_store_uri)
                try:
                    if _is_empty_database(target):
                        _initialize_tables(target)
                    else:
                        _upgrade_db(target)
                finally:
                    target.dispose()
                log(f"schema migrated to {head}")
    finally:
        engine.dispose()


def check_schema_is_current(settings: Settings) -> None:
    current, head = schema_revisions(settings.backend_store_uri)
    if current != head:
        console.fail(
            f"the database schema is at {current or 'nothing (empty database)'}, this MLflow needs {head}: "
            "run the prepare step first (compose: `docker compose up` runs tracking-server-prepare; "
            "by hand: tracking-server-entrypoint prepare)"
        )


# What S3 answers when the keys themselves are wrong: no wait fixes these.
REFUSED_CREDENTIALS = {
    "InvalidAccessKeyId": "the store knows no such access key",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
    "AccessDenied": "the key may not use this bucket",
    "InvalidToken": "the session token is not valid",
    "ExpiredToken": "the session token has expired",
}
MISSING_BUCKET_CODES = ("404", "NoSuchBucket", "NotFound")
# serve's look at the bucket: one short attempt, so that a store that is down or paused delays no start.
SERVE_CHECK_SECONDS = 5


def _s3_error_code(error: BaseException) -> str:
    from botocore.exceptions import ClientError

    return str(error.response.get("Error", {}).get("Code", "")) if isinstance(error, ClientError) else ""


def credentials_refused(s3: Any, error: BaseException, settings: Settings) -> str | None:
    """The one line to stop on when `error`, HeadBucket's, says the store refuses the server's S3 keys; else None
    (unreachable, 5xx, a missing bucket: for the caller).

    A 403 on HeadBucket carries no code (a HEAD answer has no body): one GET asks the store for its reason."""
    from botocore.exceptions import ClientError

    code = _s3_error_code(error)
    if code not in ("403", "Forbidden", *REFUSED_CREDENTIALS):
        return None
    if code not in REFUSED_CREDENTIALS:
        try:
            s3.list_objects_v2(Bucket=settings.bucket, MaxKeys=1)
        except ClientError as listing:
            code = _s3_error_code(listing)
        except Exception:
            pass  # the 403 stands, without a reason
    reason = f"{code}: {REFUSED_CREDENTIALS[code]}" if code in REFUSED_CREDENTIALS else "403 Forbidden"
    return (
        f"the object store at {settings.s3_endpoint_url or 'AWS S3'} refused the tracking server's S3 credentials "
        f"on bucket {settings.bucket} ({reason}): AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or their _FILE forms) "
        "must be a key the store accepts; in compose MinIO reads minio_root_user / minio_root_password only when "
        "it starts, so after a change restart both: scripts/secrets.sh rotate minio_root_password "
        "(docs: Troubleshooting)"
    )


def _s3_client(settings: Settings, config: Any = None) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url or None, config=config)


def ensure_bucket(settings: Settings) -> None:
    s3 = _s3_client(settings)
    bucket = settings.bucket

    def create_if_missing() -> None:
        try:
            s3.head_bucket(Bucket=bucket)
        except Exception as error:
            refused = credentials_refused(s3, error, settings)
            if refused:
                raise FatalError(refused) from error
            if _s3_error_code(error) not in MISSING_BUCKET_CODES:
                raise
            s3.create_bucket(Bucket=bucket)
            log(f"created bucket {bucket}")

    retry(f"checking bucket {bucket}", create_if_missing, settings.wait_seconds)


def check_bucket_before_serving(settings: Settings) -> None:
    """One quick look at the bucket before serving. Keys the store refuses end the start in one line: a server
    that can neither store nor read an artifact must not report healthy (`docker compose restart tracking-server`
    runs no prepare). A store that is down, paused or slow gets a log line only: everything but artifacts works
    without it, and it may come back."""
    from botocore.config import Config

    seconds = SERVE_CHECK_SECONDS
    s3 = _s3_client(
        settings, Config(connect_timeout=seconds, read_timeout=seconds, retries={"max_attempts": 1, "mode": "standard"})
    )
    try:
        s3.head_bucket(Bucket=settings.bucket)
    except Exception as error:
        refused = credentials_refused(s3, error, settings)
        if refused:
            console.fail(f"checking bucket {settings.bucket}: {refused}")
        log(f"bucket {settings.bucket} not checked ({_reason(error)}): serving; artifacts fail until the store answers")


def auth_database_uri(settings: Settings) -> AuthDatabase:
    return auth_database(settings.backend_store_uri, settings.auth_database, settings.auth_database_uri_given)


def write_auth_config(settings: Settings) -> None:
    config = Path(tempfile.mkdtemp(prefix="mlflow-auth-")) / "basic_auth.ini"
    # READ by default: a new user sees everything and changes nothing until granted more.
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {auth_database_uri(settings).uri.replace('%', '%%')}\n"
        f"admin_username = {settings.admin[0]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # MLflow checks the password's scrypt hash on every request: ~0.1 s of CPU on an idle core, 0.3 s
        # measured under load here, 25x an API call's own cost. Its cache (off by default) remembers a
        # verified login per worker, keyed by an HMAC with a per-process key; a password change or deletion
        # clears it on the worker that handles it, and the others within these seconds.
        f"auth_cache_ttl_seconds = {settings.auth_cache_seconds}\n"
    )
    config.chmod(0o600)
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(config)


def prepare_basic_auth(settings: Settings) -> None:
    """Users and permissions live in their own database next to the tracking data; the admin is created once."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(settings.backend_store_uri, isolation_level="AUTOCOMMIT")
    try:
        # Same lock as the migration: two prepares must not both create the database or the admin.
        with engine.connect() as connection, migration_lock(connection):
            # None when MLFLOW_AUTH_DATABASE_URI names a database made beforehand (no CREATEDB needed).
            create = auth_database_uri(settings).create
            if (
                create
                and not connection.execute(
                    sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": create}
                ).scalar()
            ):
                connection.execute(sqlalchemy.text(create_database_statement(create)))
                log(f"created database {create} for users and permissions")
            write_auth_config(settings)
            from mlflow.server.auth import bootstrap_admin_user

            # Migrates the auth schema and creates the admin if missing (what `mlflow server --app-name
            # basic-auth` does before forking workers); a no-op on the next run.
            bootstrap_admin_user()
            ensure_client_user(settings)
            notify_auth_changes(auth_database_uri(settings).uri)
    finally:
        engine.dispose()


def notify_auth_changes(uri: str, unwatched_columns: Mapping[str, frozenset[str]] | None = None) -> None:
    """After the auth migrations (MLflow's basic-auth ones, or mlflow-oidc-auth's; a table they add is watched too):
    the triggers through which every worker learns of a change of users and permissions (auth_changes.py). Postgres
    only: elsewhere nothing listens."""
    import sqlalchemy

    if sqlalchemy.engine.make_url(uri).get_backend_name() != "postgresql":
        log(
            "auth database is not Postgres: no change notifications (basic: fast-path allowances remembered for at most 1 s; oidc: none remembered)"
        )
        return
    tables = prepare_change_notifications(uri, unwatched_columns)
    log(f"auth change notifications on {len(tables)} tables: {', '.join(tables)}")


def ensure_client_user(settings: Settings) -> None:
    """The login trainers and the model server use (MLFLOW_AUTH_CLIENT_USERNAME/PASSWORD), created once."""
    username, password = settings.client_username, settings.client_password
    if not (username and password):
        return
    from mlflow.server.auth import store

    if not store.has_user(username):
        store.create_user(username, password)
        log(f"created the client user {username}")


def size_connection_pool(settings: Settings) -> None:
    """Give each store's SQLAlchemy pool room for every request thread to nest a second session.

    Unless set by hand: pool_size = overflow = MLFLOW_REQUEST_THREADS (see mlflow_stack_server for why
    twice the threads). Warns when the workers could open more connections than Postgres accepts.
    """
    import sqlalchemy

    threads, workers, pool_size = settings.request_threads, settings.workers, settings.pool_size
    # MLflow's stores read them in each worker: handed down through the environment.
    os.environ["MLFLOW_SQLALCHEMYSTORE_POOL_SIZE"] = str(pool_size)
    os.environ["MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW"] = str(settings.max_overflow)
    # Per worker: the tracking and registry stores (and auth's) each keep pool_size idle connections,
    # and at most two per request thread are in use at once; with oidc, the login re-checks keep a few more
    # (oidc_login_cache.py).
    engines = 2 if settings.auth == "none" else 3
    # With logins each worker also keeps one session listening for changes of the auth database (auth_changes).
    listeners = 1 if settings.auth in ("basic", "oidc") else 0
    rechecks = RECHECK_CONNECTIONS if settings.auth == "oidc" else 0
    needed = workers * (2 * threads + pool_size * (engines - 1) + listeners + rechecks)
    engine = sqlalchemy.create_engine(settings.backend_store_uri)
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


# `mlflow server --app-name`: the entry points of pyproject.toml, one per MLFLOW_AUTH.
APP_NAMES = {"none": "proxied-artifacts", "basic": "proxied-artifacts-basic-auth", "oidc": "proxied-artifacts-oidc"}
# serve's wait for the provider: short, a provider down for longer is a configuration to look at.
PROVIDER_WAIT_SECONDS = 30.0


def prepare_oidc_serving(settings: Settings) -> None:
    """Check the OIDC database, the provider and the client secret, then hand the plugin its settings."""
    current, head = oidc_auth.users_schema_revisions(oidc_auth.users_database(settings).uri)
    if current != head:
        console.fail(
            f"the OIDC database ({settings.oidc_database}) is at {current or 'nothing (empty)'}, the plugin needs "
            f"{head}: run the prepare step first (compose: tracking-server-prepare)"
        )
    bundle = oidc_auth.ca_bundle(settings)

    def discover() -> Any:
        try:
            return oidc_auth.fetch_discovery(settings, bundle)
        except oidc_auth.ProviderRefusedError as error:
            raise FatalError(str(error)) from error

    wait = min(settings.wait_seconds, PROVIDER_WAIT_SECONDS)
    discovery = retry(f"fetching {settings.oidc_discovery_url}", discover, wait)

    def check_secret() -> str:
        try:
            return oidc_auth.check_client_secret(settings, discovery, bundle)
        except oidc_auth.ProviderRefusedError as error:
            raise FatalError(str(error)) from error

    answer = retry("checking the OIDC client secret", check_secret, wait)
    log(f"OIDC provider {settings.oidc_issuer}: client {settings.oidc_client_id} accepted (dummy code: {answer})")
    os.environ.update(oidc_auth.plugin_environment(settings, bundle))
    log(f"OIDC redirect URI: {settings.oidc_redirect_uri}")


def prepare(settings: Settings) -> None:
    started = time.monotonic()
    settings.export_secrets()
    wait_for_database(settings)
    log(f"database reachable after {time.monotonic() - started:.1f} s")
    migrate_once(settings)
    ensure_bucket(settings)
    log(f"bucket {settings.bucket} ready after {time.monotonic() - started:.1f} s")
    if settings.auth == "basic":
        prepare_basic_auth(settings)
        log(f"basic auth ready after {time.monotonic() - started:.1f} s")
    if settings.auth == "oidc":
        oidc_auth.migrate_users_database(settings, log)
        notify_auth_changes(oidc_auth.users_database(settings).uri, OIDC_UNWATCHED_COLUMNS)
        log(f"OIDC database ready after {time.monotonic() - started:.1f} s")
    log(f"prepared in {time.monotonic() - started:.1f} s")


def serve(settings: Settings, server_args: list[str]) -> NoReturn:
    started = time.monotonic()
    settings.export_secrets()
    wait_for_database(settings)
    log(f"database reachable after {time.monotonic() - started:.1f} s")
    check_schema_is_current(settings)
    check_bucket_before_serving(settings)
    size_connection_pool(settings)
    if settings.auth == "basic":
        write_auth_config(settings)
        from mlflow.environment_variables import _MLFLOW_AUTH_ADMIN_BOOTSTRAPPED, _MLFLOW_INTERNAL_GATEWAY_AUTH_TOKEN

        # The admin exists (prepare made it): the workers must not each try to create it again.
        os.environ[_MLFLOW_AUTH_ADMIN_BOOTSTRAPPED.name] = "true"
        os.environ[_MLFLOW_INTERNAL_GATEWAY_AUTH_TOKEN.name] = secrets.token_hex(32)
    if settings.auth == "oidc":
        prepare_oidc_serving(settings)
    metrics_args = prepare_metrics_dir(settings)
    if settings.public_names:
        # MLflow's DNS-rebinding guard reads it in each worker.
        os.environ["MLFLOW_SERVER_ALLOWED_HOSTS"] = settings.allowed_hosts
        log(f"allowed hosts: {settings.allowed_hosts}")
        # and its cross-origin guard (the UI's POSTs carry the public name as their Origin).
        os.environ["MLFLOW_SERVER_CORS_ALLOWED_ORIGINS"] = settings.allowed_origins
        log(f"allowed origins: {settings.allowed_origins}")
    log(fast_path_state(settings.fast_store, auth_mode=settings.auth).describe())
    log(f"starting mlflow server (auth: {settings.auth}, metrics: {settings.metrics})")
    command = [
        "mlflow",
        "server",
        "--host",
        "0.0.0.0",
        "--port",
        str(settings.port),
        "--workers",
        str(settings.workers),
        # Proxied artifacts: clients upload and download through this server and need no S3 credentials.
        "--serve-artifacts",
        "--artifacts-destination",
        settings.artifacts_destination,
        # MLflow's app, wrapped so that clients are never sent to the internal S3 endpoint (see the module).
        "--app-name",
        APP_NAMES[settings.auth],
        *metrics_args,
        *server_args,
    ]
    os.execvp(command[0], command)


def prepare_metrics_dir(settings: Settings) -> list[str]:
    """Prometheus multiprocess mode: each uvicorn worker writes its values into one shared, empty folder.

    Files left by a previous start would be summed in forever (their pids are gone), so the folder is
    emptied here, before any worker exists. PROMETHEUS_MULTIPROC_DIR must be in the environment before the
    workers import prometheus_client (it picks its value class at import): MLflow sets only the deprecated
    lower-case name, so set the upper-case one here as well.
    """
    if not settings.metrics:
        return []
    shutil.rmtree(settings.metrics_dir, ignore_errors=True)
    os.makedirs(settings.metrics_dir, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = settings.metrics_dir
    return ["--expose-prometheus", settings.metrics_dir]


def main(argv: list[str] | None = None) -> None:
    """Console script `tracking-server-entrypoint [prepare | serve] [mlflow server options]`."""
    argv = sys.argv[1:] if argv is None else argv
    step, rest = "serve", argv
    if argv and not argv[0].startswith("-"):
        step, rest = argv[0], argv[1:]
    if step not in ("prepare", "serve"):
        console.fail(f"unknown step {step!r}; expected 'prepare' or 'serve' (or mlflow server options starting with -)")
    settings = console.configured(Settings.from_environment)
    if step == "prepare":
        if rest:
            console.fail(f"prepare takes no arguments (got {' '.join(rest)})")
        prepare(settings)
    else:
        serve(settings, rest)
