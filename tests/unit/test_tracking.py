from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from mnist_trainer import tracking


@pytest.mark.parametrize(
    "uri", ["http://tracking-server:5000", "https://mlflow.example.com", "sqlite:///mlflow.db", "./mlruns"]
)
def test_tracking_uris_that_are_accepted(uri: str) -> None:
    tracking.check_tracking_uri(uri)


@pytest.mark.parametrize("uri", ["ftp://host/x", "tracking-server:5000", "localhost"])
def test_tracking_uris_that_are_refused(uri: str) -> None:
    with pytest.raises(ValueError, match="is not a tracking URI"):
        tracking.check_tracking_uri(uri)


@pytest.fixture
def forbidding_server() -> Iterator[str]:
    """Answers like MLflow does to a Host header it does not allow."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"Invalid Host header - possible DNS rebinding attack detected"
            self.send_response(403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_server_that_refuses_the_trainer_is_reported_at_once(forbidding_server: str) -> None:
    with pytest.raises(tracking.TrackingError, match=r"refused the trainer \(HTTP 403: Invalid Host header"):
        tracking.wait_for_server(forbidding_server, timeout_seconds=30)


def test_run_link_prefers_the_ui_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINER_UI_URL", "http://localhost:5000/")
    assert (
        tracking.run_link("http://tracking-server:5000", "3", "abc") == "http://localhost:5000/#/experiments/3/runs/abc"
    )
