"""Each answer of the server says `Vary: Origin` once (vary_header.py), while MLflow's Host and CORS checks still
answer as MLflow answers them."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from mlflow_stack_server.vary_header import merged_vary

SERVER_ENVIRONMENT = {"MLFLOW_BACKEND_STORE_URI": "postgresql://u:p@db/mlflow", "MLFLOW_ARTIFACTS_BUCKET": "b"}
ALLOWED_ORIGIN = "http://localhost:5000"  # MLflow's default allows localhost origins


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"vary", b"Origin, Origin")], [(b"vary", b"Origin")]),
        ([(b"a", b"1"), (b"Vary", b"Origin"), (b"b", b"2"), (b"vary", b"origin, Accept-Encoding")],
         [(b"a", b"1"), (b"vary", b"Origin, Accept-Encoding"), (b"b", b"2")]),
        ([(b"vary", b"Origin,Access-Control-Request-Method, Origin ,")],
         [(b"vary", b"Origin, Access-Control-Request-Method")]),
        ([(b"vary", b" , ")], []),
    ],
)  # fmt: skip
def test_vary_names_are_merged_once_each_in_order(
    headers: list[tuple[bytes, bytes]], expected: list[tuple[bytes, bytes]]
) -> None:
    assert merged_vary(headers) == expected


@pytest.mark.parametrize("headers", [[], [(b"vary", b"Origin")], [(b"content-type", b"text/plain")]])
def test_nothing_to_merge_is_left_as_it_is(headers: list[tuple[bytes, bytes]]) -> None:
    assert merged_vary(headers) is headers


def _answer(app: Any, method: str, path: str, headers: dict[str, str]) -> tuple[int, list[tuple[bytes, bytes]]]:
    """(status, headers) of `app`'s answer to a request without a body."""
    scope = {
        "type": "http", "http_version": "1.1", "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
        "root_path": "", "query_string": b"", "server": ("localhost", 5000), "client": ("127.0.0.1", 50000),
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
    }  # fmt: skip
    started: list[Any] = []

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        if message["type"] == "http.response.start":
            started.append(message)

    anyio.run(app, scope, receive, send)
    (start,) = started
    return int(start["status"]), [(bytes(name), bytes(value)) for name, value in start["headers"]]


# What a server process answers: MLflow secures its Flask app only in a process that runs a server (uvicorn imported,
# mlflow/server/__init__.py), so the answers are taken in a fresh interpreter that imports uvicorn first, as the
# server's workers do. Printed: {case: [[status, headers] of MLflow's app, [status, headers] of the server's app]}.
ANSWERS = """
import json
import uvicorn  # noqa: F401  (before MLflow's server module: see above)
from mlflow.server.fastapi_app import app as mlflow_app
from mlflow_stack_server.proxied_artifacts import _wrap
from mlflow_stack_server.settings import Settings
from tests.unit.server.test_vary_header import CASES, SERVER_ENVIRONMENT, _answer

server_app = _wrap(mlflow_app, Settings.from_environment({**SERVER_ENVIRONMENT, "MLFLOW_METRICS": "off"}))
answers = {
    case: [
        [status, [[name.decode(), value.decode()] for name, value in headers]]
        for status, headers in (_answer(app, method, path, request) for app in (mlflow_app, server_app))
    ]
    for case, (method, path, request) in CASES.items()
}
print(json.dumps(answers))
"""
CASES: dict[str, tuple[str, str, dict[str, str]]] = {
    "flask, allowed origin": ("GET", "/version", {"Host": "localhost:5000", "Origin": ALLOWED_ORIGIN}),
    "flask, no origin": ("GET", "/version", {"Host": "localhost:5000"}),
    "preflight": ("OPTIONS", "/api/2.0/mlflow/runs/create", {
        "Host": "localhost:5000", "Origin": ALLOWED_ORIGIN, "Access-Control-Request-Method": "POST"}),
    "foreign origin": ("POST", "/api/2.0/mlflow/runs/create", {
        "Host": "localhost:5000", "Origin": "https://evil.example"}),
    "foreign host": ("GET", "/api/2.0/mlflow/experiments/search", {"Host": "evil.example"}),
}  # fmt: skip


@pytest.fixture(scope="module")
def answers() -> dict[str, list[tuple[int, list[tuple[str, str]]]]]:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    environ = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "_MLFLOW_"))},
        "MLFLOW_SERVER_ALLOWED_HOSTS": "localhost:5000",
    }
    repository = Path(__file__).resolve().parents[3]
    result = subprocess.run(
        [sys.executable, "-c", ANSWERS], env=environ, cwd=repository, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.splitlines()[-1])
    return {
        case: [(status, [(name, value) for name, value in headers]) for status, headers in pair]
        for case, pair in printed.items()
    }


def _vary_of(headers: list[tuple[str, str]]) -> list[str]:
    return [token.strip() for name, value in headers if name == "vary" for token in value.split(",")]


def test_an_answer_of_mlflows_flask_app_says_vary_origin_once(answers: dict[str, Any]) -> None:
    (mlflows_status, mlflows), (status, ours) = answers["flask, allowed origin"]
    # The control: MLflow's app alone says it twice (Flask-CORS, then Starlette's CORSMiddleware).
    assert _vary_of(mlflows) == ["Origin", "Origin"]
    assert status == mlflows_status == 200
    assert _vary_of(ours) == ["Origin"]
    assert ("access-control-allow-origin", ALLOWED_ORIGIN) in ours
    assert sorted(header for header in ours if header[0] != "vary") == sorted(
        header for header in mlflows if header[0] != "vary"
    )
    (_, mlflows), (_, ours) = answers["flask, no origin"]
    assert _vary_of(ours) == _vary_of(mlflows) == ["Origin"]


def test_preflights_and_mlflows_refusals_are_unchanged(answers: dict[str, Any]) -> None:
    mlflows, ours = answers["preflight"]
    assert ours == mlflows and ours[0] == 200
    assert _vary_of(ours[1])[0] == "Origin" and len(set(_vary_of(ours[1]))) == len(_vary_of(ours[1]))
    for refused in ("foreign origin", "foreign host"):  # MLflow's cross-origin block and its Host check
        mlflows, ours = answers[refused]
        assert ours == mlflows and ours[0] == 403, refused
