"""Live: the chart with basic auth and an Ingress host, as its pods run (see test_chart_pods for the method).

Two replicas behind the prepare hook: the admin exists once prepare is done (readiness, the healthcheck with the
admin's login, passes on both); anonymous and wrong-password calls get 401 on every replica; a user created
through one replica logs in on the other (one user database, one secret key); the Ingress host is an allowed
Host header and a foreign one is refused.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.chart.chart import ci_values, render
from tests.chart_live.pods import Pods, postgres_uid, split_image

TRACKING_SERVER_IMAGE = os.environ.get("TRACKING_SERVER_IMAGE", "mlflow-stack/tracking-server:3.17.2")
ADMIN = ("admin", secrets.token_hex(12))
INGRESS_HOST = "mlflow.example.com"  # from ci/auth-ingress-tls-values.yaml


@pytest.fixture(scope="module")
def replicas() -> Iterator[tuple[Pods, list[str]]]:
    repository, tag = split_image(TRACKING_SERVER_IMAGE)
    manifests = render(
        ci_values("auth-ingress-tls"),
        set_values=[
            f"images.trackingServer.repository={repository}",
            f"images.trackingServer.tag={tag}",
            "trackingServer.replicas=2",
            f"postgresql.uid={postgres_uid()}",
        ],
    )
    pods = Pods(
        manifests,
        {
            "mlflow-postgres": {"password": secrets.token_hex(16)},
            "mlflow-s3": {
                "AWS_ACCESS_KEY_ID": "mlflow" + secrets.token_hex(4),
                "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
            },
            "mlflow-auth": {
                "admin-username": ADMIN[0],
                "admin-password": ADMIN[1],
                "flask-secret-key": secrets.token_hex(32),
            },
        },
    )
    pods.create_network()
    try:
        pods.run(pods.workload("StatefulSet", "postgres"))
        pods.run(pods.workload("StatefulSet", "minio"))
        deployment = pods.workload("Deployment", "tracking")
        names = [pods.run(deployment, index) for index in range(2)]
        prepare = pods.run(pods.workload("Job", "prepare"))
        assert pods.wait_exit(prepare, timeout=300) == 0, pods.logs(prepare)
        server: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
        for name in names:
            # Readiness runs the healthcheck with the admin's login: it passes only once prepare made the admin.
            pods.wait_ready(name, server, timeout=300)
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
