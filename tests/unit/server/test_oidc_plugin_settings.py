"""The settings the entrypoint hands mlflow-oidc-auth are the ones its config module (10.2.0) reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlflow_stack_server.oidc_auth import ca_bundle, plugin_environment
from mlflow_stack_server.settings import Settings

TEAM_OIDC = {
    "POSTGRES_USER": "mlflow",
    "POSTGRES_DB": "mlflow",
    "POSTGRES_PASSWORD": "pw",
    "MLFLOW_ARTIFACTS_BUCKET": "artifacts",
    "MLFLOW_AUTH": "oidc",
    "MLFLOW_TLS": "on",
    "MLFLOW_PUBLIC_NAMES": "mlflow.team.lan",
    "MLFLOW_OIDC_ISSUER": "https://idp.example.test",
    "MLFLOW_OIDC_CLIENT_ID": "mlflow",
    "MLFLOW_OIDC_CLIENT_SECRET": "s3cret",
    "MLFLOW_OIDC_ADMIN_GROUP": "admins",
    "MLFLOW_OIDC_USER_GROUPS": "team-a, team-b",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "session-key",
}
# AppConfig's attribute for each value, read by the plugin itself in a fresh process.
READ_BACK = """
import json
from mlflow_oidc_auth.config import AppConfig
c = AppConfig()
print(json.dumps({k: getattr(c, k) for k in (
    "OIDC_DISCOVERY_URL", "OIDC_ISSUER", "OIDC_CLIENT_ID", "OIDC_CLIENT_SECRET", "OIDC_REDIRECT_URI", "OIDC_SCOPE",
    "OIDC_GROUPS_ATTRIBUTE", "OIDC_ADMIN_GROUP_NAME", "OIDC_GROUP_NAME", "OIDC_USERNAME_FIELD", "SECRET_KEY",
    "OIDC_USERS_DB_URI", "PERMISSION_CACHE_TTL_SECONDS", "DEFAULT_MLFLOW_PERMISSION", "SESSION_COOKIE_SECURE",
    "TRUSTED_PROXIES", "DB_POOL_SIZE")}))
"""


def test_the_plugin_reads_every_value_the_entrypoint_hands_it() -> None:
    import json

    settings = Settings.from_environment(TEAM_OIDC)
    environment = plugin_environment(settings, None)
    result = subprocess.run(
        [sys.executable, "-c", READ_BACK], env={"PATH": "/usr/bin:/bin", **environment}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout.strip().splitlines()[-1])
    assert config == {
        "OIDC_DISCOVERY_URL": "https://idp.example.test/.well-known/openid-configuration",
        "OIDC_ISSUER": "https://idp.example.test",
        "OIDC_CLIENT_ID": "mlflow",
        "OIDC_CLIENT_SECRET": "s3cret",
        "OIDC_REDIRECT_URI": "https://mlflow.team.lan/callback",
        "OIDC_SCOPE": "openid email profile groups",
        "OIDC_GROUPS_ATTRIBUTE": "groups",
        "OIDC_ADMIN_GROUP_NAME": ["admins"],
        "OIDC_GROUP_NAME": ["team-a", "team-b"],
        "OIDC_USERNAME_FIELD": ["email"],
        "SECRET_KEY": "session-key",
        "OIDC_USERS_DB_URI": "postgresql+psycopg2://mlflow:pw@postgres:5432/mlflow_oidc",
        "PERMISSION_CACHE_TTL_SECONDS": 1,
        "DEFAULT_MLFLOW_PERMISSION": "NO_PERMISSIONS",
        "SESSION_COOKIE_SECURE": True,
        "TRUSTED_PROXIES": [""],  # no proxy trusted: the middleware drops blank entries
        "DB_POOL_SIZE": 8,
    }


def test_the_ca_file_is_added_to_the_system_bundle(tmp_path: Path) -> None:
    ca = tmp_path / "company-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\ncompany\n-----END CERTIFICATE-----\n")
    settings = Settings.from_environment({**TEAM_OIDC, "MLFLOW_OIDC_CA_FILE": str(ca)})
    bundle = ca_bundle(settings)
    assert bundle is not None
    text = Path(bundle).read_text()
    assert text.endswith(ca.read_text()) and text.count("BEGIN CERTIFICATE") > 1  # the system's CAs kept
    assert plugin_environment(settings, bundle)["SSL_CERT_FILE"] == bundle
    assert ca_bundle(Settings.from_environment(TEAM_OIDC)) is None
