"""Request rate, latency and errors per endpoint, for Prometheus, counted across every uvicorn worker.

MLflow's own exporter (`mlflow server --expose-prometheus DIR`, prometheus-flask-exporter) serves /metrics
and aggregates every worker's values from DIR (prometheus_client's multiprocess mode: each worker process
writes its own files there, /metrics sums them). But it groups its `mlflow_http_request_*` metrics by
MLflow version, not by endpoint (mlflow/server/prometheus_exporter.py, group_by=mlflow_version), and it
sees only the Flask part of the server. This middleware sits in front of the whole ASGI app and writes
per-endpoint metrics into the same DIR, so MLflow's /metrics exports them too:

    mlflow_stack_http_requests_total{method, endpoint, status}            counter
    mlflow_stack_http_request_duration_seconds{method, endpoint}          histogram (until the last byte)
    mlflow_stack_fast_path_enabled{mlflow_version, reason}                 gauge: 1 on, 0 off (fast_path_guard.py)

`endpoint` is the path with its free parts folded (artifact paths, static files, ids, names), so the number
of series stays bounded: at most MAX_ENDPOINTS distinct values per worker, later new ones count as "other". Nothing is recorded unless PROMETHEUS_MULTIPROC_DIR is set (the entrypoint sets it when
metrics are on): values kept in one worker's memory alone would be wrong with several workers.
"""

from __future__ import annotations

import functools
import re
import time
from typing import Any

from mlflow_stack_server.asgi import ASGIApp, Message, Receive, Scope, Send
from mlflow_stack_server.fast_path_guard import FastPathState
from mlflow_stack_server.settings import handed_down

# Prefixes after which the rest of the path is data (a run's artifact path, a file name), not an endpoint.
FOLDED_PREFIXES = (
    "/api/2.0/mlflow-artifacts/artifacts/",
    "/ajax-api/2.0/mlflow-artifacts/artifacts/",
    "/static-files/",
    "/get-artifact",
    "/model-versions/get-artifact",
)
# A path segment that names an endpoint: a lowercase word, or an API version. Anything else in an API path is
# data (a trace id, a logged model's id, a user's e-mail address in the single-sign-on plugin's routes).
ENDPOINT_SEGMENT = re.compile(r"[a-z][a-z_-]*|\d+\.\d+")
# Data that looks like a word (a user or group name) still gets through the pattern; this bounds the rest, since
# any client, signed in or not, chooses the paths it asks for.
MAX_ENDPOINTS = 300
_seen_endpoints: set[str] = set()
# Buckets from a fast search (ms) to a large artifact (minutes).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, float("inf"))


def endpoint_of(path: str) -> str:
    for prefix in FOLDED_PREFIXES:
        if path.startswith(prefix):
            return prefix.rstrip("/") + "/{path}" if prefix.endswith("/") else prefix
    if path in ("/", "/health", "/version", "/metrics"):
        return path
    if not path.startswith(("/api/", "/ajax-api/", "/graphql", "/v1/")):
        return "other"  # unknown paths (scanners, typos) must not create a series each
    endpoint = "/".join(s if not s or ENDPOINT_SEGMENT.fullmatch(s) else "{id}" for s in path.split("/"))
    if endpoint not in _seen_endpoints:
        if len(_seen_endpoints) >= MAX_ENDPOINTS:
            return "other"
        _seen_endpoints.add(endpoint)
    return endpoint


@functools.cache
def _instruments() -> tuple[Any, Any, Any]:
    """One counter and one histogram per process: prometheus_client refuses a second registration of a name,
    and one process may build more than one app (the app factories in proxied_artifacts.py each wrap theirs)."""
    from prometheus_client import Counter, Gauge, Histogram

    requests = Counter(
        "mlflow_stack_http_requests_total", "HTTP requests answered, by endpoint and status",
        ["method", "endpoint", "status"],
    )  # fmt: skip
    duration = Histogram(
        "mlflow_stack_http_request_duration_seconds", "Time from request to the response's last byte",
        ["method", "endpoint"], buckets=BUCKETS,
    )  # fmt: skip
    # Every worker sets the same value; "livemax" shows it once, without a pid label, for live workers only.
    fast_path = Gauge(
        "mlflow_stack_fast_path_enabled",
        "1 when the fast store and HTTP path answer run writes, 0 when MLflow's own do; reason: on, switched_off, "
        "unverified_mlflow_version or no_authorization_hook", ["mlflow_version", "reason"], multiprocess_mode="livemax",
    )  # fmt: skip
    return requests, duration, fast_path


class RequestMetrics:
    def __init__(self, app: ASGIApp, fast_path: FastPathState | None = None) -> None:
        self.app = app
        # Set by the entrypoint when MLFLOW_METRICS is on (entrypoint.prepare_metrics_dir).
        self.enabled = bool(handed_down("PROMETHEUS_MULTIPROC_DIR"))
        if self.enabled:
            self.requests, self.duration, fast_path_gauge = _instruments()
            if fast_path is not None:
                fast_path_gauge.labels(fast_path.mlflow_version, fast_path.reason).set(int(fast_path.enabled))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            method, endpoint = scope.get("method", "?"), endpoint_of(scope.get("path", ""))
            self.requests.labels(method, endpoint, str(status)).inc()
            self.duration.labels(method, endpoint).observe(time.perf_counter() - started)
