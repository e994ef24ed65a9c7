"""Everything the tracking server's steps read from the environment, read once.

Every secret may come as NAME (the value) or NAME_FILE (a path whose content is the value, trailing
newline stripped): compose mounts generated secret files, Kubernetes may use either a Secret in the
environment or a mounted Secret. The plain variable wins when both are set, so a value in `.env` or a
Kubernetes secretKeyRef overrides a file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlparse

# Variables that may be given as NAME_FILE instead.
SECRET_NAMES = (
    "MLFLOW_BACKEND_STORE_URI",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "MLFLOW_AUTH_ADMIN_USERNAME",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "MLFLOW_AUTH_DATABASE_URI",
    "MLFLOW_AUTH_CLIENT_USERNAME",
    "MLFLOW_AUTH_CLIENT_PASSWORD",
)
AUTH_REQUIRED = ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")


class SettingsError(Exception):
    """A configuration mistake: reported in one line, waiting will not fix it."""


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
    backend_store_uri: str
    s3_endpoint_url: str
    artifacts_destination: str
    auth: str
    secrets: Mapping[str, str]
    workers: int
    request_threads: int
    port: str
    wait_seconds: float
    auth_database: str
    # Seconds a verified login is remembered per worker (MLflow's auth_cache_ttl_seconds; 0 = check every time).
    auth_cache_seconds: int = 60
    # Prometheus /metrics on the server's port (MLFLOW_METRICS=false turns it off); every worker writes its
    # values into metrics_dir, emptied at each start.
    metrics: bool = True
    metrics_dir: str = "/tmp/mlflow-metrics"

    @property
    def bucket(self) -> str:
        return urlparse(self.artifacts_destination).netloc

    @property
    def admin(self) -> tuple[str, str]:
        return self.secrets["MLFLOW_AUTH_ADMIN_USERNAME"], self.secrets["MLFLOW_AUTH_ADMIN_PASSWORD"]

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        secrets = {name: read_secret(name, environ) for name in SECRET_NAMES}
        auth = environ.get("MLFLOW_AUTH", "none") or "none"
        if auth not in ("none", "basic"):
            raise SettingsError(f"MLFLOW_AUTH={auth!r}; expected 'none' or 'basic'")
        if auth == "basic":
            missing = [name for name in AUTH_REQUIRED if not secrets[name]]
            if missing:
                # No defaults on purpose: a stack with auth "on" and a guessable password is worse than none.
                names = ", ".join(missing)
                raise SettingsError(f"MLFLOW_AUTH=basic needs {names} (or {missing[0]}_FILE)")
        destination = environ.get("MLFLOW_ARTIFACTS_DESTINATION", "")
        if not destination:
            bucket = environ.get("MLFLOW_ARTIFACTS_BUCKET", "")
            if not bucket:
                raise SettingsError("set MLFLOW_ARTIFACTS_BUCKET or MLFLOW_ARTIFACTS_DESTINATION")
            destination = f"s3://{bucket}/"
        return cls(
            backend_store_uri=secrets["MLFLOW_BACKEND_STORE_URI"] or _postgres_uri(environ, secrets),
            s3_endpoint_url=environ.get("MLFLOW_S3_ENDPOINT_URL", ""),
            artifacts_destination=destination,
            auth=auth,
            secrets=secrets,
            workers=int(environ.get("MLFLOW_WORKERS", "2")),
            request_threads=int(environ.get("MLFLOW_REQUEST_THREADS", "8")),
            port=environ.get("MLFLOW_SERVER_PORT", "5000"),
            wait_seconds=float(environ.get("MLFLOW_BOOTSTRAP_TIMEOUT", "120")),
            auth_database=environ.get("MLFLOW_AUTH_DB", "mlflow_auth"),
            auth_cache_seconds=int(environ.get("MLFLOW_AUTH_CACHE_SECONDS", "60") or "0"),
            metrics=environ.get("MLFLOW_METRICS", "true").lower() not in ("false", "0", "no", "off"),
            metrics_dir=environ.get("MLFLOW_METRICS_DIR", "/tmp/mlflow-metrics"),
        )

    def export_secrets(self) -> None:
        """Put the resolved secrets where boto3 and MLflow's auth app read them: the process environment."""
        for name, value in self.secrets.items():
            if value:
                os.environ[name] = value
        # Through the environment, not argv: the URI holds the database password and argv is visible in `ps`.
        os.environ["MLFLOW_BACKEND_STORE_URI"] = self.backend_store_uri


def allowed_hosts(environ: Mapping[str, str]) -> str:
    """MLFLOW_SERVER_ALLOWED_HOSTS plus every MLFLOW_PUBLIC_NAMES entry with any port.

    Team mode's one knob: the names in the server certificate are the Host headers MLflow accepts, so a
    client that passes TLS verification is never refused by the DNS-rebinding guard, and no other name is.
    """
    hosts = [h.strip() for h in environ.get("MLFLOW_SERVER_ALLOWED_HOSTS", "").split(",") if h.strip()]
    for name in (n.strip() for n in environ.get("MLFLOW_PUBLIC_NAMES", "").split(",")):
        if name:
            hosts += [name, f"{name}:*"]
    return ",".join(dict.fromkeys(hosts))


def _postgres_uri(environ: Mapping[str, str], secrets: Mapping[str, str]) -> str:
    def required(name: str, value: str) -> str:
        if not value:
            raise SettingsError(f"{name} is not set (nor {name}_FILE, nor MLFLOW_BACKEND_STORE_URI)")
        return quote(value, safe="")

    user = required("POSTGRES_USER", secrets["POSTGRES_USER"])
    password = required("POSTGRES_PASSWORD", secrets["POSTGRES_PASSWORD"])
    database = required("POSTGRES_DB", environ.get("POSTGRES_DB", ""))
    host, port = environ.get("POSTGRES_HOST", "postgres"), environ.get("POSTGRES_PORT", "5432")
    # psycopg2 named explicitly: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is not installed.
    return f"postgresql+psycopg2://{user}:{password}@{host}:{port}/{database}"
