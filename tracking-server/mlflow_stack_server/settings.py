"""Everything the tracking server's commands read from the environment: declared once, read once per process.

Each knob is one field of `Settings`, declared with its environment variable, default, section and a sentence
that says what it does (`knob()`); `reference()` lists them for the configuration page. Every command builds one
`Settings` at start (`Settings.from_environment()`) and passes it down; a uvicorn worker builds its own once, in
the app factory (proxied_artifacts.create_app). A bad value is a `SettingsError`: one line, non-zero exit.

Every secret may come as NAME (the value) or NAME_FILE (a path whose content is the value, trailing newline
stripped): compose mounts generated secret files, Kubernetes may use either a Secret in the environment or a
mounted Secret. The plain variable wins when both are set, so a value in `.env` or a Kubernetes secretKeyRef
overrides a file.

Importing this module is cheap and has no side effects (the docs build imports it on the host): the standard
library only, nothing read until `from_environment` is called.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

SERVER = "Server"
DATABASE = "Database"
ARTIFACTS = "Artifacts"
AUTH = "Auth and team mode"
FAST_PATH = "Fast path"
METRICS = "Metrics"
UI = "UI"
SECRETS_VOLUME = "Secrets"

MIB = 1024 * 1024
S3_MIN_PART_MIB = 5  # every part but the last must be at least 5 MiB (S3's multipart limits)
UI_WORKFLOWS = ("machine_learning", "genai")
# Names every generated certificate carries besides MLFLOW_PUBLIC_NAMES: a browser on the server host itself.
LOCAL_NAMES = ("localhost", "127.0.0.1")


class SettingsError(Exception):
    """A configuration mistake: reported in one line, waiting will not fix it."""


Parse = Callable[[str, str], Any]  # (variable name, raw non-empty text) -> value; raises SettingsError


@dataclass(frozen=True)
class Knob:
    env: str
    default: str  # as written in the environment; "" = unset
    description: str
    section: str
    parse: Parse
    secret: bool = False  # may be given as NAME_FILE instead

    def read(self, environ: Mapping[str, str]) -> Any:
        raw = read_secret(self.env, environ) if self.secret else environ.get(self.env, "").strip()
        return self.parse(self.env, raw or self.default)


def text(_name: str, raw: str) -> str:
    return raw


def whole_number(minimum: int) -> Parse:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r}; expected a whole number") from None
        if value < minimum:
            raise SettingsError(f"{name}={value}; expected at least {minimum}")
        return value

    return parse


def optional_whole_number(name: str, raw: str) -> int | None:
    return whole_number(1)(name, raw) if raw else None


def seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}; expected a number of seconds") from None
    if value <= 0:
        raise SettingsError(f"{name}={raw!r}; expected a positive number of seconds")
    return value


def seconds_up_to(most: float, why: str) -> Parse:
    """A number of seconds from 0 to `most`; `why`: what a larger one would break, for the error line."""

    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r}; expected a number of seconds") from None
        if not 0 <= value <= most:
            raise SettingsError(f"{name}={raw!r}; expected 0 to {most:g} seconds ({why})")
        return value

    return parse


def switch(name: str, raw: str) -> bool:
    value = raw.lower()
    if value in ("on", "true", "1"):
        return True
    if value in ("off", "false", "0"):
        return False
    raise SettingsError(f"{name}={raw!r}; expected 'on' or 'off'")


def one_of(*choices: str) -> Parse:
    def parse(name: str, raw: str) -> str:
        if raw not in choices:
            raise SettingsError(f"{name}={raw!r}; expected {' or '.join(repr(c) for c in choices)}")
        return raw

    return parse


def upload_part_bytes(name: str, raw: str) -> int:
    part_mib = whole_number(0)(name, raw)
    if part_mib < S3_MIN_PART_MIB:
        raise SettingsError(f"{name}={part_mib}; S3 parts must be at least {S3_MIN_PART_MIB} MiB")
    return part_mib * MIB


def ui_workflow(name: str, raw: str) -> str:
    if raw not in ("", *UI_WORKFLOWS):
        raise SettingsError(f"{name}={raw!r}; expected one of {UI_WORKFLOWS} or empty")
    return raw


def http_url(name: str, raw: str) -> str:
    if not raw:
        return ""
    parsed = urlparse(raw)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise SettingsError(f"{name}={raw!r}; expected an http:// or https:// URL")
    return raw.rstrip("/")


def path(_name: str, raw: str) -> Path:
    return Path(raw)


def names(_name: str, raw: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))


def knob(env: str, default: str, section: str, description: str, parse: Parse = text, secret: bool = False) -> Any:
    """A Settings field read from `env` (or `env`_FILE when `secret`); `default` is what an unset or empty one means."""
    declared = Knob(env, default, description, section, parse, secret)
    # A secret stays out of repr(): a settings object in a traceback or a log line must not print it.
    return field(default=parse(env, default), repr=not secret, metadata={"knob": declared})


def read_secret(name: str, environ: Mapping[str, str]) -> str:
    """NAME if set and non-empty, else the content of NAME_FILE, else ''."""
    value = environ.get(name, "")
    if value:
        return value
    path = environ.get(f"{name}_FILE", "")
    if not path:
        return ""
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as error:
        raise SettingsError(f"{name}_FILE={path} cannot be read ({error.strerror})") from error


@dataclass(frozen=True)
class Settings:
    # Server
    port: int = knob(
        "MLFLOW_SERVER_PORT", "5000", SERVER,
        "Port the tracking server listens on inside its container.",
        whole_number(1),
    )  # fmt: skip
    workers: int = knob(
        "MLFLOW_WORKERS", "2", SERVER,
        "Uvicorn worker processes of each tracking server.",
        whole_number(1),
    )  # fmt: skip
    request_threads: int = knob(
        "MLFLOW_REQUEST_THREADS", "8", SERVER,
        "Requests each worker runs at once (MLflow's handler threads); the rest wait in the event loop.",
        whole_number(1),
    )  # fmt: skip
    wait_seconds: float = knob(
        "MLFLOW_BOOTSTRAP_TIMEOUT", "120", SERVER,
        "Seconds prepare and serve keep retrying Postgres and the bucket before giving up.",
        seconds,
    )  # fmt: skip
    allowed_hosts_given: str = knob(
        "MLFLOW_SERVER_ALLOWED_HOSTS", "", SERVER,
        "Host headers MLflow accepts (comma-separated, `*` for any port); MLFLOW_PUBLIC_NAMES are added to it.",
    )  # fmt: skip
    allowed_origins_given: str = knob(
        "MLFLOW_SERVER_CORS_ALLOWED_ORIGINS", "", SERVER,
        "Origins whose browser POSTs MLflow accepts besides localhost (comma-separated, `*` wildcards); "
        "`https://` on every MLFLOW_PUBLIC_NAMES entry is added to it.",
    )  # fmt: skip
    # Database
    gc_tracking_uri: str = knob(
        "STACK_GC_TRACKING_URI", "", SERVER,
        "The tracking server `stack-gc` deletes artifacts through; unset: this container's own (the chart's gc "
        "CronJob names the Service).",
    )  # fmt: skip
    backend_store_uri_given: str = knob(
        "MLFLOW_BACKEND_STORE_URI", "", DATABASE,
        "The whole database URI; when set, the POSTGRES_* settings are not used.",
        secret=True,
    )  # fmt: skip
    postgres_user: str = knob(
        "POSTGRES_USER", "", DATABASE,
        "Postgres user of the tracking database.",
        secret=True,
    )  # fmt: skip
    postgres_password: str = knob(
        "POSTGRES_PASSWORD", "", DATABASE,
        "Postgres password of that user.",
        secret=True,
    )  # fmt: skip
    postgres_db: str = knob(
        "POSTGRES_DB", "", DATABASE,
        "Name of the tracking database.",
    )  # fmt: skip
    postgres_host: str = knob(
        "POSTGRES_HOST", "postgres", DATABASE,
        "Host name of the Postgres server.",
    )  # fmt: skip
    postgres_port: int = knob(
        "POSTGRES_PORT", "5432", DATABASE,
        "Port of the Postgres server.",
        whole_number(1),
    )  # fmt: skip
    pool_size_given: int | None = knob(
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE", "", DATABASE,
        "Connections each store keeps per worker (MLflow's setting); unset: MLFLOW_REQUEST_THREADS.",
        optional_whole_number,
    )  # fmt: skip
    max_overflow_given: int | None = knob(
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", "", DATABASE,
        "Extra connections each store may open per worker (MLflow's setting); unset: MLFLOW_REQUEST_THREADS.",
        optional_whole_number,
    )  # fmt: skip
    # Artifacts
    artifacts_bucket: str = knob(
        "MLFLOW_ARTIFACTS_BUCKET", "", ARTIFACTS,
        "S3 bucket the artifacts are stored in (created by prepare).",
    )  # fmt: skip
    artifacts_destination_given: str = knob(
        "MLFLOW_ARTIFACTS_DESTINATION", "", ARTIFACTS,
        "Full S3 URI of the artifact store (a prefix inside a bucket); overrides MLFLOW_ARTIFACTS_BUCKET.",
    )  # fmt: skip
    s3_endpoint_url: str = knob(
        "MLFLOW_S3_ENDPOINT_URL", "", ARTIFACTS,
        "S3 endpoint of the artifact store; empty: AWS S3.",
    )  # fmt: skip
    aws_access_key_id: str = knob(
        "AWS_ACCESS_KEY_ID", "", ARTIFACTS,
        "S3 access key of the tracking server.",
        secret=True,
    )  # fmt: skip
    aws_secret_access_key: str = knob(
        "AWS_SECRET_ACCESS_KEY", "", ARTIFACTS,
        "S3 secret key of the tracking server.",
        secret=True,
    )  # fmt: skip
    upload_part_bytes: int = knob(
        "MLFLOW_PROXY_UPLOAD_PART_MIB", "16", ARTIFACTS,
        "MiB per part when an upload is streamed on to S3 (at least 5); about 5 parts per upload are in memory.",
        upload_part_bytes,
    )  # fmt: skip
    # Auth and team mode
    auth: str = knob(
        "MLFLOW_AUTH", "none", AUTH,
        "`basic` turns on MLflow's users and permissions; `oidc`: sign-in through your OpenID Connect provider, "
        "groups mapped to permissions, tokens for machines (mlflow-oidc-auth); `none` leaves the server open.",
        one_of("none", "basic", "oidc"),
    )  # fmt: skip
    admin_username: str = knob(
        "MLFLOW_AUTH_ADMIN_USERNAME", "", AUTH,
        "User name of the admin created at first start (auth on).",
        secret=True,
    )  # fmt: skip
    admin_password: str = knob(
        "MLFLOW_AUTH_ADMIN_PASSWORD", "", AUTH,
        "Password of that admin (auth on).",
        secret=True,
    )  # fmt: skip
    flask_secret_key: str = knob(
        "MLFLOW_FLASK_SERVER_SECRET_KEY", "", AUTH,
        "Key that signs login sessions; the same on every worker and replica (auth on).",
        secret=True,
    )  # fmt: skip
    auth_cache_seconds: int = knob(
        "MLFLOW_AUTH_CACHE_SECONDS", "60", AUTH,
        "Seconds each worker remembers a verified login, re-checked against the user's row on every request, so "
        "a changed password, demotion or deleted user counts at the next one (0: hash the password every time).",
        whole_number(0),
    )  # fmt: skip
    auth_decision_cache_seconds: float = knob(
        "MLFLOW_AUTH_DECISION_CACHE_SECONDS", "60", AUTH,
        "Longest time each worker reuses the auth app's \"allowed\" for a fast-path run write (log-batch, "
        "set-tag, runs/update) with the same login, route and run: basic auth's (and the auth rows read for those "
        "and runs/create), and with oidc the plugin's for an access token sent as the basic-auth password (never "
        "past the token's expiry; sessions and bearer tokens are decided every time); "
        "refusals are never reused. With the auth database "
        "on Postgres every worker listens for its changes (triggers installed by prepare) and forgets what it "
        "remembers at any change, within milliseconds; while it is not listening it reuses nothing. On another "
        "database basic auth uses at most 1 s, oidc nothing. 0: decide every write.",
        seconds_up_to(3600, "remembered allowances beyond an hour save nothing more"),
    )  # fmt: skip
    auth_database: str = knob(
        "MLFLOW_AUTH_DB", "mlflow_auth", AUTH,
        "Database of users and permissions, next to the tracking database.",
    )  # fmt: skip
    auth_database_uri_given: str = knob(
        "MLFLOW_AUTH_DATABASE_URI", "", AUTH,
        "Full URI of a database made beforehand for users and permissions (no CREATEDB needed); unset: "
        "MLFLOW_AUTH_DB next to the tracking database, with the same query (sslmode, sslrootcert, ...).",
        secret=True,
    )  # fmt: skip
    client_username: str = knob(
        "MLFLOW_AUTH_CLIENT_USERNAME", "", AUTH,
        "A login prepare creates for trainers and the model server (auth on); unset: none.",
        secret=True,
    )  # fmt: skip
    client_password: str = knob(
        "MLFLOW_AUTH_CLIENT_PASSWORD", "", AUTH,
        "Password of that login.",
        secret=True,
    )  # fmt: skip
    oidc_issuer: str = knob(
        "MLFLOW_OIDC_ISSUER", "", AUTH,
        "Issuer URL of the OpenID Connect provider (MLFLOW_AUTH=oidc); its discovery document is this plus "
        "`/.well-known/openid-configuration`. Must be https:// in team mode.",
        http_url,
    )  # fmt: skip
    oidc_client_id: str = knob(
        "MLFLOW_OIDC_CLIENT_ID", "", AUTH,
        "Client id the provider registered for this server (MLFLOW_AUTH=oidc).",
    )  # fmt: skip
    oidc_client_secret: str = knob(
        "MLFLOW_OIDC_CLIENT_SECRET", "", AUTH,
        "That client's secret; checked against the provider's token endpoint at start.",
        secret=True,
    )  # fmt: skip
    oidc_redirect_uri_given: str = knob(
        "MLFLOW_OIDC_REDIRECT_URI", "", AUTH,
        "Where the provider sends the browser back (register it there); empty: "
        "`https://<first MLFLOW_PUBLIC_NAMES>:<MLFLOW_PUBLIC_PORT>/callback` in team mode.",
        http_url,
    )  # fmt: skip
    public_port: int = knob(
        "MLFLOW_PUBLIC_PORT", "443", AUTH,
        "Port clients reach the gateway on (team mode); used for the derived MLFLOW_OIDC_REDIRECT_URI.",
        whole_number(1),
    )  # fmt: skip
    oidc_groups_claim: str = knob(
        "MLFLOW_OIDC_GROUPS_CLAIM", "groups", AUTH,
        "Claim of the ID token that lists the user's groups.",
    )  # fmt: skip
    oidc_admin_group: str = knob(
        "MLFLOW_OIDC_ADMIN_GROUP", "mlflow-admins", AUTH,
        "Members of this provider group are MLflow admins (read at each sign-in).",
    )  # fmt: skip
    oidc_user_groups: tuple[str, ...] = knob(
        "MLFLOW_OIDC_USER_GROUPS", "mlflow", AUTH,
        "Provider groups (comma-separated) whose members may sign in at all; anyone else is refused at sign-in.",
        names,
    )  # fmt: skip
    oidc_scopes: str = knob(
        "MLFLOW_OIDC_SCOPES", "openid email profile groups", AUTH,
        "Scopes asked for at sign-in (space-separated); many providers release the groups claim only with `groups`.",
    )  # fmt: skip
    oidc_username_claim: str = knob(
        "MLFLOW_OIDC_USERNAME_CLAIM", "email", AUTH,
        "Claim that becomes the MLflow user name (grants name users by it).",
    )  # fmt: skip
    oidc_ca_file: str = knob(
        "MLFLOW_OIDC_CA_FILE", "", AUTH,
        "A CA bundle (PEM) trusted for the provider in addition to the system's; empty: the system's only.",
    )  # fmt: skip
    oidc_database: str = knob(
        "MLFLOW_OIDC_DB", "mlflow_oidc", AUTH,
        "Database of the OIDC mode's users, groups, grants, tokens and sessions, next to the tracking database.",
    )  # fmt: skip
    oidc_database_uri_given: str = knob(
        "MLFLOW_OIDC_DATABASE_URI", "", AUTH,
        "Full URI of a database made beforehand for the OIDC mode (no CREATEDB needed); unset: MLFLOW_OIDC_DB "
        "next to the tracking database, with the same query.",
        secret=True,
    )  # fmt: skip
    oidc_trusted_proxies: tuple[str, ...] = knob(
        "MLFLOW_OIDC_TRUSTED_PROXIES", "", AUTH,
        "Addresses or CIDR ranges (comma-separated) of HTTP proxies whose X-Forwarded-* headers the OIDC mode "
        "believes; empty: none (the stack's gateway passes TCP through and adds none).",
        names,
    )  # fmt: skip
    tls: bool = knob(
        "MLFLOW_TLS", "off", AUTH,
        "`on`: team mode, the gateway serves HTTPS with the certificate below or one from the stack's CA.",
        switch,
    )  # fmt: skip
    public_names: tuple[str, ...] = knob(
        "MLFLOW_PUBLIC_NAMES", "", AUTH,
        "Names and addresses clients reach the stack by (comma-separated): in the certificate and the allowed hosts.",
        names,
    )  # fmt: skip
    tls_cert: str = knob(
        "MLFLOW_TLS_CERT", "", AUTH,
        "Host path of your own server certificate chain (PEM); empty: the stack's CA issues one.",
    )  # fmt: skip
    tls_key: str = knob(
        "MLFLOW_TLS_KEY", "", AUTH,
        "Host path of that certificate's unencrypted private key (PEM).",
    )  # fmt: skip
    tls_dir: Path = knob(
        "STACK_TLS_DIR", "/run/tls", AUTH,
        "Where stack-tls keeps the CA and the server certificate (the `tls` volume).",
        path,
    )  # fmt: skip
    tls_given_dir: Path = knob(
        "STACK_TLS_GIVEN_DIR", "/run/tls-given", AUTH,
        "Where stack-tls finds a given certificate (cert.pem, key.pem).",
        path,
    )  # fmt: skip
    tls_export_dir: Path = knob(
        "STACK_TLS_EXPORT_DIR", "/export", AUTH,
        "Where stack-tls writes ca.crt for clients (the project's certs/ folder).",
        path,
    )  # fmt: skip
    gateway_uid: int = knob(
        "STACK_TLS_GATEWAY_UID", "10002", AUTH,
        "Uid of the gateway, the only reader of the server key.",
        whole_number(0),
    )  # fmt: skip
    # Fast path
    fast_store: bool = knob(
        "MLFLOW_FAST_STORE", "on", FAST_PATH,
        "The stack's faster store and HTTP path for log-batch, set-tag and run updates; `off`: MLflow's own.",
        switch,
    )  # fmt: skip
    # Metrics
    metrics: bool = knob(
        "MLFLOW_METRICS", "on", METRICS,
        "Prometheus /metrics on the server's port, summed over every worker.",
        switch,
    )  # fmt: skip
    metrics_dir: str = knob(
        "MLFLOW_METRICS_DIR", "/tmp/mlflow-metrics", METRICS,
        "Folder the workers write their metric values to; emptied at each start.",
    )  # fmt: skip
    # UI
    ui_workflow: str = knob(
        "MLFLOW_UI_WORKFLOW", "", UI,
        "View the UI opens in a browser with no saved choice: `machine_learning` or `genai`; empty: MLflow's (GenAI).",
        ui_workflow,
    )  # fmt: skip
    # Secrets
    secrets_dir: Path = knob(
        "STACK_SECRETS_DIR", "/run/secrets", SECRETS_VOLUME,
        "Where stack-secrets keeps the generated secrets (the `secrets` volume).",
        path,
    )  # fmt: skip
    minio_root_user: str = knob(
        "MINIO_ROOT_USER", "", SECRETS_VOLUME,
        "S3 (MinIO) root user; empty: `mlflow`, kept in the secrets volume.",
    )  # fmt: skip
    minio_root_password: str = knob(
        "MINIO_ROOT_PASSWORD", "", SECRETS_VOLUME,
        "S3 (MinIO) root password; empty: generated once, kept in the secrets volume.",
    )  # fmt: skip

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, *, server: bool = True) -> Settings:
        """Every knob, parsed and checked. `server`: also what the tracking server's commands need (a database,
        a bucket, the auth secrets); stack-secrets and stack-tls run without them."""
        environ = os.environ if environ is None else environ
        settings = cls(**{spec.name: _knob(spec).read(environ) for spec in dataclasses.fields(cls)})
        settings._check_team_mode()
        if server:
            settings._check_server()
        return settings

    def _check_server(self) -> None:
        if self.auth == "basic":
            missing = [env for env, value in self.secrets.items() if env in AUTH_REQUIRED and not value]
            if missing:
                # No defaults on purpose: a stack with auth "on" and a guessable password is worse than none.
                raise SettingsError(f"MLFLOW_AUTH=basic needs {', '.join(missing)} (or {missing[0]}_FILE)")
        if self.auth == "oidc":
            self._check_oidc()
        if not self.artifacts_destination:
            raise SettingsError("set MLFLOW_ARTIFACTS_BUCKET or MLFLOW_ARTIFACTS_DESTINATION")
        if not self.backend_store_uri_given:
            for env, value in (("POSTGRES_USER", self.postgres_user), ("POSTGRES_PASSWORD", self.postgres_password),
                               ("POSTGRES_DB", self.postgres_db)):  # fmt: skip
                if not value:
                    raise SettingsError(f"{env} is not set (nor {env}_FILE, nor MLFLOW_BACKEND_STORE_URI)")

    def _check_oidc(self) -> None:
        """What the server needs for MLFLOW_AUTH=oidc (prepare and serve; the tls service has no client secret)."""
        required = (
            ("MLFLOW_OIDC_ISSUER", self.oidc_issuer),
            ("MLFLOW_OIDC_CLIENT_ID", self.oidc_client_id),
            ("MLFLOW_OIDC_CLIENT_SECRET", self.oidc_client_secret),
            ("MLFLOW_FLASK_SERVER_SECRET_KEY", self.flask_secret_key),
        )
        missing = [env for env, value in required if not value]
        if missing:
            raise SettingsError(
                f"MLFLOW_AUTH=oidc needs {', '.join(missing)}"
                + (" (or MLFLOW_OIDC_CLIENT_SECRET_FILE)" if "MLFLOW_OIDC_CLIENT_SECRET" in missing else "")
            )
        if not self.oidc_admin_group:
            raise SettingsError("MLFLOW_OIDC_ADMIN_GROUP is empty: name the provider group whose members are admins")
        if not self.oidc_user_groups:
            raise SettingsError("MLFLOW_OIDC_USER_GROUPS is empty: name the provider groups allowed to sign in")
        if not self.oidc_redirect_uri:
            raise SettingsError(
                "MLFLOW_AUTH=oidc needs MLFLOW_OIDC_REDIRECT_URI (or MLFLOW_TLS=on with MLFLOW_PUBLIC_NAMES to "
                "derive it): the URL of /callback as browsers reach this server"
            )
        if self.oidc_ca_file and not Path(self.oidc_ca_file).is_file():
            raise SettingsError(f"MLFLOW_OIDC_CA_FILE={self.oidc_ca_file} is not a readable file")

    def _check_team_mode(self) -> None:
        if not self.tls:
            return
        if self.auth not in ("basic", "oidc"):
            # Refuse rather than switch auth on behind the user's back: the trainers and the model server need
            # logins too (MLFLOW_TRACKING_USERNAME/PASSWORD), and a silent change would leave them failing.
            raise SettingsError(
                f"MLFLOW_TLS=on needs MLFLOW_AUTH=basic or oidc (it is {self.auth!r}): a server reachable from the "
                "network must ask for logins; set MLFLOW_AUTH=basic in .env (README, Team mode)"
            )
        if self.auth == "oidc":
            # Passwords never cross the network here, but the sign-in's code and the provider's keys do.
            for env, url in (("MLFLOW_OIDC_ISSUER", self.oidc_issuer),
                             ("MLFLOW_OIDC_REDIRECT_URI", self.oidc_redirect_uri_given)):  # fmt: skip
                if url and not url.startswith("https://"):
                    raise SettingsError(f"MLFLOW_TLS=on needs an https:// {env} (it is {url})")
        if not self.public_names:
            raise SettingsError(
                "MLFLOW_TLS=on needs MLFLOW_PUBLIC_NAMES: the names and addresses clients reach this host by, "
                "e.g. MLFLOW_PUBLIC_NAMES=mlflow.team.lan,10.0.0.5"
            )
        for name in self.public_names:
            if not is_ip(name) and not all(part.replace("-", "").isalnum() for part in name.split(".") if part):
                raise SettingsError(f"MLFLOW_PUBLIC_NAMES: {name!r} is neither a DNS name nor an IP address")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("set both MLFLOW_TLS_CERT and MLFLOW_TLS_KEY (file paths), or neither")

    @property
    def secrets(self) -> Mapping[str, str]:
        """Every secret knob by its variable name, resolved (NAME or NAME_FILE)."""
        return {_knob(spec).env: getattr(self, spec.name) for spec in dataclasses.fields(self) if _knob(spec).secret}

    @property
    def backend_store_uri(self) -> str:
        if self.backend_store_uri_given:
            return self.backend_store_uri_given
        user, password = quote(self.postgres_user, safe=""), quote(self.postgres_password, safe="")
        # psycopg2 named explicitly: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed.
        return (
            f"postgresql+psycopg2://{user}:{password}@{self.postgres_host}:{self.postgres_port}/"
            f"{quote(self.postgres_db, safe='')}"
        )

    @property
    def artifacts_destination(self) -> str:
        if self.artifacts_destination_given:
            return self.artifacts_destination_given
        return f"s3://{self.artifacts_bucket}/" if self.artifacts_bucket else ""

    @property
    def bucket(self) -> str:
        return urlparse(self.artifacts_destination).netloc

    @property
    def admin(self) -> tuple[str, str]:
        return self.admin_username, self.admin_password

    @property
    def pool_size(self) -> int:
        """Each store's SQLAlchemy pool: room for every request thread to nest a second session (entrypoint)."""
        return self.request_threads if self.pool_size_given is None else self.pool_size_given

    @property
    def max_overflow(self) -> int:
        return self.request_threads if self.max_overflow_given is None else self.max_overflow_given

    @property
    def allowed_hosts(self) -> str:
        """MLFLOW_SERVER_ALLOWED_HOSTS plus every MLFLOW_PUBLIC_NAMES entry with any port.

        Team mode's one knob: the names in the server certificate are the Host headers MLflow accepts, so a
        client that passes TLS verification is never refused by the DNS-rebinding guard, and no other name is.
        """
        hosts = [h.strip() for h in self.allowed_hosts_given.split(",") if h.strip()]
        for name in self.public_names:
            hosts += [name, f"{name}:*"]
        return ",".join(dict.fromkeys(hosts))

    @property
    def allowed_origins(self) -> str:
        """MLFLOW_SERVER_CORS_ALLOWED_ORIGINS plus `https://` on every MLFLOW_PUBLIC_NAMES entry, any port.

        MLflow refuses a state-changing request whose Origin is not localhost unless this lists it
        (mlflow/server/security_utils.py, should_block_cors_request), and browsers send Origin on the UI's own
        POSTs (runs/search, logged-models/search): without the public names the UI served in team mode could
        not list runs. No other origin is added, so another site's page still cannot write with a user's cookie.
        """
        origins = [o.strip() for o in self.allowed_origins_given.split(",") if o.strip()]
        for name in self.public_names:
            host = f"[{name}]" if ":" in name else name
            origins += [f"https://{host}", f"https://{host}:*"]
        return ",".join(dict.fromkeys(origins))

    @property
    def oidc_redirect_uri(self) -> str:
        """MLFLOW_OIDC_REDIRECT_URI, else /callback on the first public name (team mode), else ''."""
        if self.oidc_redirect_uri_given:
            return self.oidc_redirect_uri_given
        if not (self.tls and self.public_names):
            return ""
        name = self.public_names[0]
        host = f"[{name}]" if ":" in name else name
        port = "" if self.public_port == 443 else f":{self.public_port}"
        return f"https://{host}{port}/callback"

    @property
    def public_https(self) -> bool:
        """Clients reach this server over HTTPS: team mode (the gateway), or TLS ended before it (a Kubernetes
        Ingress) as an https:// MLFLOW_OIDC_REDIRECT_URI says."""
        return self.tls or self.oidc_redirect_uri.startswith("https://")

    @property
    def oidc_discovery_url(self) -> str:
        return f"{self.oidc_issuer}/.well-known/openid-configuration"

    @property
    def certificate_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.public_names, *LOCAL_NAMES)))

    @property
    def cert_given(self) -> bool:
        return bool(self.tls_cert)

    def export_secrets(self) -> None:
        """Put the resolved secrets where boto3 and MLflow's auth app read them: the process environment."""
        for name, value in self.secrets.items():
            if value:
                os.environ[name] = value
        # Through the environment, not argv: the URI holds the database password and argv is visible in `ps`.
        os.environ["MLFLOW_BACKEND_STORE_URI"] = self.backend_store_uri


AUTH_REQUIRED = ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")


def _knob(spec: dataclasses.Field[Any]) -> Knob:
    declared = spec.metadata.get("knob")
    assert isinstance(declared, Knob), f"Settings.{spec.name} is declared without knob()"
    return declared


def knobs() -> list[Knob]:
    return [_knob(spec) for spec in dataclasses.fields(Settings)]


def reference() -> list[dict[str, str]]:
    """Every knob as {env, default, description, section}, in declaration order (for docs/configuration.md)."""
    return [
        {
            "env": declared.env,
            "default": declared.default,
            "description": declared.description + (f" May be given as {declared.env}_FILE." if declared.secret else ""),
            "section": declared.section,
        }
        for declared in knobs()
    ]


def fast_store_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """MLFLOW_FAST_STORE alone, for the store plugin, which MLflow calls with no settings of ours in hand."""
    declared = next(k for k in knobs() if k.env == "MLFLOW_FAST_STORE")
    return bool(declared.read(os.environ if environ is None else environ))


def handed_down(name: str, environ: Mapping[str, str] | None = None) -> str:
    """A variable `mlflow server` or the entrypoint hands each worker (PROMETHEUS_MULTIPROC_DIR, MLflow's internal
    `_MLFLOW_SERVER_*` ones): not a knob, nobody sets it by hand; read here so that the environment is read in
    one module. Callers name MLflow's variables by MLflow's own constants."""
    return (os.environ if environ is None else environ).get(name, "")


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
