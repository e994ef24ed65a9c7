"""Prometheus: /metrics on the tracking server's port sums every worker; the `monitoring` profile scrapes it."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.stack.conftest import STACK_URL, compose
from tests.support.prometheus import sample, scrape
from tests.support.waiting import wait_until

PROMETHEUS_PORT = int(os.environ.get("PROMETHEUS_PORT", "9090"))
METRICS_DIR = "/tmp/mlflow-metrics"  # Settings.metrics_dir's default
PROBE = "/api/2.0/mlflow/experiments/get-by-name"


def probe(_: int) -> int:
    query = urllib.parse.urlencode({"experiment_name": f"metrics-probe-{uuid.uuid4().hex}"})
    try:
        with urllib.request.urlopen(f"{STACK_URL}{PROBE}?{query}", timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_metrics_show_the_fast_path() -> None:
    # The version guard's gauge (fast_path_guard.py): the stack's MLflow is a verified one, so the fast path is on,
    # shown once (not once per worker).
    from mlflow_stack_server.fast_path_guard import VERIFIED_MLFLOW_VERSIONS

    with urllib.request.urlopen(f"{STACK_URL}/version", timeout=30) as response:
        version = response.read().decode().strip()
    assert version in VERIFIED_MLFLOW_VERSIONS
    lines = [line for line in scrape(STACK_URL).splitlines() if line.startswith("mlflow_stack_fast_path_enabled{")]
    assert lines == [f'mlflow_stack_fast_path_enabled{{mlflow_version="{version}",reason="on"}} 1.0'], lines


def test_metrics_count_requests_of_every_worker() -> None:
    before = scrape(STACK_URL)
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(probe, range(60)))
    assert statuses == [404] * 60  # the probe names experiments that do not exist: errors, per endpoint
    labels = {"method": "GET", "endpoint": PROBE, "status": "404"}
    # A worker counts a request after its last byte has left and its handler has returned (MLflow's WSGI bridge
    # may still wait for a worker thread then), and increments the counter just before it observes the
    # histogram, so a scrape right after the answers can miss the last few of either: scrape until both have
    # all 60 (for up to 60 s), then compare exactly.
    count = "mlflow_stack_http_request_duration_seconds_count"
    seen: list[tuple[float, float]] = []

    def all_counted() -> str | None:
        text = scrape(STACK_URL)
        seen.append(
            (
                sample(text, "mlflow_stack_http_requests_total", **labels)
                - sample(before, "mlflow_stack_http_requests_total", **labels),
                sample(text, count, endpoint=PROBE) - sample(before, count, endpoint=PROBE),
            )
        )
        return text if min(seen[-1]) >= 60 else None

    missing = "the 60 requests are not all counted (a worker's values missing from /metrics?); (counter, histogram) over time: "
    after = wait_until(all_counted, 60, lambda: f"{missing}{seen}")
    assert (
        sample(after, "mlflow_stack_http_requests_total", **labels)
        - sample(before, "mlflow_stack_http_requests_total", **labels)
        == 60
    ), f"{missing}{seen}"
    assert sample(after, count, endpoint=PROBE) - sample(before, count, endpoint=PROBE) == 60
    assert sample(after, "mlflow_http_request_total") > 0, "MLflow's own exporter metrics are missing"
    # Each worker process writes its own files (prometheus_client multiprocess mode): more than one pid
    # wrote counters, and /metrics, answered by one of them, still summed all 60.
    files = compose("exec", "-T", "tracking-server", "ls", METRICS_DIR).stdout.split()
    pids = {re.sub(r"\D", "", name) for name in files if name.startswith("counter_")}
    workers = int(os.environ.get("MLFLOW_WORKERS", "2"))
    assert len(pids) >= min(workers, 2), f"only {pids} wrote metrics: {files}"


@pytest.fixture
def prometheus() -> Iterator[str]:
    env = {"PROMETHEUS_PORT": str(PROMETHEUS_PORT)}
    compose("--profile", "monitoring", "up", "-d", "prometheus", env=env)
    yield f"http://localhost:{PROMETHEUS_PORT}"
    # A profile service outlives a plain `docker compose down`: leave the stack as it was.
    compose("--profile", "monitoring", "rm", "-s", "-f", "prometheus", env=env)


def prometheus_api(base: str, path: str) -> dict[str, object]:
    with urllib.request.urlopen(f"{base}{path}", timeout=10) as response:
        body: dict[str, object] = json.loads(response.read())
        return body


def test_prometheus_scrapes_the_tracking_server(prometheus: str) -> None:
    target = {"health": "", "last_error": ""}

    def target_up() -> bool:
        targets = prometheus_api(prometheus, "/api/v1/targets")["data"]
        active = [t for t in targets["activeTargets"] if t["labels"]["job"] == "tracking-server"]  # type: ignore[index]
        first = active[0] if active else {}
        target.update(health=first.get("health", ""), last_error=first.get("lastError", ""))
        return target["health"] == "up"

    wait_until(
        target_up, 120,
        lambda: f"tracking-server target: {target['health'] or 'absent'} {target['last_error']}",
        interval=2, ignoring=(urllib.error.URLError, ConnectionError),  # Prometheus still starting
    )  # fmt: skip
    query = urllib.parse.urlencode({"query": "sum(mlflow_stack_http_requests_total)"})
    result = prometheus_api(prometheus, f"/api/v1/query?{query}")["data"]["result"]  # type: ignore[index]
    assert result and float(result[0]["value"][1]) > 0
