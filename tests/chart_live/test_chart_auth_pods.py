"""Live: the chart with basic auth and an Ingress host, as its pods run (see test_chart_pods for the method).

Two replicas, each with its prepare init container: readiness passes on both; anonymous and wrong-password
calls get 401 on every replica; a user created through one replica logs in on the other (one user database,
one secret key); the Ingress host is an allowed Host header and a foreign one is refused.

Issue 23, at run time: the Service is on port 80 (a forwarder stands in for kube-proxy), and the model
server's rendered client settings (its tracking URI `http://<service>:80`, the login from auth.clientSecret)
work with MLflow's own client: prepare created that client user, and the Host header `<service>` that HTTP
clients send on port 80 is allowed (items 5 and 8). After the admin's password is changed through the API,
both replicas stay ready: readiness no longer logs in as the admin (item 4).
"""

from __future__ import annotations

import functools
import os
import secrets
import subprocess
import time
from collections.abc import Iterator

import pytest
import requests

from tests.chart_live.pods import TRACKING_SERVER_IMAGE, Pods, docker, install, tracking_pods
from tests.support.waiting import wait_until

ADMIN = ("admin", secrets.token_hex(12))
CLIENT = ("trainer", secrets.token_hex(12))
INGRESS_HOST = "mlflow.example.com"  # from ci/auth-ingress-tls-values.yaml


@pytest.fixture(scope="module")
def replicas() -> Iterator[tuple[Pods, list[str]]]:
    pods = tracking_pods(
        "auth-ingress-tls",
        set_values=["trackingServer.replicas=2", "trackingServer.service.port=80"],
        extra_secrets={
            "mlflow-auth": {
                "admin-username": ADMIN[0],
                "admin-password": ADMIN[1],
                "flask-secret-key": secrets.token_hex(32),
            },
            "mlflow-trainer-login": {"username": CLIENT[0], "password": CLIENT[1]},
        },
    )
    try:
        names = install(pods).replicas
        assert pods.start_forwarders(TRACKING_SERVER_IMAGE), "a Service on port 80 targets the container's 5000"
        yield pods, names
    finally:
        if os.environ.get("KEEP_CHART_PODS") != "1":
            pods.remove_all()


def call(
    pods: Pods, replica: str, host: str, auth: tuple[str, str] | None, path: str = "/experiments/search"
) -> requests.Response:
    return requests.get(
        f"http://{pods.ip(replica)}:5000/api/2.0/mlflow{path}",
        params={"max_results": 1} if path == "/experiments/search" else None,
        headers={"Host": host},
        auth=auth,
        timeout=20,
    )


def test_every_replica_demands_a_login(replicas: tuple[Pods, list[str]]) -> None:
    pods, names = replicas
    for name in names:
        assert call(pods, name, INGRESS_HOST, None).status_code == 401
        assert call(pods, name, INGRESS_HOST, (ADMIN[0], "wrong")).status_code == 401
        assert call(pods, name, INGRESS_HOST, ADMIN).status_code == 200


def test_a_user_created_on_one_replica_logs_in_on_the_other(replicas: tuple[Pods, list[str]]) -> None:
    pods, (first, second) = replicas
    user = ("trainer-" + secrets.token_hex(3), secrets.token_hex(12))
    created = requests.post(
        f"http://{pods.ip(first)}:5000/api/2.0/mlflow/users/create",
        json={"username": user[0], "password": user[1]},
        headers={"Host": INGRESS_HOST},
        auth=ADMIN,
        timeout=20,
    )
    assert created.status_code == 200, created.text[:300]
    assert call(pods, second, INGRESS_HOST, user).status_code == 200
    assert call(pods, second, INGRESS_HOST, (user[0], "wrong")).status_code == 401


def test_ingress_host_is_allowed_and_a_foreign_host_is_not(replicas: tuple[Pods, list[str]]) -> None:
    pods, names = replicas
    assert call(pods, names[0], f"{INGRESS_HOST}:443", ADMIN).status_code == 200
    assert call(pods, names[0], "attacker.example.net", ADMIN).status_code == 403


def test_the_client_login_works_through_the_service_on_port_80(replicas: tuple[Pods, list[str]]) -> None:
    """The model server's rendered settings, used by MLflow's client inside the network (items 5 and 8)."""
    pods, _ = replicas
    model_server = pods.workload("Deployment", "model-server")["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in model_server["env"]}
    uri = env["MLFLOW_TRACKING_URI"]["value"]
    assert uri.endswith(":80")
    script = (
        "from mlflow import MlflowClient\n"
        "client = MlflowClient()\n"
        "experiment = client.create_experiment('port-80-' + __import__('secrets').token_hex(3))\n"
        "print(len(client.search_experiments()), experiment)\n"
    )
    result = docker(
        "run", "--rm", "--network", pods.network, "--entrypoint", "python",
        "-e", f"MLFLOW_TRACKING_URI={uri}", "-e", "MLFLOW_DISABLE_TELEMETRY=true",
        "-e", f"MLFLOW_TRACKING_USERNAME={CLIENT[0]}", "-e", f"MLFLOW_TRACKING_PASSWORD={CLIENT[1]}",
        TRACKING_SERVER_IMAGE, "-c", script, check=False,
    )  # fmt: skip
    # Before: 403 (Host `<service>` without :80 was not allowed) and 401 (the client user never existed).
    assert result.returncode == 0, result.stdout + result.stderr[-1500:]


def test_replicas_stay_ready_after_the_admin_password_changes(replicas: tuple[Pods, list[str]]) -> None:
    """Item 4: readiness logged in as the admin, so a password change made every replica unready at once."""
    pods, names = replicas
    new_password = secrets.token_hex(12)
    changed = requests.patch(
        f"http://{pods.ip(names[0])}:5000/api/2.0/mlflow/users/update-password",
        json={"username": ADMIN[0], "password": new_password, "current_password": ADMIN[1]},
        headers={"Host": INGRESS_HOST},
        auth=ADMIN,
        timeout=20,
    )
    assert changed.status_code == 200, changed.text[:300]
    server = pods.workload("Deployment", "tracking")["spec"]["template"]["spec"]["containers"][0]
    # The Secret still holds the old password; MLflow's login cache forgets it within 60 s on other workers.
    deadline = time.monotonic() + 90
    wait_until(
        lambda: call(pods, names[1], INGRESS_HOST, ADMIN).status_code == 401, 90,
        "the old admin password still logs in", interval=3,
    )  # fmt: skip
    for name in names:
        assert call(pods, name, INGRESS_HOST, (ADMIN[0], new_password)).status_code == 200
        assert pods.probe(name, server, "readinessProbe"), f"{name} became unready after the admin's password changed"
    # What the old probe did (the admin login from the Secret) now fails: the check above is not vacuous.
    for name in names:
        old = wait_until(
            functools.partial(_failing_healthcheck, name), max(0.0, deadline - time.monotonic()),
            f"{name} still accepts the old admin password", interval=3,
        )  # fmt: skip
        assert "HTTP 401" in old.stderr, old.stderr


def _failing_healthcheck(name: str) -> subprocess.CompletedProcess[str] | None:
    """The admin-login healthcheck's outcome in container `name` once it fails; None while it still passes."""
    result = docker("exec", name, "tracking-server-healthcheck", check=False)
    return result if result.returncode != 0 else None
