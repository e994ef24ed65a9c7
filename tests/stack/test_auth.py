"""The auth switch: MLFLOW_AUTH=basic turns on MLflow's users and permissions, and refuses to run half-set.

Restarts the tracking server in auth mode and back; runs after the modules that use the open stack.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import requests

from tests.stack.conftest import STACK_URL, compose, parse_training, run_trainer
from tests.support.waiting import wait_until

# Restarts services or replaces the stack's data: after every other test (tests/stack/conftest.py).
pytestmark = pytest.mark.disruptive(order=1)

# Fixed rather than random: the admin is created once per auth database, and a rerun on the same volumes
# must log in with the password it was created with.
ADMIN = ("admin", "stack-test-admin-password")
AUTH_ENV = {
    "MLFLOW_AUTH": "basic",
    "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
    "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "stack-test-secret-key-0123456789",
}
API = STACK_URL + "/api/2.0/mlflow"


@pytest.mark.parametrize("missing", ["MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"])
def test_auth_mode_refuses_to_start_without_its_secrets(missing: str) -> None:
    # Compose always hands the server generated files; take this one away (and run `prepare`, which exits).
    result = compose(
        "run", "--rm", "-T", "--no-deps", "-e", "MLFLOW_AUTH=basic", "-e", f"{missing}_FILE=",
        "tracking-server", "prepare", check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"MLFLOW_AUTH=basic needs {missing}" in result.stdout + result.stderr


@pytest.fixture(scope="module")
def auth_on() -> Iterator[tuple[str, str]]:
    compose("up", "-d", "--wait", "--wait-timeout", "180", "tracking-server", env=AUTH_ENV)
    wait_until_the_gateway_reaches_the_server(ADMIN)  # the recreated container, not the old one's address
    yield ADMIN
    compose("up", "-d", "--wait", "--wait-timeout", "180", "tracking-server", env={"MLFLOW_AUTH": "none"})
    wait_until_the_gateway_reaches_the_server(ADMIN)  # without logins the header is ignored: 200 as well


def test_anonymous_and_wrong_password_requests_get_401(auth_on: tuple[str, str]) -> None:
    # The whole log of the container `auth_on` just created: its start line is there however much followed it
    # (a `--tail` window lost it whenever the workers and the first requests logged more than the window held).
    assert "starting mlflow server (auth: basic" in compose("logs", "--no-log-prefix", "tracking-server").stdout
    search = API + "/experiments/search?max_results=1"
    assert requests.get(search, timeout=10).status_code == 401
    assert requests.get(search, auth=(auth_on[0], "wrong"), timeout=10).status_code == 401
    assert requests.get(search, auth=auth_on, timeout=10).status_code == 200


def test_metrics_need_a_login_too(auth_on: tuple[str, str]) -> None:
    # docs/operations.md tells Prometheus users to give the scrape job a basic_auth block: this is why.
    assert requests.get(STACK_URL + "/metrics", timeout=10).status_code == 401
    assert requests.get(STACK_URL + "/metrics", auth=(auth_on[0], "wrong"), timeout=10).status_code == 401
    scraped = requests.get(STACK_URL + "/metrics", auth=auth_on, timeout=10)
    assert scraped.status_code == 200
    assert "mlflow_stack_fast_path_enabled" in scraped.text and "mlflow_http_request_total" in scraped.text


def test_a_trainer_with_a_login_trains_and_registers(auth_on: tuple[str, str]) -> None:
    model = f"mnist-auth-{uuid.uuid4().hex[:8]}"
    # --no-deps and the auth environment: otherwise `run` would recreate the server in its default, open mode.
    login = [
        "--no-deps",
        "-e",
        f"MLFLOW_TRACKING_USERNAME={auth_on[0]}",
        "-e",
        f"MLFLOW_TRACKING_PASSWORD={auth_on[1]}",
    ]
    result = run_trainer(
        "--epochs", "1", "--max-train-samples", "3000", "--min-accuracy", "0.5", "--registered-model-name", model,
        options=login, env=AUTH_ENV,
    )  # fmt: skip
    training = parse_training(result)
    version = requests.get(
        API + "/model-versions/get", params={"name": model, "version": str(training.version)}, auth=auth_on, timeout=10
    )
    assert version.status_code == 200
    assert version.json()["model_version"]["run_id"] == training.run_id

    # Without a login the same trainer is turned away at once, in one line.
    anonymous = compose(
        "run", "--rm", "-T", "--no-deps", "trainer", "models", "--registered-model-name", model,
        env=AUTH_ENV, check=False,
    )  # fmt: skip
    assert anonymous.returncode == 1
    assert "refused the trainer (HTTP 401" in anonymous.stderr


def test_a_read_only_user_can_read_but_not_register(auth_on: tuple[str, str]) -> None:
    reader = (f"reader-{uuid.uuid4().hex[:6]}", "reader-password-123")
    created = requests.post(
        API + "/users/create", json={"username": reader[0], "password": reader[1]}, auth=auth_on, timeout=10
    )
    assert created.status_code == 200, created.text
    model = f"mnist-readonly-{uuid.uuid4().hex[:8]}"
    made = requests.post(API + "/registered-models/create", json={"name": model}, auth=auth_on, timeout=10)
    assert made.status_code == 200, made.text

    assert requests.get(API + "/registered-models/get", params={"name": model}, auth=reader, timeout=10).ok
    register = requests.post(
        API + "/model-versions/create",
        json={"name": model, "source": "mlflow-artifacts:/0/somewhere/model"},
        auth=reader,
        timeout=10,
    )
    assert register.status_code == 403, register.text


def wait_until_the_gateway_reaches_the_server(login: tuple[str, str], seconds: float = 30) -> None:
    """Right after a restart the gateway may still hold the old container's address for a few seconds (it
    asks Docker's DNS again every 5 s, gateway/haproxy.cfg): the first request can meet a closed connection."""
    wait_until(
        lambda: requests.get(API + "/experiments/search?max_results=1", auth=login, timeout=10).status_code == 200,
        seconds, f"the server did not answer through the gateway within {seconds} s", interval=1,
        ignoring=(requests.ConnectionError,),
    )  # fmt: skip


def test_a_user_without_read_permission_cannot_stream_an_artifact(auth_on: tuple[str, str]) -> None:
    # The streamed artifact routes (mlflow_stack_server/streamed_artifacts.py) sit behind MLflow's permission
    # middleware: READ is checked for a download and UPDATE for an upload, as for MLflow's own routes.
    wait_until_the_gateway_reaches_the_server(auth_on)
    outsider = (f"outsider-{uuid.uuid4().hex[:6]}", "outsider-password-123")
    created = requests.post(
        API + "/users/create", json={"username": outsider[0], "password": outsider[1]}, auth=auth_on, timeout=10
    )
    assert created.status_code == 200, created.text
    experiment = requests.post(
        API + "/experiments/create", json={"name": f"private-{uuid.uuid4().hex[:8]}"}, auth=auth_on, timeout=10
    )
    experiment_id = experiment.json()["experiment_id"]
    # MLflow 3.17's grant endpoint (mlflow/server/auth/routes.py, GRANT_USER_PERMISSION); DENY overrides the
    # default READ for this one experiment.
    denied = requests.post(
        STACK_URL + "/api/3.0/mlflow/users/permissions/grant",
        json={
            "username": outsider[0], "resource_type": "experiment", "resource_id": experiment_id,
            "permission": "DENY",
        },
        auth=auth_on,
        timeout=10,
    )  # fmt: skip
    assert denied.status_code == 200, denied.text
    # More than one upload part (16 MiB), so the admin's upload takes the streamed multipart path.
    content = os.urandom(20 * 2**20)
    url = f"{STACK_URL}/api/2.0/mlflow-artifacts/artifacts/{experiment_id}/some-run/artifacts/private.bin"
    assert requests.put(url, data=content, auth=auth_on, timeout=300).status_code == 200

    refused = requests.get(url, auth=outsider, stream=True, timeout=60)
    assert refused.status_code == 403, refused.status_code
    assert len(refused.content) < 1000  # an error message, not the artifact
    assert requests.put(url, data=b"overwritten", auth=outsider, timeout=60).status_code == 403
    assert requests.get(url, timeout=60).status_code == 401
    # A user with the default READ may download it; the admin's bytes are intact.
    reader = (f"reader-{uuid.uuid4().hex[:6]}", "reader-password-123")
    requests.post(API + "/users/create", json={"username": reader[0], "password": reader[1]}, auth=auth_on, timeout=10)
    readable = requests.get(url, auth=reader, timeout=300)
    assert readable.status_code == 200 and readable.content == content
    assert requests.delete(url, auth=auth_on, timeout=60).status_code == 200


def test_the_hot_tracking_writes_are_authorized_per_experiment(auth_on: tuple[str, str]) -> None:
    """log-batch, set-tag and runs/update are answered without Flask (fast_http.py); with auth on only after MLflow's
    basic-auth app's own check (fast_path_auth.py): a login, and EDIT on the run's experiment (READ is the default)."""
    password = "hot-writes-password-123"
    reader, editor = (f"reader-{uuid.uuid4().hex[:6]}", password), (f"editor-{uuid.uuid4().hex[:6]}", password)
    for user in (reader, editor):
        created = requests.post(
            API + "/users/create", json={"username": user[0], "password": user[1]}, auth=auth_on, timeout=10
        )
        assert created.status_code == 200, created.text
    experiment = requests.post(
        API + "/experiments/create", json={"name": f"hot-writes-{uuid.uuid4().hex[:8]}"}, auth=auth_on, timeout=10
    ).json()["experiment_id"]
    granted = requests.post(
        STACK_URL + "/api/3.0/mlflow/users/permissions/grant",
        json={"username": editor[0], "resource_type": "experiment", "resource_id": experiment, "permission": "EDIT"},
        auth=auth_on,
        timeout=10,
    )
    assert granted.status_code == 200, granted.text
    run = requests.post(API + "/runs/create", json={"experiment_id": experiment}, auth=auth_on, timeout=10)
    run_id = run.json()["run"]["info"]["run_id"]
    metric = {"key": "loss", "value": 0.5, "timestamp": 1, "step": 1}
    calls = [
        ("/runs/log-batch", {"run_id": run_id, "metrics": [metric]}),
        ("/runs/set-tag", {"run_id": run_id, "key": "stage", "value": "train"}),
        ("/runs/update", {"run_id": run_id, "status": "RUNNING"}),
    ]
    expected = {"anonymous": 401, "wrong password": 401, "reader": 403, "editor": 200, "admin": 200}
    logins = {"anonymous": None, "wrong password": (editor[0], "wrong"), "reader": reader, "editor": editor}
    logins["admin"] = auth_on
    answers = {}
    for prefix in ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow"):
        for path, body in calls:
            for who, login in logins.items():
                response = requests.post(STACK_URL + prefix + path, json=body, auth=login, timeout=10)
                answers[(prefix + path, who)] = response.status_code
    assert answers == {(call, who): expected[who] for call, who in answers}
    # Bad input from an allowed user still gets MLflow's errors behind the login.
    logged = {"run_id": run_id, "params": [{"key": "lr", "value": "0.1"}]}
    assert requests.post(API + "/runs/log-batch", json=logged, auth=editor, timeout=10).status_code == 200
    changed = {"run_id": run_id, "params": [{"key": "lr", "value": "0.2"}]}
    refused = requests.post(API + "/runs/log-batch", json=changed, auth=editor, timeout=10)
    assert refused.status_code == 400 and refused.json()["error_code"] == "INVALID_PARAMETER_VALUE", refused.text
