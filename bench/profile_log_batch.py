"""Where a log_batch request's server CPU goes, with MLflow's store and with the fast store.

    python -m bench.profile_log_batch [REQUESTS]

Runs MLflow's own Flask app in this process (the handlers the server runs, without the HTTP server in front)
against a throwaway Postgres container of the stack's image, sends REQUESTS log_batch requests of the load
benchmark's shape (5 metrics of one epoch) to one run under cProfile with a CPU-time clock, and reports the CPU
per request by package and the most expensive functions. Writes docs/bench-results/log_batch_profile.json.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

from bench.common import REPO, save
from tests.support.waiting import wait_until

sys.path.insert(0, str(REPO / "tracking-server"))
POSTGRES_IMAGE = os.environ.get("POSTGRES_IMAGE", "postgres:16-bookworm")
METRICS_PER_REQUEST = 5
# Package families, matched on the file path of each profiled function (first match wins).
FAMILIES = (
    ("mlflow store (ORM / Core statements)", ("mlflow/store/", "mlflow_stack_server/")),
    ("SQLAlchemy", ("sqlalchemy/",)),
    ("psycopg2 and socket waits", ("psycopg2", "{method 'execute'", "{method 'executemany'", "{method 'commit'")),
    (
        "mlflow request handling (protobuf, validation, entities)",
        ("mlflow/server/", "mlflow/utils/", "mlflow/entities/"),
    ),
    ("protobuf", ("google/protobuf",)),
    ("Flask / Werkzeug", ("flask/", "werkzeug/")),
)


def start_postgres() -> tuple[str, str]:
    password, name = secrets.token_hex(16), f"mlflow-stack-profile-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "run", "--detach", "--rm", "--name", name, "--env", f"POSTGRES_PASSWORD={password}",
         "--publish", "127.0.0.1::5432", POSTGRES_IMAGE],
        check=True, capture_output=True,
    )  # fmt: skip
    port = subprocess.run(["docker", "port", name, "5432/tcp"], check=True, capture_output=True, text=True)
    uri = f"postgresql+psycopg2://postgres:{password}@127.0.0.1:{port.stdout.split(':')[-1].strip()}"
    return name, uri


def wait_for(uri: str) -> None:
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri + "/postgres")

    def connects() -> bool:
        try:
            with engine.connect():
                return True
        finally:
            engine.dispose()

    wait_until(
        connects,
        60,
        "bench: the profiling Postgres did not start within 60 s",
        ignoring=(sqlalchemy.exc.OperationalError,),
    )


def family(location: str) -> str:
    for name, markers in FAMILIES:
        if any(marker in location for marker in markers):
            return name
    return "other (Python runtime, json, logging, ...)"


def profile(database_uri: str, fast: bool, requests: int) -> dict[str, Any]:
    from mlflow.server import app, handlers

    from mlflow_stack_server.store_plugin import tracking_store

    os.environ["MLFLOW_FAST_STORE"] = "on" if fast else "off"
    # What the mlflow.tracking_store entry point does inside the image (the host venv does not install it).
    handlers._tracking_store_registry.register("postgresql", tracking_store)
    handlers._tracking_store = None
    handlers._get_tracking_store(database_uri, tempfile.mkdtemp(prefix="profile-artifacts-"))
    client = app.test_client()
    api = "/api/2.0/mlflow"
    experiment = client.post(api + "/experiments/create", json={"name": f"profile-{uuid.uuid4().hex[:8]}"})
    run = client.post(api + "/runs/create", json={"experiment_id": json.loads(experiment.data)["experiment_id"]})
    run_id = json.loads(run.data)["run"]["info"]["run_id"]
    bodies = [
        {
            "run_id": run_id,
            "metrics": [
                {"key": f"metric_{i}", "value": 1.0 / step + i, "timestamp": 1_700_000_000_000 + step, "step": step}
                for i in range(METRICS_PER_REQUEST)
            ],
        }
        for step in range(1, requests + 11)
    ]
    for body in bodies[:10]:  # warm caches, pools and compiled statements
        assert client.post(api + "/runs/log-batch", json=body).status_code == 200
    profiler = cProfile.Profile(time.process_time)
    started_cpu, started = time.process_time(), time.perf_counter()
    profiler.enable()
    for body in bodies[10:]:
        response = client.post(api + "/runs/log-batch", json=body)
        if response.status_code != 200:
            raise SystemExit(f"bench: log_batch answered {response.status_code}: {response.text}")
    profiler.disable()
    cpu_ms = (time.process_time() - started_cpu) * 1000 / requests
    wall_ms = (time.perf_counter() - started) * 1000 / requests
    stats = pstats.Stats(profiler)
    by_family: dict[str, float] = {}
    functions: list[tuple[float, str]] = []
    for (path, line, name), (_, _, own, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        location = f"{path}:{line}({name})"
        by_family[family(location)] = by_family.get(family(location), 0.0) + own
        functions.append((own, location.split("site-packages/")[-1]))
    total = sum(by_family.values()) or 1.0
    top = sorted(functions, reverse=True)[:12]
    handlers._get_tracking_store().engine.dispose()  # type: ignore[attr-defined]
    return {
        "store": "fast" if fast else "mlflow",
        "requests": requests,
        "cpu_ms_per_request": round(cpu_ms, 2),
        "wall_ms_per_request": round(wall_ms, 2),
        "cpu_share_by_family": {k: round(v / total, 3) for k, v in sorted(by_family.items(), key=lambda kv: -kv[1])},
        "top_functions_own_cpu_ms_per_request": [(where, round(own * 1000 / requests, 3)) for own, where in top],
    }


def main() -> None:
    requests = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    name, server = start_postgres()
    try:
        wait_for(server)
        rows = [profile(server + "/postgres", fast, requests) for fast in (False, True)]
    finally:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True, check=False)
    for row in rows:
        print(
            f"bench: log_batch profile, {row['store']} store: {row['cpu_ms_per_request']} ms CPU "
            f"({row['wall_ms_per_request']} ms wall) per request, in-process, no HTTP server"
        )
        for where, share in row["cpu_share_by_family"].items():
            print(f"bench:   {share * 100:5.1f} %  {where}")
        for where, ms in row["top_functions_own_cpu_ms_per_request"][:6]:
            print(f"bench:   {ms:6.3f} ms  {where}")
    save("log_batch_profile", {"metrics_per_request": METRICS_PER_REQUEST, "rows": rows})


if __name__ == "__main__":
    main()
