"""MLFLOW_AUTH=oidc: no route the stack adds to mlflow-oidc-auth's app is served to a user on "signed in" alone.

A real server (uvicorn, the `proxied-artifacts-oidc` factory, SQLite for the tracking and the plugin's database,
a local artifact folder) and real accounts made with `mlflow-stack-token` (the token is the basic-auth password,
as a trainer uses it). For every route `stream_artifact_transfers` adds, with the OIDC dependency: anonymous 401,
a signed-in user without a grant 403, then READ lets GET through and still refuses PUT, EDIT lets PUT through.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute

from mlflow_stack_server.oidc_auth import plugin_environment
from mlflow_stack_server.proxied_artifacts import oidc_authorization
from mlflow_stack_server.settings import Settings
from mlflow_stack_server.streamed_artifacts import stream_artifact_transfers
from tests.support.waiting import wait_until

SERVER_PACKAGE = Path(__file__).resolve().parents[3] / "tracking-server"
CACHE_SECONDS = 1.0  # oidc_auth.PERMISSION_CACHE_TTL_SECONDS


def added_routes() -> list[tuple[str, str]]:
    """(method, path) of every route the stack adds to the OIDC app, each checked to carry the plugin's decision."""
    app = stream_artifact_transfers(FastAPI(), 5 * 1024 * 1024, [Depends(oidc_authorization)])
    routes = [route for route in app.router.routes if isinstance(route, APIRoute)]
    for route in routes:
        assert next(dependency.call for dependency in route.dependant.dependencies) is oidc_authorization
    # Uploads first, so that each download then finds its file.
    return sorted(((method, route.path) for route in routes for method in route.methods or ()), reverse=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    environ: dict[str, str]

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", "from mlflow_stack_server.stack_token import main; main()", *args],
            env=self.environ,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("oidc")
    port = free_port()
    stack = {
        "MLFLOW_AUTH": "oidc",
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{folder}/mlflow.db",
        "MLFLOW_ARTIFACTS_DESTINATION": str(folder / "artifacts"),
        "MLFLOW_OIDC_DATABASE_URI": f"sqlite:///{folder}/users.db",
        # Never contacted: the routes under test are reached with tokens, which live in the database.
        "MLFLOW_OIDC_ISSUER": "https://idp.invalid",
        "MLFLOW_OIDC_CLIENT_ID": "mlflow",
        "MLFLOW_OIDC_CLIENT_SECRET": "not-used",
        "MLFLOW_OIDC_REDIRECT_URI": f"http://127.0.0.1:{port}/callback",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-key",
        "MLFLOW_METRICS": "off",
        "MLFLOW_UI_WORKFLOW": "",
    }
    settings = Settings.from_environment(stack)
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "OIDC_", "_MLFLOW_"))},
        **stack,
        **plugin_environment(settings, None),
        # What `mlflow server` hands its workers (mlflow/server/__init__.py).
        "_MLFLOW_SERVER_FILE_STORE": settings.backend_store_uri,
        "_MLFLOW_SERVER_REGISTRY_STORE": settings.backend_store_uri,
        "_MLFLOW_SERVER_ARTIFACT_ROOT": "mlflow-artifacts:/",
        "_MLFLOW_SERVER_SERVE_ARTIFACTS": "true",
        "_MLFLOW_SERVER_ARTIFACT_DESTINATION": str(folder / "artifacts"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SERVER_PACKAGE), os.environ.get("PYTHONPATH", "")])),
    }
    factory = "mlflow_stack_server.proxied_artifacts:create_app_with_oidc"
    command = [sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(
        command,
        env=environ,
        cwd=folder,
        stdout=open(folder / "server.log", "wb"),  # noqa: SIM115 (closed with the process)
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert process.poll() is None, (folder / "server.log").read_text()[-3000:]
        return requests.get(f"{url}/health", timeout=2).status_code == 200

    try:
        # A busy machine can leave a starting server's first answers slower than the timeout: not yet, not failed.
        wait_until(answers, 180, "the OIDC server did not start in 180 s", ignoring=(requests.RequestException,))
        yield Server(url, environ)
    finally:
        process.terminate()
        process.wait(timeout=30)


def artifact_url(server: Server, path: str, experiment_id: str, run_id: str) -> str:
    artifact = f"{experiment_id}/{run_id}/artifacts/probe.txt"
    return server.url + path.replace("{artifact_path:path}", artifact)


def test_every_added_route_needs_a_grant(server: Server) -> None:
    owner = ("owner", server.cli("create", "owner", "--service-account", "--name", "test"))
    stranger = ("stranger", server.cli("create", "stranger", "--service-account", "--name", "test"))
    api = f"{server.url}/api/2.0/mlflow"
    experiment = requests.post(f"{api}/experiments/create", json={"name": "private"}, auth=owner, timeout=30)
    assert experiment.status_code == 200, experiment.text
    experiment_id = experiment.json()["experiment_id"]
    run = requests.post(f"{api}/runs/create", json={"experiment_id": experiment_id}, auth=owner, timeout=30)
    assert run.status_code == 200, run.text
    run_id = run.json()["run"]["info"]["run_id"]

    routes = added_routes()
    assert len(routes) == 4  # GET and PUT, under /api and /ajax-api
    for method, path in routes:
        url = artifact_url(server, path, experiment_id, run_id)
        body = b"bytes" if method == "PUT" else None
        # The creator holds MANAGE: the route itself works.
        assert requests.request(method, url, data=body, auth=owner, timeout=30).status_code == 200, (method, path)
        assert requests.request(method, url, data=body, timeout=30).status_code == 401, (method, path)
        denied = requests.request(method, url, data=body, auth=stranger, timeout=30)
        assert denied.status_code == 403, (method, path, denied.status_code, denied.text)

    server.cli("grant", "--user", "stranger", "--experiment", experiment_id, "--permission", "READ")
    time.sleep(CACHE_SECONDS + 0.5)
    for method, path in routes:
        url = artifact_url(server, path, experiment_id, run_id)
        body = b"bytes" if method == "PUT" else None
        expected = 200 if method == "GET" else 403
        assert requests.request(method, url, data=body, auth=stranger, timeout=30).status_code == expected

    server.cli("grant", "--user", "stranger", "--experiment", experiment_id, "--permission", "EDIT")
    time.sleep(CACHE_SECONDS + 0.5)
    for method, path in routes:
        url = artifact_url(server, path, experiment_id, run_id)
        body = b"bytes" if method == "PUT" else None
        assert requests.request(method, url, data=body, auth=stranger, timeout=30).status_code == 200

    server.cli("revoke", "stranger", "--all")
    get_path = next(path for method, path in routes if method == "GET")
    url = artifact_url(server, get_path, experiment_id, run_id)
    assert requests.get(url, auth=stranger, timeout=30).status_code == 401  # a revoked token: no cache


def test_the_token_cli_lists_and_refuses_clearly(server: Server) -> None:
    server.cli("create", "lister", "--service-account", "--name", "ci")
    listed = server.cli("list", "lister", "--json")
    assert '"name": "ci"' in listed and "mlf_" not in listed  # never the secret
    missing = subprocess.run(
        [sys.executable, "-c", "from mlflow_stack_server.stack_token import main; main()", "list", "nobody"],
        env=server.environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (missing.returncode, missing.stderr.strip().splitlines()[-1]) == (
        1,
        "mlflow-stack-token: error: no user 'nobody'",
    )
    usage = subprocess.run(
        [sys.executable, "-c", "from mlflow_stack_server.stack_token import main; main()", "grant", "--user", "x"],
        env=server.environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert usage.returncode == 2 and len(usage.stderr.strip().splitlines()) == 1
