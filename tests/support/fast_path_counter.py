"""The server's basic-auth app factory, with a count of the requests the fast HTTP path answered itself.

For test_fast_path_auth_generated.py: the fast path and MLflow's app answer alike by design, so only a count
from inside the server shows that the fast path, not MLflow's app behind it, answered the generated writes
(else a parity test would pass with the fast path never serving). Nothing is changed but the count:
`fast_http._authorized_run` (the hook's decision, then the write) is wrapped, and GET /fast-path-answers
returns {status: count}.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from mlflow_stack_server import fast_http, proxied_artifacts
from mlflow_stack_server.asgi import ASGIApp, Receive, Scope, Send

COUNT_PATH = "/fast-path-answers"


def create_app_with_basic_auth() -> ASGIApp:
    answers: Counter[str] = Counter()
    decide_and_write = fast_http._authorized_run

    def counted(*args: Any) -> Any:
        reply = decide_and_write(*args)
        if reply is not None:
            answers[str(reply[0])] += 1
        return reply

    fast_http._authorized_run = counted  # type: ignore[assignment]
    app = proxied_artifacts.create_app_with_basic_auth()

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
