"""One `Vary` header per response, each name in it once.

MLflow 3.17's server runs two CORS layers on every answer of its Flask app: Flask-CORS on the Flask app
(mlflow/server/security.py: `Vary: Origin` on every answer) and, around the Flask mount, Starlette's
CORSMiddleware (mlflow/server/fastapi_security.py), which appends `Origin` again to the `Vary` it finds whenever
the request's Origin is allowed: `Vary: Origin, Origin`. Both layers stay as MLflow builds them (their Host and
Origin checks and their CORS answers are untouched); this wrapper only merges what they wrote into one header.
"""

from __future__ import annotations

from mlflow_stack_server.asgi import ASGIApp, Message, Receive, Scope, Send

VARY = b"vary"


def merged_vary(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`headers` with every Vary header merged into one, at the first one's place, each name kept once
    (case-insensitively, first spelling wins, in order); unchanged when there is nothing to merge."""
    values = [value for name, value in headers if name.lower() == VARY]
    if not values or (len(values) == 1 and b"," not in values[0]):
        return headers  # the common case: one name, or no Vary at all
    names: dict[bytes, bytes] = {}
    for value in values:
        for token in value.split(b","):
            stripped = token.strip()
            if stripped:
                names.setdefault(stripped.lower(), stripped)
    merged = b", ".join(names.values())
    first = next(index for index, (name, _) in enumerate(headers) if name.lower() == VARY)
    others = [(name, value) for index, (name, value) in enumerate(headers) if index < first or name.lower() != VARY]
    return [*others[:first], (VARY, merged), *others[first:]] if merged else others


class OneVaryHeader:
    """Merges the Vary headers of every HTTP answer of `app` (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_merged(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(bytes(name), bytes(value)) for name, value in message.get("headers", [])]
                merged = merged_vary(headers)
                if merged is not headers:
                    message = {**message, "headers": merged}
            await send(message)

        await self.app(scope, receive, send_merged)
