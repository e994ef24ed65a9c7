"""The running server uses the stack's fast tracking store, and its answers over HTTP are MLflow's.

tests/fast_store compares the store with MLflow's call by call; this checks what a client sees through the real
server: the plugin is the builder MLflow picked for the database, and bad input still gets MLflow's status
codes and error codes.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from typing import Any

import requests

from tests.stack.conftest import STACK_URL, compose

API = STACK_URL + "/api/2.0/mlflow"


def post(path: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(API + path, json=body, timeout=30)


def test_server_builds_the_fast_store() -> None:
    code = (
        "import json, os; from mlflow.server.handlers import _tracking_store_registry as r; "
        "b = r.get_store_builder(os.environ.get('MLFLOW_BACKEND_STORE_URI') or 'postgresql://u@h/d'); "
        "print(json.dumps({'builder': b.__module__ + ':' + b.__name__, 'switch': os.environ.get('MLFLOW_FAST_STORE')}))"
    )
    result = compose("exec", "-T", "tracking-server", "python", "-W", "error::UserWarning", "-c", code)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "builder": "mlflow_stack_server.store_plugin:tracking_store",
        "switch": "on",
    }


def test_writes_and_errors_over_http_are_mlflows() -> None:
    experiment = post("/experiments/create", {"name": f"fast-store-{uuid.uuid4().hex[:8]}"}).json()["experiment_id"]
    now = int(time.time() * 1000)
    run = post("/runs/create", {"experiment_id": experiment, "start_time": now, "run_name": "fast"})
    assert run.status_code == 200, run.text
    run_id = run.json()["run"]["info"]["run_id"]

    metrics = [
        {"key": "loss", "value": 0.5, "timestamp": now, "step": 1},
        {"key": "loss", "value": 0.25, "timestamp": now, "step": 2},
        {"key": "loss", "value": 0.75, "timestamp": now, "step": 0},  # older step: not the latest
        {"key": "nan", "value": "NaN", "timestamp": now, "step": 0},
    ]
    logged = post("/runs/log-batch", {"run_id": run_id, "metrics": metrics, "params": [{"key": "lr", "value": "0.1"}]})
    assert logged.status_code == 200, logged.text
    assert post("/runs/set-tag", {"run_id": run_id, "key": "team", "value": "a"}).status_code == 200

    changed = post("/runs/log-batch", {"run_id": run_id, "params": [{"key": "lr", "value": "0.2"}]})
    assert changed.status_code == 400 and changed.json()["error_code"] == "INVALID_PARAMETER_VALUE", changed.text
    assert "Changing param values is not allowed" in changed.json()["message"]

    missing = post("/runs/log-batch", {"run_id": uuid.uuid4().hex, "metrics": metrics[:1]})
    assert missing.status_code == 404 and missing.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST", missing.text

    finished = post("/runs/update", {"run_id": run_id, "status": "FINISHED", "end_time": now + 1})
    assert finished.status_code == 200 and finished.json()["run_info"]["status"] == "FINISHED", finished.text

    fetched = requests.get(API + "/runs/get", params={"run_id": run_id}, timeout=30).json()["run"]
    latest = {m["key"]: m for m in fetched["data"]["metrics"]}
    assert latest["loss"]["value"] == 0.25 and latest["loss"]["step"] == 2
    assert math.isnan(float(latest["nan"]["value"]))
    assert {p["key"]: p["value"] for p in fetched["data"]["params"]} == {"lr": "0.1"}
    assert {t["key"]: t["value"] for t in fetched["data"]["tags"]}["team"] == "a"
    assert fetched["info"]["end_time"] == str(now + 1) or fetched["info"]["end_time"] == now + 1

    assert post("/runs/delete", {"run_id": run_id}).status_code == 200
    inactive = post("/runs/set-tag", {"run_id": run_id, "key": "team", "value": "b"})
    assert inactive.status_code == 400 and inactive.json()["error_code"] == "INVALID_PARAMETER_VALUE", inactive.text
    assert "must be in the 'active' state" in inactive.json()["message"]
