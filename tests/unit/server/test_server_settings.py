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


class RecordingEnvironment(dict[str, str]):
    """An environment that remembers every variable asked for, set or not."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)


def test_the_reference_lists_every_variable_the_settings_read() -> None:
    from mlflow_stack_server.settings import reference

    listed = reference()
    names = [entry["env"] for entry in listed]
    assert len(names) == len(set(names)), "a knob is declared twice"
    environ = RecordingEnvironment({**BASE, "POSTGRES_PASSWORD": "x"})
    Settings.from_environment(environ)
    secret_files = {f"{entry['env']}_FILE" for entry in listed if "_FILE" in entry["description"]}
    assert environ.asked - set(names) - secret_files == set()
    assert set(names) <= environ.asked  # and every listed knob is really read
    sections = {"Server", "Database", "Artifacts", "Auth and team mode", "Fast path", "Metrics", "UI", "Secrets"}
    for entry in listed:
        assert set(entry) == {"env", "default", "description", "section"}
        assert entry["section"] in sections and entry["description"].endswith("."), entry


def test_a_bad_value_is_one_settings_error_naming_the_variable() -> None:
    for variable, value in [("MLFLOW_WORKERS", "two"), ("MLFLOW_FAST_STORE", "fast"), ("MLFLOW_AUTH", "ldap"),
                            ("MLFLOW_BOOTSTRAP_TIMEOUT", "-1"), ("MLFLOW_UI_WORKFLOW", "chat")]:  # fmt: skip
        with pytest.raises(SettingsError, match=f"^{variable}="):
            Settings.from_environment({**BASE, "POSTGRES_PASSWORD": "x", variable: value})


def test_the_auth_decision_cache_is_a_cap_of_up_to_an_hour() -> None:
    # The 2 s revocation promise is kept by the auth database's change notifications (auth_changes.py), and
    # without them by fast_path_auth.UNNOTIFIED_SECONDS: the knob only caps an allowance's age.
    def seconds(value: str) -> float:
        environ = {**BASE, "POSTGRES_PASSWORD": "x", "MLFLOW_AUTH_DECISION_CACHE_SECONDS": value}
        return float(Settings.from_environment(environ).auth_decision_cache_seconds)

    assert [seconds(value) for value in ("", "0", "0.5", "2", "3600")] == [60, 0, 0.5, 2, 3600]
    for value in ("3600.5", "-1", "nan", "inf"):
        with pytest.raises(SettingsError) as refused:
            seconds(value)
        assert str(refused.value) == (
            f"MLFLOW_AUTH_DECISION_CACHE_SECONDS={value!r}; expected 0 to 3600 seconds "
            "(remembered allowances beyond an hour save nothing more)"
        )
    with pytest.raises(
        SettingsError, match=r"^MLFLOW_AUTH_DECISION_CACHE_SECONDS='one'; expected a number of seconds$"
    ):
        seconds("one")


def test_defaults_when_unset_or_empty() -> None:
    settings = Settings.from_environment({**BASE, "POSTGRES_PASSWORD": "x", "MLFLOW_WORKERS": ""})
    assert (settings.port, settings.workers, settings.request_threads, settings.pool_size) == (5000, 2, 8, 8)
    assert (settings.fast_store, settings.metrics, settings.auth, settings.upload_part_bytes) == (
        True, True, "none", 16 * 1024 * 1024,
    )  # fmt: skip


def test_secrets_stay_out_of_the_settings_repr() -> None:
    settings = Settings.from_environment({**BASE, "POSTGRES_PASSWORD": "hunter2-secret"})
    assert "hunter2-secret" not in repr(settings)


def test_importing_the_settings_is_cheap_and_reads_nothing() -> None:
    import subprocess
    import sys

    code = (
        "import os, sys; os.environ.clear(); import mlflow_stack_server.settings as s; "
        "print(len(s.reference()), sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'sqlalchemy', 'boto3')))"
    )
    root = Path(__file__).resolve().parents[3] / "tracking-server"
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    count, heavy = result.stdout.split(" ", 1)
    assert int(count) >= 30 and heavy.strip() == "[]"
