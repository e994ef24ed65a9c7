"""K simulated trainers against the tracking server: each creates a run, logs its params, one log_batch
of metrics per epoch, a tag, and ends the run. Reports requests/s, metric points/s and per-call latency.

    python -m bench.server_load LABEL [K ...]
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from bench.common import STACK_URL, percentile, save

EPOCHS = int(os.environ.get("BENCH_EPOCHS", "10"))
RUNS_PER_TRAINER = int(os.environ.get("BENCH_RUNS_PER_TRAINER", "2"))
METRICS_PER_EPOCH = 5
API = STACK_URL + "/api/2.0/mlflow"


def simulated_trainer(experiment_id: str, latencies: list[float], errors: list[str], lock: threading.Lock) -> None:
    session = requests.Session()

    def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            response = session.post(API + path, json=body, timeout=60)
            ok = response.status_code == 200
            payload = response.json() if ok else {}
        except requests.RequestException as error:
            ok, payload = False, {}
            response = None
            message = type(error).__name__
        elapsed = time.perf_counter() - started
        with lock:
            latencies.append(elapsed)
            if not ok:
                detail = message if response is None else f"HTTP {response.status_code}: {response.text[:120]}"
                errors.append(detail)
        return payload

    for _ in range(RUNS_PER_TRAINER):
        run = call("/runs/create", {"experiment_id": experiment_id, "start_time": int(time.time() * 1000)})
        run_id = run.get("run", {}).get("info", {}).get("run_id")
        if not run_id:
            continue
        params = [{"key": f"param_{i}", "value": str(i)} for i in range(10)]
        call("/runs/log-batch", {"run_id": run_id, "params": params})
        for epoch in range(1, EPOCHS + 1):
            now = int(time.time() * 1000)
            metrics = [
                {"key": f"metric_{i}", "value": 1.0 / epoch + i, "timestamp": now, "step": epoch}
                for i in range(METRICS_PER_EPOCH)
            ]
            call("/runs/log-batch", {"run_id": run_id, "metrics": metrics})
        call("/runs/set-tag", {"run_id": run_id, "key": "bench", "value": "server_load"})
        call("/runs/update", {"run_id": run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)})


def load(k: int) -> dict[str, Any]:
    name = f"bench-load-{uuid.uuid4().hex[:8]}"
    experiment_id = requests.post(API + "/experiments/create", json={"name": name}, timeout=30).json()["experiment_id"]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=k) as pool:
        for _ in range(k):
            pool.submit(simulated_trainer, experiment_id, latencies, errors, lock)
    seconds = time.perf_counter() - started
    points = k * RUNS_PER_TRAINER * EPOCHS * METRICS_PER_EPOCH
    return {
        "k": k,
        "requests": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "seconds": round(seconds, 2),
        "requests_per_second": round(len(latencies) / seconds, 1),
        "metric_points_per_second": round(points / seconds, 1),
        "latency_ms_p50": round(1000 * percentile(latencies, 0.50), 1),
        "latency_ms_p99": round(1000 * percentile(latencies, 0.99), 1),
    }


def main() -> None:
    label = sys.argv[1]
    ks = [int(k) for k in sys.argv[2:]] or [1, 8, 32, 64]
    rows = []
    for k in ks:
        row = load(k)
        rows.append(row)
        print(
            f"bench: {label} K={k}: {row['requests_per_second']} req/s, {row['metric_points_per_second']} points/s, "
            f"p50 {row['latency_ms_p50']} ms, p99 {row['latency_ms_p99']} ms, errors {row['errors']}"
        )
    save(
        f"server_load_{label}",
        {"label": label, "epochs": EPOCHS, "runs_per_trainer": RUNS_PER_TRAINER, "rows": rows},
    )


if __name__ == "__main__":
    main()
