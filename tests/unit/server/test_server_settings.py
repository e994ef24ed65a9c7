"""The tracking server's settings: NAME or NAME_FILE for every secret (the plain variable wins), one URI."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_stack_server.settings import Settings, SettingsError

BASE = {"POSTGRES_USER": "mlflow", "POSTGRES_DB": "mlflow", "MLFLOW_ARTIFACTS_BUCKET": "artifacts"}


def test_a_secret_file_is_read_and_its_trailing_newline_dropped(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("p@ss/word\n")
    settings = Settings.from_environment({**BASE, "POSTGRES_PASSWORD_FILE": str(secret)})
    assert settings.secrets["POSTGRES_PASSWORD"] == "p@ss/word"
    # Quoted in the URI: '@' and '/' would otherwise split it.
    assert settings.backend_store_uri == "postgresql+psycopg2://mlflow:p%40ss%2Fword@postgres:5432/mlflow"


def test_the_plain_variable_wins_over_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-file")
    environ = {**BASE, "POSTGRES_PASSWORD": "from-env", "POSTGRES_PASSWORD_FILE": str(secret)}
    assert Settings.from_environment(environ).secrets["POSTGRES_PASSWORD"] == "from-env"


def test_a_full_backend_store_uri_is_used_as_it_is(tmp_path: Path) -> None:
    uri = tmp_path / "uri"
    uri.write_text("postgresql+psycopg2://u:p@db.example:6432/tracking")
    settings = Settings.from_environment({"MLFLOW_BACKEND_STORE_URI_FILE": str(uri), "MLFLOW_ARTIFACTS_BUCKET": "b"})
    assert settings.backend_store_uri == "postgresql+psycopg2://u:p@db.example:6432/tracking"


def test_an_unreadable_secret_file_is_one_clear_error() -> None:
    with pytest.raises(SettingsError, match=r"POSTGRES_PASSWORD_FILE=/nonexistent cannot be read"):
        Settings.from_environment({**BASE, "POSTGRES_PASSWORD_FILE": "/nonexistent"})


@pytest.mark.parametrize("missing", ["MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"])
def test_basic_auth_without_its_secrets_is_refused(missing: str) -> None:
    environ = {
        **BASE,
        "POSTGRES_PASSWORD": "x",
        "MLFLOW_AUTH": "basic",
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "a",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "k",
    }
    del environ[missing]
    with pytest.raises(SettingsError, match=f"MLFLOW_AUTH=basic needs {missing}"):
        Settings.from_environment(environ)


def test_the_artifact_destination_overrides_the_bucket() -> None:
    environ = {**BASE, "POSTGRES_PASSWORD": "x", "MLFLOW_ARTIFACTS_DESTINATION": "s3://shared/mlflow/"}
    settings = Settings.from_environment(environ)
    assert (settings.artifacts_destination, settings.bucket) == ("s3://shared/mlflow/", "shared")
