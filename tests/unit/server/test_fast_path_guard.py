"""The version guard: the fast store and the fast HTTP path run only on the MLflow releases listed in
fast_path_guard.VERIFIED_MLFLOW_VERSIONS; on any other, every write goes through MLflow's own store and handlers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from mlflow_stack_server import fast_path_guard
from mlflow_stack_server.fast_http import FastTrackingWrites, fast_path_enabled
from mlflow_stack_server.fast_path_auth import allow_everyone
from mlflow_stack_server.fast_path_guard import (
    NO_AUTH_HOOK,
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

    anyio.run(FastTrackingWrites(mlflows_app, allow_everyone if enabled else None), scope, receive, send)
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


# ---- the authorization guard: no hook for the active MLFLOW_AUTH mode, no fast path ----------------------------

# A mode Settings does not offer (yet): whatever login kind is added next, before it gets a hook.
MODES_WITHOUT_HOOK = ("sso-of-tomorrow",)


def test_a_mode_without_a_hook_turns_the_http_path_off() -> None:
    for mode in MODES_WITHOUT_HOOK:
        state = fast_path_state(True, auth_mode=mode)
        assert (state.enabled, state.reason) == (False, NO_AUTH_HOOK)
        assert state.describe() == (
            f"fast path off: no authorization hook for MLFLOW_AUTH={mode}; MLflow's app authorizes and answers "
            "every call"
        )
    for mode in ("none", "basic", "oidc"):
        assert fast_path_state(True, auth_mode=mode) == fast_path_guard.FastPathState(
            True, ON, VERIFIED_MLFLOW_VERSIONS[0], mode
        )
    # Switched off and an unverified MLflow still say so first.
    assert fast_path_state(False, auth_mode="oidc").reason == SWITCHED_OFF
    assert fast_path_state(True, UNLISTED, auth_mode="oidc").reason == UNVERIFIED_MLFLOW


class RecordingRunStore(RecordingStore):
    """Also records the other two writes the fast path answers."""

    def set_tag(self, run_id: str, tag: Any) -> None:
        self.batches.append(f"set-tag {run_id}")

    def update_run_info(self, run_id: str, status: Any, end_time: Any, run_name: Any) -> Any:
        from mlflow.entities import RunInfo

        self.batches.append(f"update {run_id}")
        return RunInfo(run_id, "e", "u", "FINISHED", 1, end_time, "active", run_name="n")


FAST_PATH_REQUESTS = [
    (f"{prefix}/mlflow/runs/{path}", body)
    for prefix in ("/api/2.0", "/ajax-api/2.0")
    for path, body in (
        ("log-batch", {"run_id": "r", "metrics": [{"key": "k", "value": 1, "timestamp": 1}]}),
        ("set-tag", {"run_id": "r", "key": "k", "value": "v"}),
        ("update", {"run_id": "r", "status": "FINISHED", "end_time": 2}),
    )
]


def _through_the_server_app(monkeypatch: pytest.MonkeyPatch, auth_mode: str) -> tuple[list[str], list[str]]:
    """Every request the fast path answers, sent through the app the server builds (proxied_artifacts._wrap) for
    `auth_mode`: (who answered each, what the fast path wrote). The inner app stands in for the auth app of a
    mode the fast path does not know: whatever it is, it must see every request."""
    from mlflow.server import handlers

    from mlflow_stack_server.proxied_artifacts import _wrap

    store = RecordingRunStore()
    monkeypatch.setattr(handlers, "_get_tracking_store", lambda: store)
    answered: list[str] = []

    async def auth_app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        answered.append(f"auth app ({json.loads(message['body'])['run_id']})")
        await send({"type": "http.response.start", "status": 403, "headers": []})
        await send({"type": "http.response.body", "body": b"Permission denied"})

    settings = dataclasses.replace(
        Settings.from_environment({**SERVER_ENVIRONMENT, "MLFLOW_FAST_STORE": "on"}), auth=auth_mode
    )
    app = _wrap(auth_app, settings)
    for path, body in FAST_PATH_REQUESTS:
        scope = {"type": "http", "method": "POST", "path": path, "query_string": b"", "headers": [
            (b"host", b"localhost"), (b"content-type", b"application/json")]}  # fmt: skip
        messages = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]

        async def receive(messages: list[Any] = messages) -> Any:
            return messages.pop(0)

        index = len(answered)

        async def send_recorded(message: Any, index: int = index) -> None:
            if message["type"] == "http.response.start" and len(answered) == index:
                answered.append(f"fast path ({message['status']})")

        anyio.run(app, scope, receive, send_recorded)
    return answered, store.batches


@pytest.mark.parametrize("mode", MODES_WITHOUT_HOOK)
def test_a_mode_without_a_hook_cannot_write_through_the_fast_path(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    answered, written = _through_the_server_app(monkeypatch, mode)
    assert answered == ["auth app (r)"] * len(FAST_PATH_REQUESTS)
    assert written == []


def test_without_logins_the_same_requests_are_written_by_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # The control: the requests above are ones the fast path answers when its mode has a hook.
    answered, written = _through_the_server_app(monkeypatch, "none")
    assert answered == ["fast path (200)"] * len(FAST_PATH_REQUESTS)
    assert written == ["r", "set-tag r", "update r"] * 2


def test_oidc_is_not_wired_around_the_plugins_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """Around the auth app nobody is known yet (the plugin's AuthMiddleware finds the caller inside it): with oidc,
    `_wrap` wires no deciding fast path there (only, when given one, fast_path_oidc's front hook, which answers
    nothing but what the inner path remembered), so the auth app sees every request and nothing is written
    unchecked. The fast path is put inside the plugin's app instead
    (test_the_oidc_app_has_the_fast_path_after_its_logins)."""
    answered, written = _through_the_server_app(monkeypatch, "oidc")
    assert answered == ["auth app (r)"] * len(FAST_PATH_REQUESTS)
    assert written == []


# Builds the server's OIDC app (the `proxied-artifacts-oidc` factory) and prints the plugin app's middleware, first
# (outermost) to last, and the module of the fast path's authorization hook.
SHOW_OIDC_MIDDLEWARE = """
import json
from mlflow_stack_server.fast_http import FastTrackingWrites
from mlflow_stack_server.proxied_artifacts import create_app_with_oidc
create_app_with_oidc()
from mlflow_oidc_auth.app import app
layers = [getattr(m.cls, "__name__", str(m.cls)) for m in app.user_middleware]
# The plugin's decision, under the allowance memory that wraps it (remember_allowances sets __wrapped__).
hooks = [
    getattr(m.kwargs["authorize"], "__wrapped__", m.kwargs["authorize"]).__module__
    for m in app.user_middleware if m.cls is FastTrackingWrites
]
print(json.dumps([layers, hooks]))
"""


def _oidc_app_middleware(tmp_path: Path, fast_store: str) -> Any:
    return json.loads(run_in_the_oidc_app(tmp_path, fast_store, SHOW_OIDC_MIDDLEWARE))


def run_in_the_oidc_app(tmp_path: Path, fast_store: str, script: str) -> str:
    """Run `script` in a fresh interpreter with the server's OIDC environment (no provider is contacted); its last
    line of output."""
    import os
    import subprocess
    import sys

    from mlflow_stack_server.oidc_auth import plugin_environment

    tmp_path.mkdir()
    stack = {
        **SERVER_ENVIRONMENT,
        "MLFLOW_AUTH": "oidc",
        "MLFLOW_FAST_STORE": fast_store,
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/mlflow.db",
        "MLFLOW_OIDC_DATABASE_URI": f"sqlite:///{tmp_path}/users.db",
        "MLFLOW_OIDC_ISSUER": "https://idp.invalid",  # never contacted: nothing is served
        "MLFLOW_OIDC_CLIENT_ID": "mlflow",
        "MLFLOW_OIDC_CLIENT_SECRET": "not-used",
        "MLFLOW_OIDC_REDIRECT_URI": "http://127.0.0.1/callback",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-key",
    }
    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "OIDC_", "_MLFLOW_"))},
        **stack,
        **plugin_environment(Settings.from_environment(stack), None),
        "LOG_LEVEL": "WARNING",
    }
    result = subprocess.run([sys.executable, "-c", script], env=environ, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_the_oidc_app_has_the_fast_path_after_its_logins(tmp_path: Path) -> None:
    """oidc has a hook, and it is really wired: innermost in the plugin's middleware (after its ProxyHeaders,
    Session, WorkspaceContext, Auth and permission middlewares), asking fast_path_oidc's hook; with the fast path
    switched off, not at all. (tests/fast_store/test_fast_path_oidc_generated.py shows it answering.)"""
    layers, hooks = _oidc_app_middleware(tmp_path / "on", "on")
    assert layers[:4] == ["ProxyHeadersMiddleware", "SessionMiddleware", "WorkspaceContextMiddleware", "AuthMiddleware"]
    assert layers[-1] == "FastTrackingWrites" and layers.count("FastTrackingWrites") == 1
    assert hooks == ["mlflow_stack_server.fast_path_oidc"]
    layers, hooks = _oidc_app_middleware(tmp_path / "off", "off")
    assert "FastTrackingWrites" not in layers and hooks == []
