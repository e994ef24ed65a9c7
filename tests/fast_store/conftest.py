"""A throwaway PostgreSQL (the stack's image) for store-level tests: no compose stack, no shared state.

Each test session starts one container on a random loopback port with a random password and removes it at
the end. The tracking-server package is imported from its folder: the image installs it, the host venv does not.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy

from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tracking-server"))
POSTGRES_IMAGE = os.environ.get("POSTGRES_IMAGE", "postgres:16-bookworm")
READY_TIMEOUT = 60.0


def _docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True, timeout=120).stdout.strip()


@contextmanager
def postgres_container() -> Iterator[str]:
    """postgresql+psycopg2://user:password@127.0.0.1:PORT (no database name): the server of a fresh container,
    removed on exit. Also used outside pytest's fixtures by tests/upstream/upstream_store_plugin.py."""
    password = secrets.token_hex(16)
    name = f"mlflow-stack-store-test-{uuid.uuid4().hex[:8]}"
    _docker(
        "run", "--detach", "--rm", "--name", name, "--env", f"POSTGRES_PASSWORD={password}",
        "--env", "POSTGRES_USER=store_test", "--publish", "127.0.0.1::5432", POSTGRES_IMAGE,
        # Durability is not under test; fsync off keeps the container's disk writes out of the timings.
        "postgres", "-c", "fsync=off", "-c", "max_connections=200",
    )  # fmt: skip
    try:
        port = _docker("port", name, "5432/tcp").splitlines()[0].rsplit(":", 1)[1]
        server = f"postgresql+psycopg2://store_test:{password}@127.0.0.1:{port}"
        engine = sqlalchemy.create_engine(server + "/postgres", isolation_level="AUTOCOMMIT")

        def answers() -> bool:
            with engine.connect() as connection:
                return connection.execute(sqlalchemy.text("SELECT 1")).scalar() == 1

        # The image restarts the server once after its first-start initialisation; wait that out too.
        wait_until(
            answers, READY_TIMEOUT, f"Postgres in {name} did not answer within {READY_TIMEOUT:.0f} s",
            ignoring=(sqlalchemy.exc.OperationalError,),
        )  # fmt: skip
        engine.dispose()
        yield server
    finally:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True, check=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """postgresql+psycopg2://user:password@127.0.0.1:PORT (no database name): the server of a fresh container."""
    with postgres_container() as server:
        yield server


def create_database(server: str, template: str = "template1") -> str:
    """A new database on the server (a copy of `template`); its full URI."""
    name = f"db_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(server + "/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    engine.dispose()
    return f"{server}/{name}"


@pytest.fixture(scope="session")
def migrated_server(postgres_server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(server, template): a database with MLflow's schema migrated once, copied for each store (seconds saved)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = create_database(postgres_server)
    store = SqlAlchemyStore(uri, tmp_path_factory.mktemp("template-artifacts").as_uri())
    store.engine.dispose()
    SqlAlchemyStore._engine_map.pop(uri, None)  # a template may have no open connections
    return postgres_server, uri.rsplit("/", 1)[1]


def fresh_database(migrated_server: tuple[str, str]) -> str:
    return create_database(*migrated_server)
