"""MLFLOW_AUTH=oidc: its knobs, what it requires, and team mode's checks on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_stack_server.settings import Settings, SettingsError, reference

OIDC = {
    "POSTGRES_USER": "mlflow",
    "POSTGRES_DB": "mlflow",
    "POSTGRES_PASSWORD": "x",
    "MLFLOW_ARTIFACTS_BUCKET": "artifacts",
    "MLFLOW_AUTH": "oidc",
    "MLFLOW_OIDC_ISSUER": "https://idp.example.test/",
    "MLFLOW_OIDC_CLIENT_ID": "mlflow",
    "MLFLOW_OIDC_CLIENT_SECRET": "s3cret",
    "MLFLOW_OIDC_REDIRECT_URI": "https://mlflow.example.test/callback",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "k",
}
TEAM = {"MLFLOW_TLS": "on", "MLFLOW_PUBLIC_NAMES": "mlflow.team.lan,10.0.0.5"}


def test_the_defaults_and_the_discovery_url() -> None:
    settings = Settings.from_environment(OIDC)
    assert settings.oidc_issuer == "https://idp.example.test"  # the trailing slash dropped
    assert settings.oidc_discovery_url == "https://idp.example.test/.well-known/openid-configuration"
    assert (settings.oidc_groups_claim, settings.oidc_admin_group, settings.oidc_user_groups) == (
        "groups",
        "mlflow-admins",
        ("mlflow",),
    )
    assert (settings.oidc_scopes, settings.oidc_username_claim, settings.oidc_database) == (
        "openid email profile groups",
        "email",
        "mlflow_oidc",
    )


@pytest.mark.parametrize(
    "missing",
    ["MLFLOW_OIDC_ISSUER", "MLFLOW_OIDC_CLIENT_ID", "MLFLOW_OIDC_CLIENT_SECRET", "MLFLOW_FLASK_SERVER_SECRET_KEY"],
)
def test_each_required_setting_missing_is_one_line(missing: str) -> None:
    environ = {k: v for k, v in OIDC.items() if k != missing}
    with pytest.raises(SettingsError, match=f"MLFLOW_AUTH=oidc needs {missing}") as raised:
        Settings.from_environment(environ)
    assert "\n" not in str(raised.value)


def test_the_client_secret_may_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "client_secret"
    secret.write_text("from-file\n")
    environ = {k: v for k, v in OIDC.items() if k != "MLFLOW_OIDC_CLIENT_SECRET"}
    settings = Settings.from_environment({**environ, "MLFLOW_OIDC_CLIENT_SECRET_FILE": str(secret)})
    assert settings.oidc_client_secret == "from-file"
    assert "from-file" not in repr(settings)


def test_team_mode_accepts_oidc_and_derives_the_redirect_uri() -> None:
    environ = {k: v for k, v in OIDC.items() if k != "MLFLOW_OIDC_REDIRECT_URI"}
    settings = Settings.from_environment({**environ, **TEAM, "MLFLOW_PUBLIC_PORT": "8443"})
    assert settings.oidc_redirect_uri == "https://mlflow.team.lan:8443/callback"
    assert Settings.from_environment({**environ, **TEAM}).oidc_redirect_uri == "https://mlflow.team.lan/callback"


def test_without_team_mode_the_redirect_uri_must_be_given() -> None:
    environ = {k: v for k, v in OIDC.items() if k != "MLFLOW_OIDC_REDIRECT_URI"}
    with pytest.raises(SettingsError, match="needs MLFLOW_OIDC_REDIRECT_URI"):
        Settings.from_environment(environ)


def test_an_http_issuer_is_refused_in_team_mode_even_without_the_server_settings() -> None:
    # The tls service checks team mode with server=False and no client secret.
    environ = {"MLFLOW_AUTH": "oidc", "MLFLOW_OIDC_ISSUER": "http://idp.example.test", **TEAM}
    with pytest.raises(SettingsError, match=r"MLFLOW_TLS=on needs an https:// MLFLOW_OIDC_ISSUER"):
        Settings.from_environment(environ, server=False)
    # Outside team mode an http issuer is allowed (a laptop's test provider).
    assert Settings.from_environment({**OIDC, "MLFLOW_OIDC_ISSUER": "http://idp:9000"}).oidc_issuer == "http://idp:9000"


def test_team_mode_still_refuses_no_auth() -> None:
    with pytest.raises(SettingsError, match="needs MLFLOW_AUTH=basic or oidc"):
        Settings.from_environment({"MLFLOW_AUTH": "none", **TEAM}, server=False)


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("MLFLOW_OIDC_ISSUER", "idp.example.test", "expected an http:// or https:// URL"),
        ("MLFLOW_OIDC_USER_GROUPS", " , ", "MLFLOW_OIDC_USER_GROUPS is empty"),
        ("MLFLOW_OIDC_CA_FILE", "/nonexistent/ca.crt", "MLFLOW_OIDC_CA_FILE=/nonexistent/ca.crt is not a readable"),
        ("MLFLOW_AUTH", "saml", "expected 'none' or 'basic' or 'oidc'"),
    ],
)
def test_bad_values_are_one_line(env: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_environment({**OIDC, env: value})


def test_every_oidc_knob_is_in_the_reference() -> None:
    documented = {entry["env"] for entry in reference()}
    assert {
        "MLFLOW_OIDC_ISSUER",
        "MLFLOW_OIDC_CLIENT_ID",
        "MLFLOW_OIDC_CLIENT_SECRET",
        "MLFLOW_OIDC_REDIRECT_URI",
        "MLFLOW_OIDC_GROUPS_CLAIM",
        "MLFLOW_OIDC_ADMIN_GROUP",
        "MLFLOW_OIDC_USER_GROUPS",
        "MLFLOW_OIDC_SCOPES",
        "MLFLOW_OIDC_USERNAME_CLAIM",
        "MLFLOW_OIDC_CA_FILE",
        "MLFLOW_OIDC_DB",
    } <= documented


def test_an_https_redirect_uri_means_clients_use_https_without_team_mode() -> None:
    # Kubernetes: TLS ends at the Ingress, MLFLOW_TLS stays off; cookies must still be Secure.
    assert Settings.from_environment(OIDC).public_https
    http = Settings.from_environment({**OIDC, "MLFLOW_OIDC_REDIRECT_URI": "http://localhost:5000/callback"})
    assert not http.public_https
