"""The server's basic-auth and OIDC app factories, with a count of the requests the fast HTTP path answered itself;
and the basic-auth app under an auth mode without an authorization hook.

For test_fast_path_auth_generated.py and test_fast_path_oidc_generated.py: the fast path and MLflow's app answer
alike by design, so only a count from inside the server shows that the fast path, not MLflow's app behind it,
answered the generated writes (else a parity test would pass with the fast path never serving). Nothing is changed but the count:
`fast_http._authorized_run` (the hook's decision, then the write) is wrapped, and GET /fast-path-answers
returns {status: count}, plus under FROM_MEMORY how many of the hook's answers were a remembered "allowed"
(fast_path_auth.remember_allowances; with oidc, fast_path_oidc's front hook, in front of the plugin's app), not a
decision of the auth app.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from mlflow_stack_server import fast_http, fast_path_auth, fast_path_oidc, proxied_artifacts
from mlflow_stack_server.asgi import ASGIApp, Receive, Scope, Send

COUNT_PATH = "/fast-path-answers"
FROM_MEMORY = "allowed from memory"


# An MLFLOW_AUTH mode no hook exists for (fast_path_auth.HOOKS): a mode added to Settings later, say.
MODE_WITHOUT_HOOK = "sso-of-tomorrow"


def create_app_with_basic_auth() -> ASGIApp:
    return _counted(proxied_artifacts.create_app_with_basic_auth)


def create_app_with_oidc() -> ASGIApp:
    """mlflow-oidc-auth's app as the server builds it (the fast path inside the plugin's middleware), counted."""
    return _counted(proxied_artifacts.create_app_with_oidc)


def create_auth_app_under_a_mode_without_hook() -> ASGIApp:
    """MLflow's basic-auth app wrapped as the server wraps it (proxied_artifacts._wrap), but with the active auth
    mode one the fast path has no hook for: as a new login kind would be wired before it gets one."""

    def build() -> ASGIApp:
        from mlflow.server.auth import create_app as create_auth_app

        from mlflow_stack_server.settings import Settings
        from mlflow_stack_server.streamed_artifacts import stream_artifact_transfers

        settings = dataclasses.replace(Settings.from_environment(), auth=MODE_WITHOUT_HOOK)
        auth_app = create_auth_app()
        return proxied_artifacts._wrap(stream_artifact_transfers(auth_app, settings.upload_part_bytes), settings)

    return _counted(build)


def _counted(build: Callable[[], ASGIApp]) -> ASGIApp:
    answers: Counter[str] = Counter()
    decide_and_write = fast_http._authorized_run

    def counted(*args: Any) -> Any:
        reply = decide_and_write(*args)
        if reply is not None:
            answers[str(reply[0])] += 1
        return reply

    remember = fast_path_auth.remember_allowances

    def counted_decisions(authorize: fast_path_auth.Authorize, *args: Any, **kwargs: Any) -> fast_path_auth.Authorize:
        decided = threading.local()  # whether the auth app decided the request this thread asks about

        def deciding(*request: Any) -> Any:
            decided.now = True
            return authorize(*request)

        remembering = remember(deciding, *args, **kwargs)

        def asked(*request: Any) -> Any:
            decided.now = False
            answer = remembering(*request)
            if not decided.now:
                answers[FROM_MEMORY] += 1
            return answer

        return asked

    front_hook = fast_path_oidc.front_hook

    def counted_front(allowances: Any) -> fast_path_auth.Authorize | None:
        """The OIDC front's hook: every "allowed" it answers is a remembered one, the plugin's app not asked."""
        front = front_hook(allowances)
        if front is None:
            return None

        def answered(*request: Any) -> Any:
            answer = front(*request)  # raises (a hand-off to the plugin's app) unless remembered
            answers[FROM_MEMORY] += 1
            return answer

        return answered

    fast_http._authorized_run = counted  # type: ignore[assignment]
    fast_path_auth.remember_allowances = counted_decisions
    fast_path_oidc.front_hook = counted_front
    app = build()

    async def with_count(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == COUNT_PATH:
            body = json.dumps(answers).encode()
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
        else:
            await app(scope, receive, send)

    return with_count
