"""MLFLOW_AUTH=oidc: the plugin's Flask mount runs MLflow's Flask requests side by side on the worker's request
threads (oidc_wsgi.py), still with the caller in the environ and still recognised by the plugin as its Flask mount."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import anyio
import anyio.to_thread
from flask import Flask, request
from mlflow_oidc_auth.entities.auth_context import AUTH_CONTEXT_KEY, AuthContext
from mlflow_oidc_auth.middleware.auth_aware_wsgi_middleware import AuthAwareWSGIMiddleware

from mlflow_stack_server.asgi import ASGIApp, Message
from mlflow_stack_server.oidc_wsgi import AuthAwareWSGIOnRequestThreads
from tests.unit.server.test_fast_path_guard import run_in_the_oidc_app

ALONE = "alone"  # what a request answers when no second one arrived while it waited


def _waits_for_a_second_request(wait_seconds: float) -> Flask:
    """A Flask app whose /slow waits until a second /slow arrives (or `wait_seconds` passed), then answers the
    caller the plugin put in the environ and whether both were in Flask at the same time."""
    app = Flask(__name__)
    both_inside = threading.Barrier(2, timeout=wait_seconds)

    @app.post("/slow")
    def slow() -> str:
        try:
            both_inside.wait()
            together = "together"
        except threading.BrokenBarrierError:
            together = ALONE
        context = request.environ.get(AUTH_CONTEXT_KEY)
        caller = context.username if isinstance(context, AuthContext) else "nobody"
        return f"{caller} {together} {request.get_data(as_text=True)}"

    return app


async def _post(app: ASGIApp, username: str) -> tuple[int, str]:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/slow",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(username)).encode())],
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
        AUTH_CONTEXT_KEY: AuthContext(username=username, is_admin=False),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": username.encode(), "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body.decode()


def _two_at_once(app: ASGIApp, request_threads: int) -> list[tuple[int, str]]:
    """Two requests sent at once, with the worker's thread cap at `request_threads` (as ProxiedArtifactsOnly sets
    it from MLFLOW_REQUEST_THREADS)."""
    answers: dict[str, tuple[int, str]] = {}

    async def main() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = request_threads

        async def one(username: str) -> None:
            answers[username] = await _post(app, username)

        async with anyio.create_task_group() as group:
            group.start_soon(one, "alice")
            group.start_soon(one, "bob")

    anyio.run(main)
    return [answers["alice"], answers["bob"]]


def test_two_slow_flask_requests_run_at_once_each_with_its_caller() -> None:
    app = AuthAwareWSGIOnRequestThreads(_waits_for_a_second_request(wait_seconds=10))
    assert _two_at_once(app, request_threads=2) == [(200, "alice together alice"), (200, "bob together bob")]


def test_no_more_flask_requests_at_once_than_request_threads() -> None:
    app = AuthAwareWSGIOnRequestThreads(_waits_for_a_second_request(wait_seconds=0.5))
    assert [answer for _, answer in _two_at_once(app, request_threads=1)] == [
        f"alice {ALONE} alice",
        f"bob {ALONE} bob",
    ]


def test_the_plugins_own_bridge_runs_them_one_after_the_other() -> None:
    """Why oidc_wsgi exists: mlflow-oidc-auth 10.2.0's bridge (asgiref, thread-sensitive) serialises Flask requests
    even with threads to spare. If a plugin release changes that, this fails and the replacement can go."""
    app = AuthAwareWSGIMiddleware(_waits_for_a_second_request(wait_seconds=0.5))
    assert [answer for _, answer in _two_at_once(app, request_threads=8)] == [
        f"alice {ALONE} alice",
        f"bob {ALONE} bob",
    ]


# After the server's OIDC app is built: the types of the routes that are the plugin's Flask mount, and whether the
# plugin's permission middleware hands a tracking request to Flask (its _dispatches_to_flask_mount).
SHOW_FLASK_MOUNT = """
import json
from starlette.requests import Request
from mlflow_stack_server.proxied_artifacts import create_app_with_oidc
create_app_with_oidc()
from mlflow_oidc_auth.app import app
from mlflow_oidc_auth.middleware.auth_aware_wsgi_middleware import AuthAwareWSGIMiddleware
from mlflow_oidc_auth.middleware.fastapi_permission_middleware import _dispatches_to_flask_mount
mounts = [type(r.app).__name__ for r in app.router.routes if isinstance(getattr(r, "app", None), AuthAwareWSGIMiddleware)]
scope = {"type": "http", "method": "POST", "path": "/api/2.0/mlflow/runs/create", "root_path": "",
         "query_string": b"", "headers": [], "app": app}
last = type(app.router.routes[-1].app).__name__
print(json.dumps([mounts, last, _dispatches_to_flask_mount(Request(scope))]))
"""


def test_the_oidc_app_serves_flask_through_the_request_threads_mount(tmp_path: Path) -> None:
    mounts, last_route, handed_to_flask = json.loads(run_in_the_oidc_app(tmp_path / "app", "on", SHOW_FLASK_MOUNT))
    assert mounts == ["AuthAwareWSGIOnRequestThreads"]
    assert last_route == "AuthAwareWSGIOnRequestThreads"  # still the catch-all after every FastAPI route
    assert handed_to_flask is True
