"""Team mode's checks and certificates (tracking-server/stack_tls.py), without Docker."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from mlflow_stack_server import stack_tls
from mlflow_stack_server.settings import Settings, SettingsError, is_ip

TEAM = {"MLFLOW_TLS": "on", "MLFLOW_AUTH": "basic", "MLFLOW_PUBLIC_NAMES": "mlflow.team.lan, 10.0.0.5"}


# The folders stack-tls works in, as settings (the `tls` volume, the given certificate, the project's certs/).
FOLDERS = {"VOLUME": "STACK_TLS_DIR", "GIVEN": "STACK_TLS_GIVEN_DIR", "EXPORT": "STACK_TLS_EXPORT_DIR"}


@pytest.fixture
def dirs(tmp_path: Path) -> Path:
    for name in FOLDERS:
        (tmp_path / name).mkdir()
    return tmp_path


def team(dirs: Path, environ: dict[str, str]) -> Settings:
    """stack-tls's settings for `environ`, working in the folders under `dirs`."""
    folders = {variable: str(dirs / name) for name, variable in FOLDERS.items()}
    return Settings.from_environment({**folders, **environ}, server=False)


def verifies(ca: Path, leaf: x509.Certificate, name: str) -> bool:
    store = Store([x509.load_pem_x509_certificate(ca.read_bytes())])
    subject: x509.DNSName | x509.IPAddress
    if is_ip(name):
        import ipaddress

        subject = x509.IPAddress(ipaddress.ip_address(name))
    else:
        subject = x509.DNSName(name)
    try:
        PolicyBuilder().store(store).build_server_verifier(subject).verify(leaf, [])
    except Exception:
        return False
    return True


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({**TEAM, "MLFLOW_AUTH": "none"}, "MLFLOW_TLS=on needs MLFLOW_AUTH=basic"),
        ({**TEAM, "MLFLOW_PUBLIC_NAMES": ""}, "MLFLOW_TLS=on needs MLFLOW_PUBLIC_NAMES"),
        ({**TEAM, "MLFLOW_TLS": "yes"}, "expected 'on' or 'off'"),
        ({**TEAM, "MLFLOW_PUBLIC_NAMES": "mlflow team"}, "neither a DNS name nor an IP address"),
        ({**TEAM, "MLFLOW_TLS_CERT": "/x.pem"}, "set both MLFLOW_TLS_CERT and MLFLOW_TLS_KEY"),
    ],
)
def test_team_mode_mistakes_are_one_line_errors(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_environment(environ, server=False)


def test_off_needs_nothing() -> None:
    assert not Settings.from_environment({"MLFLOW_AUTH": "none"}, server=False).tls


def test_the_generated_certificate_verifies_for_every_public_name_and_only_those(dirs: Path) -> None:
    settings = team(dirs, TEAM)
    stack_tls.init(settings)
    leaf = stack_tls.served_certificate(settings)
    assert leaf is not None
    exported = dirs / "EXPORT" / "ca.crt"
    for name in ("mlflow.team.lan", "10.0.0.5", "localhost"):
        assert verifies(exported, leaf, name), name
    assert not verifies(exported, leaf, "evil.example")
    pem = (dirs / "VOLUME" / "server.pem").read_bytes()
    assert b"BEGIN CERTIFICATE" in pem and b"BEGIN PRIVATE KEY" in pem
    assert (dirs / "VOLUME" / "server.pem").stat().st_mode & 0o777 == 0o600
    assert (dirs / "VOLUME" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert not (dirs / "EXPORT" / "ca.key").exists()


def test_a_second_start_keeps_the_certificate_and_new_names_reissue_it_from_the_same_ca(dirs: Path) -> None:
    settings = team(dirs, TEAM)
    stack_tls.init(settings)
    first, ca = stack_tls.served_certificate(settings), (dirs / "EXPORT" / "ca.crt").read_bytes()
    stack_tls.init(team(dirs, TEAM))
    assert stack_tls.served_certificate(settings) == first
    stack_tls.init(team(dirs, {**TEAM, "MLFLOW_PUBLIC_NAMES": "other.lan"}))
    second = stack_tls.served_certificate(settings)
    assert second != first and second is not None and stack_tls.names_of(second) >= {"other.lan"}
    assert (dirs / "EXPORT" / "ca.crt").read_bytes() == ca
    stack_tls.init(team(dirs, {**TEAM, "MLFLOW_PUBLIC_NAMES": "other.lan"}), force_new=True)
    assert stack_tls.served_certificate(settings) != second


def _self_signed(names: tuple[str, ...]) -> tuple[bytes, bytes, bytes]:
    key, ca = stack_tls.create_ca()
    leaf_key, leaf = stack_tls.issue_server_certificate(key, ca, names)
    from cryptography.hazmat.primitives import serialization

    pem = serialization.Encoding.PEM
    return leaf.public_bytes(pem), stack_tls.private_key_pem(leaf_key), stack_tls.private_key_pem(key)


def test_a_given_certificate_is_checked_against_its_key_and_the_public_names(dirs: Path) -> None:
    cert, key, other_key = _self_signed(("mlflow.team.lan", "10.0.0.5"))
    settings = team(dirs, {**TEAM, "MLFLOW_TLS_CERT": "c", "MLFLOW_TLS_KEY": "k"})
    (dirs / "GIVEN" / "cert.pem").write_bytes(cert)
    (dirs / "GIVEN" / "key.pem").write_bytes(other_key)
    with pytest.raises(stack_tls.TeamModeError, match="is not the key of"):
        stack_tls.init(settings)
    (dirs / "GIVEN" / "key.pem").write_bytes(key)
    stack_tls.init(settings)
    assert (dirs / "VOLUME" / "server.crt").read_bytes() == cert
    assert not (dirs / "VOLUME" / "ca.key").exists()  # no private CA when a certificate is given
    narrow = team(
        dirs,
        {**TEAM, "MLFLOW_PUBLIC_NAMES": "mlflow.team.lan,other.lan", "MLFLOW_TLS_CERT": "c", "MLFLOW_TLS_KEY": "k"},
    )
    with pytest.raises(stack_tls.TeamModeError, match=r"not for other\.lan"):
        stack_tls.init(narrow)


def test_a_wildcard_covers_one_label_only() -> None:
    _, ca = stack_tls.create_ca()
    key, _ = stack_tls.create_ca()
    _, leaf = stack_tls.issue_server_certificate(key, ca, ("*.team.lan",))
    assert stack_tls.covers(leaf, "mlflow.team.lan")
    assert not stack_tls.covers(leaf, "a.b.team.lan") and not stack_tls.covers(leaf, "team.lan")
    assert leaf.not_valid_after_utc - datetime.datetime.now(datetime.UTC) < datetime.timedelta(days=398)


def test_public_names_join_the_allowed_hosts_with_any_port() -> None:
    environ = {
        "MLFLOW_SERVER_ALLOWED_HOSTS": "tracking-server:5000,localhost:*",
        "MLFLOW_PUBLIC_NAMES": "a.lan, 10.0.0.5",
    }
    assert Settings.from_environment(environ, server=False).allowed_hosts.split(",") == [
        "tracking-server:5000", "localhost:*", "a.lan", "a.lan:*", "10.0.0.5", "10.0.0.5:*",
    ]  # fmt: skip


def test_public_names_join_the_allowed_origins_over_https_only() -> None:
    """The UI's own POSTs in team mode carry the public name as Origin; MLflow blocks any other non-localhost."""
    from mlflow.server.security_utils import should_block_cors_request

    environ = {"MLFLOW_SERVER_CORS_ALLOWED_ORIGINS": "https://ci.lan", "MLFLOW_PUBLIC_NAMES": "a.lan, ::1"}
    origins = Settings.from_environment(environ, server=False).allowed_origins.split(",")
    assert origins == ["https://ci.lan", "https://a.lan", "https://a.lan:*", "https://[::1]", "https://[::1]:*"]
    assert not should_block_cors_request("https://a.lan:5000", "POST", origins)
    assert not should_block_cors_request("https://a.lan", "POST", origins)
    assert should_block_cors_request("http://a.lan:5000", "POST", origins)
    assert should_block_cors_request("https://evil.example", "POST", origins)
    assert should_block_cors_request("https://a.lan.evil.example", "POST", origins)


def test_the_auth_config_turns_on_mlflows_login_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without it every request pays a scrypt password check (README, Performance: 25x an API call's cost)."""
    import configparser
    import os

    from mlflow_stack_server import entrypoint

    def read_auth_config() -> int:
        # The key MLflow 3.17 reads (mlflow/server/auth/config.py: auth_cache_ttl_seconds, default 0 = off);
        # MLflow's own reader needs mlflow[auth], which only the server image has.
        parser = configparser.ConfigParser()
        parser.read(os.environ["MLFLOW_AUTH_CONFIG_PATH"])
        return parser.getint("mlflow", "auth_cache_ttl_seconds")

    environ = {
        "POSTGRES_USER": "mlflow", "POSTGRES_DB": "mlflow", "POSTGRES_PASSWORD": "p", "MLFLOW_ARTIFACTS_BUCKET": "b",
        "MLFLOW_AUTH": "basic", "MLFLOW_AUTH_ADMIN_USERNAME": "admin", "MLFLOW_AUTH_ADMIN_PASSWORD": "a",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "k",
    }  # fmt: skip
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", "unset")  # monkeypatch restores it; write_auth_config sets it
    entrypoint.write_auth_config(Settings.from_environment(environ))
    assert read_auth_config() == 60
    entrypoint.write_auth_config(Settings.from_environment({**environ, "MLFLOW_AUTH_CACHE_SECONDS": "0"}))
    assert read_auth_config() == 0
