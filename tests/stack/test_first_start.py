"""A fresh clone with no .env: `docker compose up`, train, and the secrets that made it possible.

Each test here runs against a second stack started from a fresh copy of the repository (fresh_stack.py), so
its volumes start empty; the session's stack is left alone. That the object store refuses any but the
generated credentials is tested on the session's stack (tests/stack/test_object_store.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

from tests.stack.conftest import parse_training
from tests.stack.fresh_stack import FreshStack, copy_repository

SERVER_UID = "10001"
TELEMETRY_CHECK = (
    "import os; from mlflow.telemetry.utils import is_telemetry_disabled; "
    "print('telemetry-disabled', is_telemetry_disabled(), os.environ.get('MLFLOW_DISABLE_TELEMETRY'))"
)


def _project(suffix: str) -> str:
    import os

    return f"{os.environ.get('COMPOSE_PROJECT_NAME', 'mlflow-stack')}-{suffix}"


def test_the_env_file_path_still_works_and_its_values_win(tmp_path: Path) -> None:
    """Today's way: scripts/init-env.sh writes .env first. Its values become the stack's secrets."""
    stack = FreshStack(copy_repository(tmp_path), _project("dotenv"))
    stack.destroy()  # leftovers of an interrupted earlier run
    try:
        made = stack.run("scripts/init-env.sh")
        assert made.returncode == 0, made.stderr
        dotenv = dict(
            line.split("=", 1)
            for line in (tmp_path / ".env").read_text().splitlines()
            if "=" in line and line[0] != "#"
        )
        stack.compose("up", "-d", "--wait", "--wait-timeout", "180")
        in_volume = stack.secrets()
        for name, variable in (
            ("postgres_password", "POSTGRES_PASSWORD"),
            ("minio_root_password", "MINIO_ROOT_PASSWORD"),
            ("mlflow_auth_admin_password", "MLFLOW_AUTH_ADMIN_PASSWORD"),
            ("mlflow_flask_server_secret_key", "MLFLOW_FLASK_SERVER_SECRET_KEY"),
        ):
            assert dotenv[variable], variable
            assert in_volume[name] == dotenv[variable], name
        # The server is healthy: it reached Postgres with the .env password (the volume was created with it).
        assert requests.get(stack.url + "/api/2.0/mlflow/experiments/search?max_results=1", timeout=10).ok
    finally:
        stack.destroy()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FreshStack]:
    stack = FreshStack(copy_repository(tmp_path_factory.mktemp("fresh-clone")), _project("fresh"))
    stack.destroy()  # leftovers of an interrupted earlier run
    yield stack
    stack.destroy()


def test_a_fresh_clone_with_no_env_comes_up_and_trains(fresh: FreshStack) -> None:
    started = time.monotonic()
    fresh.compose("up", "-d", "--wait", "--wait-timeout", "240")
    print(f"fresh stack healthy {time.monotonic() - started:.0f} s after 'up' (images built)")
    result = fresh.train()
    training = parse_training(result)
    assert training.version == 1
    client = MlflowClient(tracking_uri=fresh.url, registry_uri=fresh.url)
    assert client.get_model_version("mnist", "1").run_id == training.run_id
    # A non-terminal log: plain lines, no progress bars drawn with escape codes.
    assert "\x1b" not in result.stdout + result.stderr
    assert "trainer: epoch 1/1 - " in result.stdout
    assert "?workflowType=machine_learning" in result.stdout


def test_docker_compose_config_shows_no_secret(fresh: FreshStack) -> None:
    config = fresh.compose("config").stdout
    generated = {name: value for name, value in fresh.secrets().items() if name != "minio_root_user"}
    assert len(generated) == 4
    for name, value in generated.items():
        assert len(value) >= 32, name
        assert value not in config, f"{name} appears in docker compose config"
    assert "POSTGRES_PASSWORD_FILE: /run/secrets/postgres_password" in config


def test_secret_files_are_0600_and_owned_by_the_server_user(fresh: FreshStack) -> None:
    listing = fresh.compose(
        "run", "--rm", "--no-deps", "-T", "--entrypoint", "sh", "secrets", "-c",
        "stat -c '%n %a %u %g' /run/secrets /run/secrets/*",
    ).stdout  # fmt: skip
    modes = {line.split()[0]: line.split()[1:] for line in listing.splitlines()}
    assert modes.pop("/run/secrets") == ["700", SERVER_UID, SERVER_UID]
    assert set(modes) == {
        f"/run/secrets/{name}"
        for name in (
            "postgres_password",
            "minio_root_user",
            "minio_root_password",
            "mlflow_auth_admin_password",
            "mlflow_flask_server_secret_key",
        )
    }
    for name, (mode, uid, gid) in modes.items():
        assert (mode, uid, gid) == ("600", SERVER_UID, SERVER_UID), name


def test_telemetry_is_off_in_every_container_unless_opted_in(fresh: FreshStack) -> None:
    server = fresh.compose("exec", "-T", "tracking-server", "python", "-c", TELEMETRY_CHECK).stdout
    assert "telemetry-disabled True true" in server
    # The UI asks the server whether to send its own telemetry.
    ui = requests.get(fresh.url + "/ajax-api/3.0/mlflow/ui-telemetry", timeout=10)
    assert ui.json()["disable_ui_telemetry"] is True
    for service in ("trainer", "serving", "tracking-server-prepare"):
        checked = fresh.compose(
            "run", "--rm", "--no-deps", "-T", "--entrypoint", "python", service, "-c", TELEMETRY_CHECK
        )
        assert "telemetry-disabled True true" in checked.stdout, service
    # The documented opt-in reaches the containers (so the checks above can fail).
    opted_in = fresh.compose(
        "run", "--rm", "--no-deps", "-T", "--entrypoint", "python", "trainer", "-c", TELEMETRY_CHECK,
        extra={"MLFLOW_DISABLE_TELEMETRY": "false"},
    )  # fmt: skip
    assert "telemetry-disabled False false" in opted_in.stdout


def test_the_ui_page_seeds_the_model_training_view(fresh: FreshStack) -> None:
    page = requests.get(fresh.url + "/", timeout=10)
    assert page.status_code == 200
    assert int(page.headers["content-length"]) == len(page.content)
    assert 'localStorage.setItem("mlflow.workflowType_v1",\'"machine_learning"\')' in page.text


def test_down_and_up_keeps_the_generated_secrets(fresh: FreshStack) -> None:
    before = fresh.secrets()
    fresh.compose("down")
    fresh.compose("up", "-d", "--wait", "--wait-timeout", "240")
    assert fresh.secrets() == before
    client = MlflowClient(tracking_uri=fresh.url, registry_uri=fresh.url)
    assert client.get_model_version("mnist", "1").status == "READY"


def test_a_lost_secrets_volume_is_one_clear_error_and_the_documented_fix_works(fresh: FreshStack) -> None:
    fresh.compose("down")
    removed = fresh.run("docker", "volume", "rm", f"{fresh.project}_secrets")
    assert removed.returncode == 0, removed.stderr
    up = fresh.compose("up", "-d", "--wait", "--wait-timeout", "240", check=False)
    assert up.returncode != 0
    assert "tracking-server-prepare" in up.stderr
    logs = fresh.compose("logs", "--no-log-prefix", "tracking-server-prepare").stdout
    errors = [line for line in logs.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, logs
    assert "postgres-data volume was created with another" in errors[0]
    assert "scripts/secrets.sh reset-postgres-password" in errors[0]
    # No restart loop: the server never started, and nothing restarted.
    states = {}
    for line in fresh.compose("ps", "-a", "--format", "json").stdout.splitlines():
        for entry in json.loads(line) if line.startswith("[") else [json.loads(line)]:
            states[entry["Service"]] = entry["State"]
    assert states.get("tracking-server") in (None, "created"), states
    assert states["tracking-server-prepare"] == "exited"
    restarts = fresh.run("docker", "inspect", "-f", "{{.RestartCount}}", f"{fresh.project}-postgres-1").stdout
    assert restarts.strip() == "0"

    fixed = fresh.run("scripts/secrets.sh", "reset-postgres-password", timeout=300)
    assert fixed.returncode == 0, fixed.stdout[-2000:] + fixed.stderr[-2000:]
    client = MlflowClient(tracking_uri=fresh.url, registry_uri=fresh.url)
    assert client.get_model_version("mnist", "1").status == "READY"  # the data survived


def test_rotating_the_postgres_password_keeps_the_stack_working(fresh: FreshStack) -> None:
    before = fresh.secrets()["postgres_password"]
    rotated = fresh.run("scripts/secrets.sh", "rotate", "postgres_password", timeout=300)
    assert rotated.returncode == 0, rotated.stdout[-2000:] + rotated.stderr[-2000:]
    assert fresh.secrets()["postgres_password"] != before
    # The server restarted with the new password and still reads and writes.
    fresh.compose("up", "-d", "--wait", "--wait-timeout", "180")
    client = MlflowClient(tracking_uri=fresh.url, registry_uri=fresh.url)
    client.create_experiment(f"after-rotation-{int(time.time())}")
    assert client.get_model_version("mnist", "1").status == "READY"
