"""Secure by default: only the UI and the MinIO console are published, on loopback; trainers hold no secrets."""

from __future__ import annotations

import socket
import subprocess
from urllib.parse import urlsplit

import pytest
import requests

from tests.stack.conftest import (
    MINIO_CONSOLE_PORT,
    MLFLOW_PORT,
    STACK_URL,
    TRACKING_SERVER_IMAGE,
    TRAINER_IMAGE,
    compose,
    published_ports,
    trainer_python,
)


def test_only_the_ui_and_the_console_are_published_and_on_loopback_only() -> None:
    assert published_ports() == {("127.0.0.1", MLFLOW_PORT, 5000), ("127.0.0.1", MINIO_CONSOLE_PORT, 9001)}


@pytest.mark.parametrize(("port", "what"), [(5432, "Postgres"), (9000, "the S3 API")])
def test_backends_are_not_reachable_from_the_host(port: int, what: str) -> None:
    with socket.socket() as sock:
        sock.settimeout(2)
        assert sock.connect_ex(("127.0.0.1", port)) != 0, f"{what} answers on 127.0.0.1:{port}"


def test_the_trainer_holds_no_credentials_and_cannot_reach_the_backends() -> None:
    code = """
import os, socket
# The trainer's own MLflow login (empty unless auth is on) is allowed; database and S3 secrets are not.
own_login = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
secret_words = ("PASSWORD", "SECRET", "ACCESS_KEY", "TOKEN")
secrets = sorted(k for k in os.environ if any(w in k for w in secret_words) and k not in own_login)
secrets += sorted(k for k in os.environ if k.startswith(("POSTGRES", "MINIO", "MLFLOW_S3")))
print("login", repr(os.environ.get("MLFLOW_TRACKING_PASSWORD")))
print("secrets", secrets)
for host in ("postgres", "minio"):
    try:
        socket.getaddrinfo(host, None)
        print(host, "resolves")
    except socket.gaierror:
        print(host, "unknown")
print("tracking-server", socket.getaddrinfo("tracking-server", 5000)[0][4][1])
"""
    result = trainer_python(code)
    assert "secrets []" in result.stdout
    assert "login ''" in result.stdout  # auth is off by default: no login is handed out either
    assert "postgres unknown" in result.stdout
    assert "minio unknown" in result.stdout
    assert "tracking-server 5000" in result.stdout


def test_a_secret_file_that_cannot_be_read_stops_the_server_in_one_line() -> None:
    # No secret needs to be set any more (tests/stack/test_first_start.py); a broken one is still named.
    result = compose(
        "run", "--rm", "-T", "--no-deps", "-e", "POSTGRES_PASSWORD_FILE=/run/secrets/absent",
        "tracking-server", "prepare", check=False,
    )  # fmt: skip
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert errors == [
        "[tracking-server] error: POSTGRES_PASSWORD_FILE=/run/secrets/absent cannot be read (No such file or directory)"
    ], result.stderr[-2000:]


def test_our_images_run_as_a_non_root_user() -> None:
    for image in (TRACKING_SERVER_IMAGE, TRAINER_IMAGE):
        user = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{.Config.User}}", image],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert user not in ("", "0", "root", "0:0"), (image, user)


def _vary(response: requests.Response) -> list[str]:
    """Every name of every Vary header line of the answer, as sent."""
    return [token.strip() for line in response.raw.headers.getlist("vary") for token in line.split(",")]


def test_mlflows_cors_and_host_checks_hold_and_each_answer_says_vary_origin_once() -> None:
    """MLflow's Flask-CORS and Starlette's CORSMiddleware each add `Vary: Origin` (vary_header.py): every kind of
    answer (Flask's, the fast path's, the UI's, a preflight) names Origin once, and MLflow's refusals stay."""
    parts = urlsplit(STACK_URL)
    origin = f"{parts.scheme}://{parts.netloc}"  # the UI's own origin: allowed
    api = STACK_URL + "/api/2.0/mlflow"
    created = requests.post(api + "/runs/create", json={"experiment_id": "0"}, headers={"Origin": origin}, timeout=60)
    assert created.status_code == 200, created.text
    run_id = created.json()["run"]["info"]["run_id"]
    batch = {"run_id": run_id, "metrics": [{"key": "vary", "value": 1, "timestamp": 1, "step": 0}]}
    answers = {
        "flask POST": created,
        "flask GET": requests.get(api + "/runs/get", params={"run_id": run_id}, headers={"Origin": origin}, timeout=60),
        "fast path": requests.post(api + "/runs/log-batch", json=batch, headers={"Origin": origin}, timeout=60),
        "ui": requests.get(STACK_URL + "/", headers={"Origin": origin}, timeout=60),
        "no origin": requests.get(api + "/runs/get", params={"run_id": run_id}, timeout=60),
        "preflight": requests.options(
            api + "/runs/log-batch",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
            timeout=60,
        ),
    }
    for what, response in answers.items():
        assert response.status_code in (200, 204), (what, response.status_code, response.text[:200])
        names = [name.lower() for name in _vary(response)]
        assert names.count("origin") == 1 and len(names) == len(set(names)), (what, response.headers)
    for what in ("flask POST", "flask GET", "fast path"):
        assert answers[what].headers["Access-Control-Allow-Origin"] == origin, what
    # MLflow's own refusals are untouched: a foreign site's POST, a foreign Host header (DNS rebinding).
    foreign = requests.post(api + "/runs/log-batch", json=batch, headers={"Origin": "https://evil.example"}, timeout=60)
    assert foreign.status_code == 403, foreign.text
    rebound = requests.get(api + "/runs/get", params={"run_id": run_id}, headers={"Host": "evil.example"}, timeout=60)
    assert rebound.status_code == 403, rebound.text
