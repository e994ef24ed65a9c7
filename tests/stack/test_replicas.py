"""Prepare once, serve many: three prepares and three tracking servers started at the same instant on a fresh
database. The schema is migrated exactly once, every replica serves, a session made on one is valid on all, and a
login changed through one replica counts at the next request on every worker of every replica.

Runs a third stack (base compose file only: no published ports) with auth on, from this repository.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator

import pytest
import requests

from tests.stack.conftest import REPO
from tests.stack.fresh_stack import FreshStack

REPLICAS = 3
# Replicas are reached by container address; the Host header is one the server allows.
HOST_HEADER = {"Host": "tracking-server:5000"}


@pytest.fixture(scope="module")
def replicated() -> Iterator[FreshStack]:
    stack = FreshStack(REPO, f"{os.environ.get('COMPOSE_PROJECT_NAME', 'mlflow-stack')}-replicas")
    stack.destroy()
    yield stack
    stack.destroy()


def _compose(stack: FreshStack, *args: str, check: bool = True) -> str:
    # Only the base file: three replicas cannot publish the same host port, and nothing needs publishing.
    return stack.compose("-f", "docker-compose.yml", *args, extra={"MLFLOW_AUTH": "basic"}, check=check).stdout


def _addresses(stack: FreshStack) -> list[str]:
    names = _compose(stack, "ps", "--format", "{{.Name}}", "tracking-server").split()
    network = f"{stack.project}_frontend"
    addresses = []
    for name in sorted(names):
        inspected = stack.run(
            "docker", "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}', name
        )
        addresses.append(inspected.stdout.strip())
    return addresses


def test_three_replicas_on_a_fresh_database_migrate_once_and_all_serve(replicated: FreshStack) -> None:
    _compose(
        replicated, "up", "-d", "--wait", "--wait-timeout", "300",
        "--scale", f"tracking-server={REPLICAS}", "--scale", f"tracking-server-prepare={REPLICAS}",
    )  # fmt: skip
    logs = _compose(replicated, "logs", "--no-log-prefix", "tracking-server-prepare")
    print(logs)
    migrated = re.findall(r"migrating schema from an empty database to (\w+)", logs)
    current = re.findall(r"schema already at (\w+): nothing to migrate", logs)
    assert len(migrated) == 1, logs
    assert len(current) == REPLICAS - 1, logs
    assert set(current) == set(migrated)
    assert logs.count("created database mlflow_auth") == 1
    # One alembic row at the head the prepare migrated to, and one admin in the auth database.
    query = "SELECT version_num FROM alembic_version"
    versions = _compose(
        replicated, "exec", "-T", "postgres", "sh", "-c", f'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -Atc "{query}"'
    )
    assert versions.split() == migrated
    admins = _compose(
        replicated, "exec", "-T", "postgres", "sh", "-c", 'psql -U "$POSTGRES_USER" -d mlflow_auth -Atc "SELECT count(*) FROM users"'
    )  # fmt: skip
    assert admins.strip() == "1"
    servers = _compose(replicated, "ps", "--format", "{{.Name}} {{.Health}}", "tracking-server").splitlines()
    assert len(servers) == REPLICAS
    assert all(line.endswith(" healthy") for line in servers), servers
    # Serving replicas never migrate: they only checked.
    server_logs = _compose(replicated, "logs", "--no-log-prefix", "tracking-server")
    assert "migrating schema" not in server_logs
    assert server_logs.count("starting mlflow server (auth: basic") == REPLICAS


def test_a_session_made_on_one_replica_is_valid_on_every_replica(replicated: FreshStack) -> None:
    admin_password = replicated.secrets()["mlflow_auth_admin_password"]
    admin = ("admin", admin_password)
    first, *others = _addresses(replicated)
    assert len(others) == REPLICAS - 1
    # The sign-up form signs a CSRF token into the Flask session cookie with MLFLOW_FLASK_SERVER_SECRET_KEY.
    form = requests.get(f"http://{first}:5000/signup", auth=admin, headers=HOST_HEADER, timeout=15)
    assert form.status_code == 200, form.text[:300]
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token
    cookie = "; ".join(f"{c.name}={c.value}" for c in form.cookies)
    assert "session=" in cookie
    for number, address in enumerate([first, *others]):
        user = f"replica-user-{number}-{os.getpid()}"
        created = requests.post(
            f"http://{address}:5000/api/2.0/mlflow/users/create-ui",
            data={"csrf_token": token.group(1), "username": user, "password": "a-long-password-123"},
            headers={**HOST_HEADER, "Cookie": cookie},
            auth=admin,
            timeout=15,
        )
        assert created.status_code == 200, (address, created.status_code, created.text[:300])
        assert f"Successfully signed up user: {user}" in created.text
    # The check is real: the same token without the session cookie is refused.
    refused = requests.post(
        f"http://{others[0]}:5000/api/2.0/mlflow/users/create-ui",
        data={"csrf_token": token.group(1), "username": "no-session-user", "password": "a-long-password-123"},
        headers=HOST_HEADER,
        auth=admin,
        timeout=15,
    )
    assert refused.status_code == 400, refused.text[:300]


# Requests per replica and step: with MLFLOW_WORKERS=2 each, enough that every worker has seen (and cached) the
# login before a change, and that a stale worker would be met after it.
ROUNDS = 8


def _statuses(method: str, urls: list[str], login: tuple[str, str], **kwargs: object) -> set[int]:
    answers = set()
    for _ in range(ROUNDS):
        for url in urls:
            answer = requests.request(method, url, auth=login, headers=HOST_HEADER, timeout=15, **kwargs)  # type: ignore[arg-type]
            answers.add(answer.status_code)
    return answers


def test_a_removed_grant_demotion_changed_password_and_deletion_count_on_every_replica(
    replicated: FreshStack,
) -> None:
    """Issue 19, item 3, with MLFLOW_AUTH=basic: each change (a grant, the admin flag, the password, the user) is
    made through one replica while every worker of every replica holds the login in MLflow's login cache
    (MLFLOW_AUTH_CACHE_SECONDS=60); every request after it, on every replica, already sees it (login_cache.py)."""
    admin = ("admin", replicated.secrets()["mlflow_auth_admin_password"])
    addresses = _addresses(replicated)
    assert len(addresses) == REPLICAS
    servers = [f"http://{address}:5000" for address in addresses]
    user, password, new_password = f"revoked-{os.getpid()}", "first-password-123", "second-password-456"

    def admin_call(method: str, replica: int, path: str, body: dict[str, object]) -> dict[str, object]:
        answer = requests.request(
            method, servers[replica] + path, json=body, auth=admin, headers=HOST_HEADER, timeout=15
        )
        assert answer.status_code == 200, (path, answer.status_code, answer.text[:300])
        return answer.json() if answer.content else {}

    admin_call("POST", 0, "/api/2.0/mlflow/users/create", {"username": user, "password": password})
    admin_call("PATCH", 0, "/api/2.0/mlflow/users/update-admin", {"username": user, "is_admin": True})
    experiment = admin_call("POST", 0, "/api/2.0/mlflow/experiments/create", {"name": f"revocation-{os.getpid()}"})
    # The admin's experiment: the user (default READ) may upload into it only as an admin. Artifact uploads are
    # FastAPI routes, which take the admin flag from the cached login.
    uploads = [
        f"{server}/api/2.0/mlflow-artifacts/artifacts/{experiment['experiment_id']}/run/a.txt" for server in servers
    ]
    reads = [
        f"{server}/api/2.0/mlflow/experiments/get?experiment_id={experiment['experiment_id']}" for server in servers
    ]

    # A removed grant: MLflow reads grants on every request (no cache of its own), checked here all the same.
    editor = (f"editor-{os.getpid()}", "editor-password-123")
    admin_call("POST", 0, "/api/2.0/mlflow/users/create", {"username": editor[0], "password": editor[1]})
    grant = {"username": editor[0], "resource_type": "experiment", "resource_id": experiment["experiment_id"]}
    admin_call("POST", 0, "/api/3.0/mlflow/users/permissions/grant", {**grant, "permission": "EDIT"})
    assert _statuses("PUT", uploads, editor, data=b"as an editor") == {200}
    changed = time.monotonic()
    admin_call("POST", 2, "/api/3.0/mlflow/users/permissions/revoke", grant)
    assert _statuses("PUT", uploads, editor, data=b"revoked") == {403}
    print(f"grant: all {ROUNDS * REPLICAS} uploads after it refused, the last {time.monotonic() - changed:.2f} s after")

    assert _statuses("PUT", uploads, (user, password), data=b"as an admin") == {200}
    changed = time.monotonic()
    admin_call("PATCH", 1, "/api/2.0/mlflow/users/update-admin", {"username": user, "is_admin": False})
    assert _statuses("PUT", uploads, (user, password), data=b"demoted") == {403}
    print(
        f"demotion: all {ROUNDS * REPLICAS} requests after it refused, the last {time.monotonic() - changed:.2f} s after"
    )

    assert _statuses("GET", reads, (user, password)) == {200}
    changed = time.monotonic()
    admin_call("PATCH", 2, "/api/2.0/mlflow/users/update-password", {"username": user, "password": new_password})
    assert _statuses("GET", reads, (user, password)) == {401}
    # Each refused old password pays a hash: the time is theirs, not a delay before the change counted.
    print(
        f"password: all {ROUNDS * REPLICAS} old logins after it refused, the last {time.monotonic() - changed:.2f} s after"
    )
    assert _statuses("GET", reads, (user, new_password)) == {200}

    changed = time.monotonic()
    admin_call("DELETE", 0, "/api/2.0/mlflow/users/delete", {"username": user})
    assert _statuses("GET", reads, (user, new_password)) == {401}
    elapsed = time.monotonic() - changed
    print(f"deletion: all {ROUNDS * REPLICAS} logins after it refused, the last {elapsed:.2f} s after")
    # The bound, met with margin: every request after the change already refused.
    assert elapsed < 2
