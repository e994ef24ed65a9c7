"""What a login costs on the run writes: the server's app with and without basic auth, fast path on and off.

    python -m bench.fast_path_auth [K ...]      # default K = 8

Each configuration is one uvicorn process of the server's own app factory (no compose stack, no TLS, no
gateway: the tracking server alone), on a database of its own on a throwaway Postgres of the stack's image
(tests/fast_store's harness), driven by bench.server_load's closed-loop trainers. With basic auth they log in as
a user that is not an admin (the one the stack gives trainers), so every write runs the auth app's permission
check; the login cache is on (60 s), and the fast path remembers an "allowed" until the auth database changes
(at most MLFLOW_AUTH_DECISION_CACHE_SECONDS, 60 s), as the stack ships them: the auth database is prepared as the
entrypoint's prepare leaves it (MLflow's auth schema and the change triggers of auth_changes.py). One configuration
caps an allowance at 1 s, one switches the memory off (0).
Reported: requests/s, p99, the server process's CPU per request (from /proc, its threads included), and with
basic auth the share of the fast path's writes answered from a remembered allowance, each round of BENCH_REPEATS;
BENCH_CONFIGURATIONS (labels separated by ";") runs only those. BENCH_EPOCH_SECONDS paces each trainer's epochs
(bench.server_load; default 0: closed loop).
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import requests

from bench.common import save
from bench.server_load import load
from tests.fast_store.conftest import create_database, postgres_container
from tests.fast_store.test_auth_changes import migrated_auth_database
from tests.fast_store.test_fast_path_generated import _healthy, _start
from tests.support.fast_path_counter import COUNT_PATH, FROM_MEMORY
from tests.support.waiting import wait_until

REPEATS = int(os.environ.get("BENCH_REPEATS", "2"))
EPOCH_SECONDS = float(os.environ.get("BENCH_EPOCH_SECONDS", "0"))
# With basic auth: the server's factory with a count of the fast path's answers (and of those from memory).
COUNTED_BASIC_AUTH = "tests.support.fast_path_counter:create_app_with_basic_auth"
ADMIN = ("bench-admin", secrets.token_hex(12))
TRAINER = ("bench-trainer", secrets.token_hex(12))
# label: (app factory, fast path on, MLFLOW_AUTH_DECISION_CACHE_SECONDS; None: the shipped default)
CONFIGURATIONS: dict[str, tuple[str, bool, str | None]] = {
    "no logins, fast path": ("create_app", True, None),
    "basic auth, fast path": ("create_app_with_basic_auth", True, None),
    "basic auth, fast path, allowances for at most 1 s (MLFLOW_AUTH_DECISION_CACHE_SECONDS=1)": (
        "create_app_with_basic_auth", True, "1",
    ),
    "basic auth, fast path, every write decided (MLFLOW_AUTH_DECISION_CACHE_SECONDS=0)": (
        "create_app_with_basic_auth", True, "0",
    ),
    "basic auth, MLflow's path (MLFLOW_FAST_STORE=off)": ("create_app_with_basic_auth", False, None),
    "no logins, MLflow's path (MLFLOW_FAST_STORE=off)": ("create_app", False, None),
}  # fmt: skip


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _start_server(server: str, factory: str, fast: bool, decision_seconds: str | None, folder: Path) -> Any:
    database = create_database(server)
    extra: dict[str, str] = {}
    if factory == "create_app_with_basic_auth":
        config = folder / f"{factory}-{fast}.ini"
        config.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = {migrated_auth_database(server).replace('%', '%%')}\n"
            f"admin_username = {ADMIN[0]}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            "auth_cache_ttl_seconds = 60\n"
        )
        extra = {
            "MLFLOW_AUTH": "basic",
            "_MLFLOW_SGI_NAME": "uvicorn",
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        }
        if decision_seconds is not None:
            extra["MLFLOW_AUTH_DECISION_CACHE_SECONDS"] = decision_seconds
    name = f"{factory}-{'fast' if fast else 'mlflow'}-{decision_seconds or 'default'}"
    app = COUNTED_BASIC_AUTH if extra else f"mlflow_stack_server.proxied_artifacts:{factory}"
    started = _start(name, database, fast, folder, app, extra)
    wait_until(lambda: _healthy(started), 120, name, interval=0.5, ignoring=(requests.RequestException,))
    if extra:
        answer = requests.post(
            started.url + "/api/2.0/mlflow/users/create",
            json={"username": TRAINER[0], "password": TRAINER[1]},
            auth=ADMIN,
            timeout=30,
        )
        answer.raise_for_status()
    return started


def measure(label: str, server: Any, k: int, logins: bool) -> dict[str, Any]:
    if logins:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = TRAINER
    else:
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)
    api = server.url + "/api/2.0/mlflow"
    load(k, {}, api, epoch_seconds=EPOCH_SECONDS)  # warm-up: stores, pools, the login cache
    answered = _fast_path_answers(server, logins)
    before, started = process_cpu_seconds(server.process.pid), time.perf_counter()
    row = load(k, {}, api, epoch_seconds=EPOCH_SECONDS)
    cpu = process_cpu_seconds(server.process.pid) - before
    row["cpu_ms_per_request"] = {"tracking_server": round(1000 * cpu / max(1, row["requests"]), 2)}
    if logins:
        answered = _fast_path_answers(server, logins) - answered
        writes = sum(count for status, count in answered.items() if status != FROM_MEMORY)
        row["fast_path_writes"] = writes
        row["allowed_from_memory"] = round(answered[FROM_MEMORY] / max(1, writes), 3)
    row["load_average_1m"] = os.getloadavg()[0]
    print(
        f"bench: {label} K={k}: {row['requests_per_second']} req/s, p99 {row['latency_ms_p99']} ms, "
        f"server CPU {row['cpu_ms_per_request']['tracking_server']} ms/request, errors {row['errors']}, "
        f"from memory {row.get('allowed_from_memory', '-')} "
        f"({time.perf_counter() - started:.0f} s, load {row['load_average_1m']:.1f})"
    )
    return row


def _fast_path_answers(server: Any, logins: bool) -> Counter[str]:
    if not logins:
        return Counter()
    return Counter(requests.get(server.url + COUNT_PATH, timeout=30).json())


def main() -> None:
    ks = [int(k) for k in sys.argv[1:]] or [8]
    chosen = [label.strip() for label in os.environ.get("BENCH_CONFIGURATIONS", "").split(";") if label.strip()]
    unknown = set(chosen) - set(CONFIGURATIONS)
    if unknown:
        sys.exit(f"BENCH_CONFIGURATIONS: unknown {sorted(unknown)}; choose from {list(CONFIGURATIONS)}")
    configurations = {label: CONFIGURATIONS[label] for label in chosen} or CONFIGURATIONS
    rows: list[dict[str, Any]] = []
    with postgres_container() as server, TemporaryDirectory() as folder:
        for repeat in range(REPEATS):
            for label, (factory, fast, decision_seconds) in configurations.items():
                started = _start_server(server, factory, fast, decision_seconds, Path(folder))
                try:
                    for k in ks:
                        row = measure(label, started, k, factory == "create_app_with_basic_auth")
                        rows.append({"configuration": label, "repeat": repeat + 1, **row})
                finally:
                    started.process.terminate()
                    started.process.wait(timeout=30)
    save("fast_path_auth", {"ks": ks, "repeats": REPEATS, "epoch_seconds": EPOCH_SECONDS, "rows": rows})


if __name__ == "__main__":
    main()
