"""MLFLOW_AUTH=oidc: the stack's side of mlflow-oidc-auth 10.2.0 (users, groups, grants, tokens, sessions).

The plugin reads its own configuration from the environment (mlflow_oidc_auth/config.py). The stack keeps its
knobs in Settings, checks them once, and hands the plugin's names down to the server process only
(`plugin_environment`): prepare and the other commands never see the client secret.

What the plugin does not check at start, the entrypoint does before serving, so that a wrong setting is one
line at start instead of a login page that fails later:
- the issuer answers its discovery document (the plugin registers its client without fetching it: with the
  provider down it starts and every sign-in answers 500);
- the client secret is right: a dummy authorization code sent to the token endpoint with the client's
  credentials is refused as `invalid_grant` (400) when they are right, `invalid_client` (401) when they are
  wrong (RFC 6749, section 5.2).

The plugin migrates its database at the first use of its store in every process, without a lock: two workers
starting on an empty database race (one dies on `alembic_version`'s unique key). prepare runs the migration
once under the stack's migration lock; serve refuses to start on a database that is not at head.
"""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mlflow_stack_server.auth_db import AuthDatabase, auth_database
from mlflow_stack_server.settings import Settings

DISCOVERY_TIMEOUT_SECONDS = 5
# Grants (and denials) are remembered this long by each worker: a removed or added grant applies on every
# worker of every replica within it (the plugin's default is 30 s).
PERMISSION_CACHE_TTL_SECONDS = 1
# A code no provider ever issued: the token endpoint answers it invalid_grant, after authenticating the client.
DUMMY_CODE = "mlflow-stack-client-secret-check"


class ProviderRefusedError(Exception):
    """The provider answered, and its answer says the configuration is wrong: waiting will not fix it."""


def users_database(settings: Settings) -> AuthDatabase:
    """The plugin's database (MLFLOW_OIDC_DB) beside the tracking one, same server, credentials and options."""
    return auth_database(settings.backend_store_uri, settings.oidc_database, settings.oidc_database_uri_given)


def system_ca_file() -> str | None:
    """The operating system's CA bundle (Debian: /etc/ssl/certs/ca-certificates.crt), else certifi's."""
    default = ssl.get_default_verify_paths().openssl_cafile
    if default and Path(default).is_file():
        return default
    try:
        import certifi

        return str(certifi.where())
    except ImportError:
        return None


def ca_bundle(settings: Settings) -> str | None:
    """With MLFLOW_OIDC_CA_FILE: a private bundle of the system's CAs plus that file (the plugin verifies TLS
    with truststore, which reads SSL_CERT_FILE); without it None (the system's store alone)."""
    if not settings.oidc_ca_file:
        return None
    bundle = Path(tempfile.mkdtemp(prefix="mlflow-oidc-ca-")) / "ca-bundle.pem"
    with bundle.open("wb") as out:
        system = system_ca_file()
        if system:
            with open(system, "rb") as source:
                shutil.copyfileobj(source, out)
            out.write(b"\n")
        out.write(Path(settings.oidc_ca_file).read_bytes())
    bundle.chmod(0o644)
    return str(bundle)


def plugin_environment(settings: Settings, bundle: str | None) -> dict[str, str]:
    """The plugin's settings (names from mlflow_oidc_auth/config.py, 10.2.0) for the server process."""
    environment = {
        "OIDC_DISCOVERY_URL": settings.oidc_discovery_url,
        "OIDC_ISSUER": settings.oidc_issuer,
        "OIDC_CLIENT_ID": settings.oidc_client_id,
        "OIDC_CLIENT_SECRET": settings.oidc_client_secret,
        "OIDC_REDIRECT_URI": settings.oidc_redirect_uri,
        "OIDC_SCOPE": settings.oidc_scopes,
        "OIDC_GROUPS_ATTRIBUTE": settings.oidc_groups_claim,
        "OIDC_ADMIN_GROUP_NAME": settings.oidc_admin_group,
        "OIDC_GROUP_NAME": ",".join(settings.oidc_user_groups),
        "OIDC_USERNAME_FIELD": settings.oidc_username_claim,
        # Signs the session cookie: the same on every worker and replica (the plugin picks a random one else).
        "SECRET_KEY": settings.flask_secret_key,
        "OIDC_USERS_DB_URI": users_database(settings).uri,
        "OIDC_DB_POOL_SIZE": str(settings.pool_size),
        "OIDC_DB_POOL_MAX_OVERFLOW": str(settings.max_overflow),
        "PERMISSION_CACHE_TTL_SECONDS": str(PERMISSION_CACHE_TTL_SECONDS),
        # Deny by default: a user sees an experiment or a model only through a grant (the plugin's default,
        # set explicitly so that an environment variable left over cannot open it).
        "DEFAULT_MLFLOW_PERMISSION": "NO_PERMISSIONS",
        "SESSION_COOKIE_SECURE": "true" if settings.public_https else "false",
        "TRUSTED_PROXIES": ",".join(settings.oidc_trusted_proxies),
        # Configuration from this environment only (no .env file of the working directory, no cloud secrets).
        "CONFIG_PROVIDERS": "env",
    }
    if bundle:
        environment["SSL_CERT_FILE"] = bundle
        environment["REQUESTS_CA_BUNDLE"] = bundle
    return environment


def migrate_users_database(settings: Settings, log: Any) -> None:
    """Create MLFLOW_OIDC_DB if missing and bring it to the plugin's head, under the stack's migration lock."""
    import sqlalchemy
    from mlflow_oidc_auth.db import utils as plugin_db

    from mlflow_stack_server.auth_db import create_database_statement
    from mlflow_stack_server.migration_lock import migration_lock

    database = users_database(settings)
    # The plugin's config module (imported by its migrations) warns about a missing session key otherwise.
    os.environ.setdefault("SECRET_KEY", settings.flask_secret_key)
    os.environ.setdefault("CONFIG_PROVIDERS", "env")
    engine = sqlalchemy.create_engine(settings.backend_store_uri, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection, migration_lock(connection):
            if (
                database.create
                and not connection.execute(
                    sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": database.create}
                ).scalar()
            ):
                connection.execute(sqlalchemy.text(create_database_statement(database.create)))
                log(f"created database {database.create} for OIDC users, grants, tokens and sessions")
            current, head = users_schema_revisions(database.uri)
            if current == head:
                log(f"OIDC schema already at {head}")
                return
            target = sqlalchemy.create_engine(database.uri)
            try:
                plugin_db.migrate(target, "head")
            finally:
                target.dispose()
            log(f"OIDC schema migrated from {current or 'an empty database'} to {head}")
    finally:
        engine.dispose()


def users_schema_revisions(uri: str) -> tuple[str | None, str]:
    """(the plugin database's revision or None, the plugin's head)."""
    import sqlalchemy
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from mlflow_oidc_auth.config import config
    from mlflow_oidc_auth.db import utils as plugin_db

    head = ScriptDirectory.from_config(plugin_db._get_alembic_config(uri)).get_current_head()
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(
                connection, opts={"version_table": config.OIDC_ALEMBIC_VERSION_TABLE}
            ).get_current_revision()
    finally:
        engine.dispose()
    assert head is not None
    return current, head


def fetch_discovery(settings: Settings, bundle: str | None) -> Mapping[str, Any]:
    """The provider's discovery document, checked; a connection failure propagates (retried by the caller)."""
    import requests

    url = settings.oidc_discovery_url
    try:
        response = requests.get(url, timeout=DISCOVERY_TIMEOUT_SECONDS, verify=bundle or True)
    except requests.exceptions.SSLError as error:
        reason = str(error.args[0] if error.args else error).split("(Caused by")[-1].strip(" ()")[:200]
        raise ProviderRefusedError(
            f"TLS to {url} failed ({reason}): if the provider's certificate comes from a private CA, "
            "set MLFLOW_OIDC_CA_FILE to that CA (PEM)"
        ) from error
    if response.status_code >= 500:
        response.raise_for_status()  # a provider still starting: retried
    if response.status_code != 200:
        raise ProviderRefusedError(f"{url} answered HTTP {response.status_code}; is MLFLOW_OIDC_ISSUER right?")
    try:
        document = response.json()
    except ValueError:
        raise ProviderRefusedError(
            f"{url} is not a discovery document (not JSON); is MLFLOW_OIDC_ISSUER right?"
        ) from None
    if not isinstance(document, dict) or not document.get("token_endpoint"):
        raise ProviderRefusedError(f"{url} has no token_endpoint; is MLFLOW_OIDC_ISSUER right?")
    issuer = str(document.get("issuer", "")).rstrip("/")
    if issuer != settings.oidc_issuer:
        # ID tokens carry this issuer; the plugin would refuse every one of them at sign-in.
        raise ProviderRefusedError(
            f"the provider calls itself {issuer!r}, not MLFLOW_OIDC_ISSUER={settings.oidc_issuer!r}"
        )
    if settings.tls:
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            endpoint = str(document.get(key, ""))
            if endpoint and not endpoint.startswith("https://"):
                raise ProviderRefusedError(
                    f"MLFLOW_TLS=on needs https:// endpoints; the provider's {key} is {endpoint}"
                )
    return document


def check_client_secret(settings: Settings, discovery: Mapping[str, Any], bundle: str | None) -> str:
    """Exchange a dummy code: ProviderRefusedError when the provider refuses the client's credentials. Returns what
    the provider said, for the log. Basic authentication (client_secret_basic), as the plugin's client uses."""
    import requests

    credentials = f"{quote(settings.oidc_client_id, safe='')}:{quote(settings.oidc_client_secret, safe='')}"
    response = requests.post(
        str(discovery["token_endpoint"]),
        data={
            "grant_type": "authorization_code",
            "code": DUMMY_CODE,
            "redirect_uri": settings.oidc_redirect_uri,
            "code_verifier": "x" * 43,
        },
        headers={"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()},
        timeout=DISCOVERY_TIMEOUT_SECONDS,
        verify=bundle or True,
    )
    if response.status_code >= 500:
        response.raise_for_status()
    try:
        error = str(response.json().get("error", ""))
    except (ValueError, AttributeError):
        error = ""
    if error in ("invalid_client", "unauthorized_client") or response.status_code == 401:
        raise ProviderRefusedError(
            f"the provider refused client {settings.oidc_client_id!r} ({response.status_code} {error or 'no error code'}): "
            "MLFLOW_OIDC_CLIENT_ID or MLFLOW_OIDC_CLIENT_SECRET(_FILE) is wrong"
        )
    return f"{response.status_code} {error or 'no error code'}"
