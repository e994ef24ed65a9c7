"""Pure helpers of the day-2 tools: gc's duration parsing, the metrics' endpoint folding."""

from __future__ import annotations

from datetime import timedelta

import pytest

from mlflow_stack_server.request_metrics import endpoint_of
from mlflow_stack_server.settings import SettingsError
from mlflow_stack_server.stack_gc import parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30d", timedelta(days=30)), ("12h", timedelta(hours=12)), ("1d6h", timedelta(days=1, hours=6)),
     ("90m", timedelta(minutes=90)), ("1.5d", timedelta(days=1.5))],
)  # fmt: skip
def test_gc_durations(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["soon", "", "30", "d", "-1d", "30 d"])
def test_gc_rejects_bad_durations(text: str) -> None:
    with pytest.raises(SettingsError, match="expected a duration like 30d"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("path", "endpoint"),
    [
        ("/api/2.0/mlflow/runs/log-batch", "/api/2.0/mlflow/runs/log-batch"),
        (
            "/api/2.0/mlflow-artifacts/artifacts/1/abc/artifacts/model.keras",
            "/api/2.0/mlflow-artifacts/artifacts/{path}",
        ),
        ("/static-files/static/js/main.1234.js", "/static-files/{path}"),
        ("/get-artifact", "/get-artifact"),
        ("/health", "/health"),
        ("/wp-login.php", "other"),
        ("/api/3.0/mlflow/traces/tr-0a1b2c/info", "/api/3.0/mlflow/traces/{id}/info"),
        ("/api/2.0/mlflow/users/bob@example.test/tokens", "/api/2.0/mlflow/users/{id}/tokens"),
        ("/ajax-api/2.0/mlflow/logged-models/m-1f2e", "/ajax-api/2.0/mlflow/logged-models/{id}"),
        ("/.env", "other"),
    ],
)
def test_metrics_fold_free_path_parts(path: str, endpoint: str) -> None:
    assert endpoint_of(path) == endpoint


def test_metrics_keep_a_bounded_number_of_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client choosing word-like paths (/api/aaa, /api/aab, ...) cannot grow the series without end."""
    from mlflow_stack_server import request_metrics

    monkeypatch.setattr(request_metrics, "_seen_endpoints", set())
    monkeypatch.setattr(request_metrics, "MAX_ENDPOINTS", 5)
    answers = [
        endpoint_of(f"/api/2.0/mlflow/users/{name}/tokens") for name in ("ann", "ben", "cat", "dan", "eve", "fay")
    ]
    assert answers[:5] == [f"/api/2.0/mlflow/users/{name}/tokens" for name in ("ann", "ben", "cat", "dan", "eve")]
    assert answers[5] == "other"
    assert endpoint_of("/api/2.0/mlflow/users/ann/tokens") == "/api/2.0/mlflow/users/ann/tokens"  # seen before
