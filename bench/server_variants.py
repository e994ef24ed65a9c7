"""Tracking-server configurations side by side, on the stack's Postgres and bucket: each one runs in a
container of the tracking-server image published on 127.0.0.1:5002 while the load benchmark drives it.

    python -m bench.server_variants baseline   # `mlflow server` with MLflow's defaults, K = 1, 8, 32, 64
    python -m bench.server_variants tuning     # the knobs we tuned, one at a time, at K = 64
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import requests

from bench.common import REPO, compose, save
from bench.server_load import container_id, cpu_seconds, load_and_print, stack_containers

NAME = "mlflow-stack-bench-server"
PORT = 5002
API = f"http://localhost:{PORT}/api/2.0/mlflow"
TUNING_K = 64
# Healthy is not settled: MLflow's job runner starts eight processes after the server answers.
SETTLED_CORES = 0.15
SETTLE_TIMEOUT = 90
# A configuration that stalls must not eat the benchmark's budget.
TUNING_DEADLINE = float(os.environ.get("BENCH_TUNING_DEADLINE", "45"))
# Plain `mlflow server`: the stack's settings only resolve the secrets (files) and build the database URI.
PLAIN_MLFLOW = (
    "import os; from mlflow_stack_server.settings import Settings; "
    "Settings.from_environment().export_secrets(); "
    "os.execvp('mlflow', ['mlflow', 'server', '--host', '0.0.0.0', '--port', '5000', "
    "'--serve-artifacts', '--artifacts-destination', 's3://' + os.environ['MLFLOW_ARTIFACTS_BUCKET'] + '/'])"
)
MLFLOW_DEFAULTS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"}
# label -> environment of the stack's own entrypoint; the shipped values are 2 workers, 8 threads.
TUNING: dict[str, dict[str, str]] = {
    "before: 2 workers, MLflow's 40 threads and pool 5+10": {
        "MLFLOW_REQUEST_THREADS": "40",
        "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "5",
        "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "10",
    },
    "1 worker, 8 threads": {"MLFLOW_WORKERS": "1"},
    "2 workers, 4 threads": {"MLFLOW_REQUEST_THREADS": "4"},
    "shipped: 2 workers, 8 threads, pool 8+8": {},
    "2 workers, 16 threads": {"MLFLOW_REQUEST_THREADS": "16"},
    "4 workers, 8 threads": {"MLFLOW_WORKERS": "4"},
    # Not shipped: a crash could lose the last acknowledged writes. Measured to show what commits cost.
    "shipped + Postgres synchronous_commit=off": {"PGOPTIONS": "-c synchronous_commit=off"},
}


def stop() -> None:
    subprocess.run(["docker", "rm", "-f", NAME], cwd=REPO, capture_output=True)


def start(environment: dict[str, str], plain_mlflow: bool = False) -> None:
    stop()
    command = [
        "run",
        "--detach",
        "--no-deps",
        "--name",
        NAME,
        "--publish",
        f"127.0.0.1:{PORT}:5000",
    ]
    for key, value in environment.items():
        command += ["--env", f"{key}={value}"]
    if plain_mlflow:
        command += ["--entrypoint", "python", "tracking-server", "-c", PLAIN_MLFLOW]
    else:
        command += ["tracking-server"]
    compose(*command)
    deadline = time.monotonic() + 120
    while not _healthy():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {NAME} not healthy after 120 s (docker logs {NAME})")
        time.sleep(1)
    _wait_until_idle()


def _healthy() -> bool:
    try:
        return requests.get(f"http://localhost:{PORT}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _wait_until_idle() -> None:
    """Until the container uses under SETTLED_CORES over two seconds, so that its start-up is not measured."""
    container = container_id(NAME)
    before = cpu_seconds(container) if container else None
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while before is not None and container and time.monotonic() < deadline:
        time.sleep(2)
        after = cpu_seconds(container)
        if after is None or (after - before) / 2 < SETTLED_CORES:
            return
        before = after


def baseline() -> None:
    start(MLFLOW_DEFAULTS, plain_mlflow=True)
    try:
        containers = stack_containers(NAME)
        rows = [load_and_print("mlflow-defaults", k, containers, API) for k in (1, 8, 32, 64)]
    finally:
        stop()
    save("server_load_mlflow-defaults", {"label": "mlflow-defaults", "rows": rows})


def tuning() -> None:
    rows = []
    try:
        for label, environment in TUNING.items():
            start(environment)
            row = load_and_print(label, TUNING_K, stack_containers(NAME), API, TUNING_DEADLINE)
            rows.append({"configuration": label, "environment": environment, **row})
    finally:
        stop()
    save("server_tuning", {"k": TUNING_K, "deadline_seconds": TUNING_DEADLINE, "rows": rows})


if __name__ == "__main__":
    {"baseline": baseline, "tuning": tuning, "stop": stop}[sys.argv[1]]()
