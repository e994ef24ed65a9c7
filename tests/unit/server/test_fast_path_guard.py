"""The version guard: the fast store and the fast HTTP path run only on the MLflow releases listed in
fast_path_guard.VERIFIED_MLFLOW_VERSIONS; on any other, every write goes through MLflow's own store and handlers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from mlflow_stack_server import fast_path_guard
from mlflow_stack_server.fast_http import FastTrackingWrites, fast_path_enabled
from mlflow_stack_server.fast_path_guard import (
    ON,
    SWITCHED_OFF,
    UNVERIFIED_MLFLOW,
    VERIFIED_MLFLOW_VERSIONS,
    fast_path_state,
)
from mlflow_stack_server.settings import Settings

UNLISTED = "3.99.0"
SERVER_ENVIRONMENT = {"MLFLOW_BACKEND_STORE_URI": "postgresql://u:p@db/mlflow", "MLFLOW_ARTIFACTS_BUCKET": "b"}


def test_the_installed_mlflow_is_a_verified_one() -> None:
    # The pinned MLflow (the host venv installs the image's lock) is the one the fast path's tests run against.
    assert fast_path_state(True) == fast_path_guard.FastPathState(True, ON, VERIFIED_MLFLOW_VERSIONS[0])


def test_an_unlisted_version_turns_it_off() -> None:
    state = fast_path_state(True, UNLISTED)
    assert (state.enabled, state.reason, state.mlflow_version) == (False, UNVERIFIED_MLFLOW, UNLISTED)
    assert state.describe() == (
        f"fast path off: MLflow {UNLISTED} is not a version it was verified against "
        f"({', '.join(VERIFIED_MLFLOW_VERSIONS)}); MLflow's own store and handlers answer every call"
    )


def test_switched_off_wins_on_any_version() -> None:
    for version in (*VERIFIED_MLFLOW_VERSIONS, UNLISTED):
        assert fast_path_state(False, version).reason == SWITCHED_OFF
        assert not fast_path_state(False, version).enabled


@pytest.fixture
def unlisted_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_path_guard, "installed_mlflow_version", lambda: UNLISTED)


@pytest.mark.usefixtures("unlisted_mlflow")
def test_store_plugin_hands_out_mlflows_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow_stack_server.fast_store import FastSqlAlchemyStore
    from mlflow_stack_server.store_plugin import tracking_store

    monkeypatch.setenv("MLFLOW_FAST_STORE", "on")
    store = tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path.as_uri())
    assert type(store) is SqlAlchemyStore and not isinstance(store, FastSqlAlchemyStore)


def test_store_plugin_hands_out_the_fast_store_on_a_verified_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow_stack_server.fast_store import FastSqlAlchemyStore
    from mlflow_stack_server.store_plugin import tracking_store

    monkeypatch.setenv("MLFLOW_FAST_STORE", "on")
    assert isinstance(tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path.as_uri()), FastSqlAlchemyStore)


class RecordingStore:
    """Stands in for the tracking store MLflow's handlers hand out: records what the fast path writes."""

    def __init__(self) -> None:
        self.batches: list[str] = []

    def log_batch(self, run_id: str, metrics: Any, params: Any, tags: Any) -> None:
        self.batches.append(run_id)


def _post_log_batch(monkeypatch: pytest.MonkeyPatch, enabled: bool) -> tuple[list[str], list[str]]:
    """One plain log-batch through the wrapper: (who answered, the batches the fast path wrote)."""
    from mlflow.server import handlers

    store = RecordingStore()
    monkeypatch.setattr(handlers, "_get_tracking_store", lambda: store)
    answered: list[str] = []

    async def mlflows_app(scope: Any, receive: Any, send: Any) -> None:
        answered.append("mlflow")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    body = json.dumps({"run_id": "r", "metrics": [{"key": "k", "value": 1, "timestamp": 1}]}).encode()
    scope = {"type": "http", "method": "POST", "path": "/api/2.0/mlflow/runs/log-batch", "headers": [
        (b"host", b"localhost"), (b"content-type", b"application/json")]}  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Any:
        return messages.pop(0)

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start" and not answered:
            answered.append(f"fast path ({message['status']})")

    anyio.run(FastTrackingWrites(mlflows_app, enabled), scope, receive, send)
    return answered, store.batches


@pytest.mark.usefixtures("unlisted_mlflow")
def test_no_write_goes_through_the_fast_http_path(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.from_environment({**SERVER_ENVIRONMENT, "MLFLOW_FAST_STORE": "on"})
    assert not fast_path_enabled(settings)
    assert _post_log_batch(monkeypatch, fast_path_enabled(settings)) == (["mlflow"], [])


def test_the_fast_http_path_writes_on_a_verified_version(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.from_environment({**SERVER_ENVIRONMENT, "MLFLOW_FAST_STORE": "on"})
    assert fast_path_enabled(settings)
    assert _post_log_batch(monkeypatch, fast_path_enabled(settings)) == (["fast path (200)"], ["r"])
