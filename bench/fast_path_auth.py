"""What a login costs on the run writes: the server's app without logins, with basic auth and with OIDC tokens
(mlflow-oidc-auth, no provider: the token is made in the plugin's database), fast path on and off.

    python -m bench.fast_path_auth [K ...]      # default K = 8; BENCH_CONFIGURATIONS='label;label' picks some

Each configuration is one uvicorn process of the server's own app factory (no compose stack, no TLS, no
gateway: the tracking server alone), on a database of its own on a throwaway Postgres of the stack's image
(tests/fast_store's harness), driven by bench.server_load's closed-loop trainers. With basic auth they log in as
a user that is not an admin (the one the stack gives trainers), so every write runs the auth app's permission
check; the login cache is on (60 s), and the fast path remembers an "allowed" until the auth database changes
(at most MLFLOW_AUTH_DECISION_CACHE_SECONDS, 60 s), as the stack ships them: the auth database is prepared as the
entrypoint's prepare leaves it (MLflow's auth schema and the change triggers of auth_changes.py). One configuration
caps an allowance at 1 s, one switches the memory off (0).
Reported: requests/s, p99, the server process's CPU per request (from /proc, its threads included), and with
logins the share of the fast path's writes answered from a remembered allowance (with oidc: in front of the
plugin's app), each round of BENCH_REPEATS. BENCH_SAVE_NAME names the results file (fast_path_auth).
BENCH_EPOCH_SECONDS paces each trainer's epochs (bench.server_load; default 0: closed loop).
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import requests

from bench.common import save
from bench.server_load import load
from mlflow_stack_server import auth_changes
from tests.fast_store.conftest import create_database, postgres_container
from tests.fast_store.test_auth_changes import migrated_auth_database
from tests.fast_store.test_fast_path_generated import _healthy, _start
from tests.support.fast_path_counter import COUNT_PATH, FROM_MEMORY
from tests.support.waiting import wait_until

REPEATS = int(os.environ.get("BENCH_REPEATS", "2"))
EPOCH_SECONDS = float(os.environ.get("BENCH_EPOCH_SECONDS", "0"))
# With basic auth: the server's factory with a count of the fast path's answers (and of those from memory).
COUNTED_BASIC_AUTH = "tests.support.fast_path_counter:create_app_with_basic_auth"
# With oidc and the fast path: the same count (those from memory answered in front of the plugin's app).
COUNTED_OIDC = "tests.support.fast_path_counter:create_app_with_oidc"
# Counted factories (the others have no count endpoint).
COUNTED = {"create_app_with_basic_auth": COUNTED_BASIC_AUTH, "create_app_with_oidc": COUNTED_OIDC}
# The results file in docs/bench-results (bench.common.save), without .json.
SAVE_NAME = os.environ.get("BENCH_SAVE_NAME", "fast_path_auth")
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
    "oidc token, fast path": ("create_app_with_oidc", True, None),
    "oidc token, fast path, every write decided (MLFLOW_AUTH_DECISION_CACHE_SECONDS=0)": (
        "create_app_with_oidc", True, "0",
    ),
    # As before the oidc hook: the fast store on, every write through the plugin's Flask path.
    "oidc token, writes through Flask": ("bench.fast_path_auth:create_app_with_oidc_without_fast_path", True, None),
    "oidc token, MLflow's path (MLFLOW_FAST_STORE=off)": ("create_app_with_oidc", False, None),
}  # fmt: skip
OIDC_SECRET_KEY = secrets.token_hex(16)


def create_app_with_oidc_without_fast_path() -> Any:
    """The server's OIDC app as it was before the fast path had an oidc hook (no hook: no fast path)."""
    from mlflow_stack_server import fast_path_auth
    from mlflow_stack_server.proxied_artifacts import create_app_with_oidc

    fast_path_auth.HOOKS.pop("oidc", None)
    return create_app_with_oidc()


def _oidc_environment(server: str, database: str, folder: Path, name: str) -> tuple[dict[str, str], str]:
    """The server's environment with MLFLOW_AUTH=oidc (no provider: the trainer's token lives in the plugin's
    database), and the trainer's token, created with the plugin's own store."""
    from mlflow_stack_server.oidc_auth import plugin_environment
    from mlflow_stack_server.settings import Settings

    users = create_database(server)
    stack = {
        "MLFLOW_AUTH": "oidc",
        "MLFLOW_BACKEND_STORE_URI": database,
        "MLFLOW_ARTIFACTS_DESTINATION": (folder / f"{name}-artifacts").as_uri(),
        "MLFLOW_OIDC_DATABASE_URI": users,
        "MLFLOW_OIDC_ISSUER": "https://idp.invalid",  # never contacted
        "MLFLOW_OIDC_CLIENT_ID": "mlflow",
        "MLFLOW_OIDC_CLIENT_SECRET": "not-used",
        "MLFLOW_OIDC_REDIRECT_URI": "http://127.0.0.1/callback",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": OIDC_SECRET_KEY,
        "_MLFLOW_SGI_NAME": "uvicorn",
    }
    os.environ.setdefault("CONFIG_PROVIDERS", "env")
    os.environ.setdefault("SECRET_KEY", OIDC_SECRET_KEY)
    from mlflow_oidc_auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(users)  # the plugin's migrations, before the server starts
    # As prepare leaves the plugin's database: the change triggers the fast path's memory listens to.
    auth_changes.prepare_change_notifications(users, auth_changes.OIDC_UNWATCHED_COLUMNS)
    # A person's account, not an admin: every write runs the plugin's permission check.
    store.create_user(TRAINER[0], TRAINER[0], is_admin=False, is_service_account=False)
    expires = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=1)
    token = str(store.create_user_token(TRAINER[0], "bench", expires, "bench")[1])
    store.engine.dispose()
    environment = {**stack, **plugin_environment(Settings.from_environment(stack), None), "LOG_LEVEL": "WARNING"}
    return environment, token


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _start_server(
    server: str, factory: str, fast: bool, decision_seconds: str | None, folder: Path
) -> tuple[Any, str | None]:
    """The server, and the oidc trainer's token (None: basic auth or no logins)."""
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
    name = f"{factory.rsplit(':', 1)[-1]}-{'fast' if fast else 'mlflow'}-{decision_seconds or 'default'}"
    token = None
    if "oidc" in factory:
        extra, token = _oidc_environment(server, database, folder, name)
    if extra and decision_seconds is not None:
        extra["MLFLOW_AUTH_DECISION_CACHE_SECONDS"] = decision_seconds
    full_name = factory if ":" in factory else f"mlflow_stack_server.proxied_artifacts:{factory}"
    app = COUNTED[factory] if fast and factory in COUNTED else full_name
    started = _start(name, database, fast, folder, app, extra)
    wait_until(lambda: _healthy(started), 120, name, interval=0.5, ignoring=(requests.RequestException,))
    if extra and token is None:
        answer = requests.post(
            started.url + "/api/2.0/mlflow/users/create",
            json={"username": TRAINER[0], "password": TRAINER[1]},
            auth=ADMIN,
            timeout=30,
        )
        answer.raise_for_status()
    return started, token


def measure(label: str, server: Any, k: int, password: str | None, counted: bool) -> dict[str, Any]:
    """`password`: the trainer's (basic auth) or its token (oidc); None: no logins. `counted`: the server counts
    its fast path's answers (basic auth, oidc)."""
    if password is not None:
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = TRAINER[0], password
    else:
        os.environ.pop("MLFLOW_TRACKING_USERNAME", None)
        os.environ.pop("MLFLOW_TRACKING_PASSWORD", None)
    api = server.url + "/api/2.0/mlflow"
    load(k, {}, api, epoch_seconds=EPOCH_SECONDS)  # warm-up: stores, pools, the login cache
    answered = _fast_path_answers(server, counted)
    before, started = process_cpu_seconds(server.process.pid), time.perf_counter()
    row = load(k, {}, api, epoch_seconds=EPOCH_SECONDS)
    cpu = process_cpu_seconds(server.process.pid) - before
    row["cpu_ms_per_request"] = {"tracking_server": round(1000 * cpu / max(1, row["requests"]), 2)}
    if counted:
        answered = _fast_path_answers(server, counted) - answered
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


def _fast_path_answers(server: Any, counted: bool) -> Counter[str]:
    if not counted:
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
                started, token = _start_server(server, factory, fast, decision_seconds, Path(folder))
                password = None if factory == "create_app" else token or TRAINER[1]
                try:
                    for k in ks:
                        row = measure(label, started, k, password, fast and factory in COUNTED)
                        rows.append({"configuration": label, "repeat": repeat + 1, **row})
                finally:
                    started.process.terminate()
                    started.process.wait(timeout=30)
    save(SAVE_NAME, {"ks": ks, "repeats": REPEATS, "epoch_seconds": EPOCH_SECONDS, "rows": rows})


if __name__ == "__main__":
    main()
