"""Many trainers logging at the same instant: MLflow's defaults answer some of them with HTTP 400
("QueuePool limit ... reached") after 30 s; the stack must answer all of them."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.stack.conftest import STACK_URL, compose

API = STACK_URL + "/api/2.0/mlflow"
# Four times what one worker's default pool (5 + 10) can nest; enough to deadlock MLflow's defaults.
TRAINERS = 64
EPOCHS = 3


def test_64_trainers_logging_at_once_all_get_answers() -> None:
    experiment = requests.post(API + "/experiments/create", json={"name": f"crowd-{uuid.uuid4().hex[:8]}"}, timeout=30)
    experiment_id = experiment.json()["experiment_id"]
    failures: list[str] = []
    everyone_ready = threading.Barrier(TRAINERS)

    def trainer(index: int) -> str:
        session = requests.Session()

        def post(path: str, body: dict[str, object]) -> dict[str, object]:
            response = session.post(API + path, json=body, timeout=60)
            if response.status_code != 200:
                failures.append(f"{path}: HTTP {response.status_code} {response.text[:160]}")
                return {}
            result: dict[str, object] = response.json()
            return result

        run = post("/runs/create", {"experiment_id": experiment_id, "start_time": int(time.time() * 1000)})
        run_id = str(run["run"]["info"]["run_id"])  # type: ignore[index]
        everyone_ready.wait(timeout=60)
        for epoch in range(1, EPOCHS + 1):
            metrics = [{"key": "val_accuracy", "value": index / 100, "timestamp": 0, "step": epoch}]
            post("/runs/log-batch", {"run_id": run_id, "metrics": metrics, "params": [], "tags": []})
        post("/runs/update", {"run_id": run_id, "status": "FINISHED"})
        return run_id

    with ThreadPoolExecutor(max_workers=TRAINERS) as pool:
        run_ids = list(pool.map(trainer, range(TRAINERS)))

    assert failures == []
    found = requests.post(
        API + "/runs/search", json={"experiment_ids": [experiment_id], "max_results": 1000}, timeout=60
    ).json()["runs"]
    assert {run["info"]["run_id"] for run in found} == set(run_ids)
    for run in found:
        history = requests.get(
            API + "/metrics/get-history",
            params={"run_id": run["info"]["run_id"], "metric_key": "val_accuracy"},
            timeout=30,
        ).json()["metrics"]
        assert sorted(point["step"] for point in history) == list(range(1, EPOCHS + 1))
        assert run["info"]["status"] == "FINISHED"


def test_server_reports_its_connection_budget() -> None:
    """The entrypoint sizes the pools and checks them against Postgres' max_connections at start."""
    logs = compose("logs", "tracking-server").stdout
    budget = [line for line in logs.splitlines() if "request threads: up to" in line]
    assert budget, logs[-2000:]
    assert "warning: raise POSTGRES_MAX_CONNECTIONS" not in logs
