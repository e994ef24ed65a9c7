"""Tracking-server configurations side by side, on the stack's Postgres and bucket: each one runs in a
container of the tracking-server image published on 127.0.0.1:5002 while the load benchmark drives it.

    python -m bench.server_variants baseline      # `mlflow server` with MLflow's defaults, K = 1, 8, 32, 64
    python -m bench.server_variants tuning        # the knobs we tuned, one at a time, at K = 64
    python -m bench.server_variants side-by-side [LABEL ...]
        # stack (fast store on / off), MLflow defaults, team mode (basic, OIDC token), FastTrackML

Team mode's variants run behind the stack's gateway configuration ending TLS (bench/team_variants.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.common import REPO, compose, save
from bench.server_load import Client, container_id, cpu_seconds, load, load_and_print, stack_containers
from bench.team_variants import TeamMode
from tests.support.waiting import wait_until

# Per compose project, so that two stacks on one machine can each run their benchmark.
NAME = f"{os.environ.get('COMPOSE_PROJECT_NAME', 'mlflow-stack')}-bench-server"
PORT = int(os.environ.get("BENCH_VARIANT_PORT", "5002"))
API = f"http://localhost:{PORT}/api/2.0/mlflow"
TUNING_K = 64
# Healthy is not settled: MLflow's job runner starts eight processes after the server answers.
SETTLED_CORES = 0.15
SETTLE_TIMEOUT = 90
# A busy machine can take minutes to boot MLflow's server.
START_TIMEOUT = int(os.environ.get("BENCH_START_TIMEOUT", "240"))
# A configuration that stalls must not eat the benchmark's budget.
TUNING_DEADLINE = float(os.environ.get("BENCH_TUNING_DEADLINE", "45"))
# Plain `mlflow server`: the stack's settings only resolve the secrets (files) and build the database URI.
PLAIN_MLFLOW = (
    "import os; from mlflow_stack_server.settings import Settings; "
    "Settings.from_environment().export_secrets(); "
    "os.execvp('mlflow', ['mlflow', 'server', '--host', '0.0.0.0', '--port', '5000', "
    "'--serve-artifacts', '--artifacts-destination', 's3://' + os.environ['MLFLOW_ARTIFACTS_BUCKET'] + '/'])"
)
# The plugin is in the image: MLflow's defaults include its plain store.
MLFLOW_DEFAULTS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true", "MLFLOW_FAST_STORE": "off"}
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


FASTTRACKML_DATABASE = "fasttrackml"
FASTTRACKML = (
    "exec fml server --listen-address 0.0.0.0:5000 --default-artifact-root /tmp/fml-artifacts "
    # The stack hands the server its password as a file (POSTGRES_PASSWORD_FILE); a plain variable wins.
    f'--database-uri "postgres://$POSTGRES_USER:${{POSTGRES_PASSWORD:-$(cat "$POSTGRES_PASSWORD_FILE")}}'
    f"@$POSTGRES_HOST:5432/{FASTTRACKML_DATABASE}"
    '?sslmode=disable"'
)
# Every variant runs without the service's healthcheck (that file says why); start() waits on /health itself.
NO_HEALTHCHECK = "bench/no-healthcheck.yml"
SIDE_BY_SIDE_KS = (8, 64)
REPEATS = int(os.environ.get("BENCH_REPEATS", "2"))
# One unmeasured round at K = 8 after each start: a Python worker's first requests build its stores, pools and
# caches (about 0.3 s of CPU per worker here), which at K = 8 (224 requests) would add ~3 ms to every request
# measured; a Go server has next to none. BENCH_WARMUP=0 measures from a cold start as before.
WARMUP = os.environ.get("BENCH_WARMUP", "1") != "0"


def fml_binary() -> str:
    found = shutil.which("fml")
    if not found:
        raise SystemExit("bench: no `fml` on PATH: .venv/bin/pip install --no-deps -r bench/requirements.txt")
    return str(Path(found).resolve())


def create_fasttrackml_database() -> None:
    """FastTrackML keeps its own schema: a database of its own on the stack's Postgres server."""
    script = (
        f'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -tAc "SELECT 1 FROM pg_database WHERE datname = \'{FASTTRACKML_DATABASE}\'"'
        f' | grep -q 1 || createdb -U "$POSTGRES_USER" {FASTTRACKML_DATABASE}'
    )
    compose("exec", "-T", "postgres", "sh", "-c", script)


def load_average() -> float:
    return os.getloadavg()[0]


@dataclass
class Running:
    """A started variant: where its API is, whose CPU to measure, and how its trainers log in."""

    api: str = API
    containers: dict[str, str | None] = field(default_factory=lambda: stack_containers(NAME))
    client: Client | None = None
    new_experiment: Callable[[str], str] | None = None
    # The server's own line on whether its fast HTTP path serves the writes (empty for other servers).
    fast_path: str = field(default_factory=lambda: _fast_path_line())


def _fast_path_line() -> str:
    logs = subprocess.run(["docker", "logs", NAME], cwd=REPO, capture_output=True, text=True).stdout.splitlines()
    return next((line.split("] ", 1)[-1] for line in logs if line.startswith("[tracking-server] fast path")), "")


def stop() -> None:
    subprocess.run(["docker", "rm", "-f", NAME], cwd=REPO, capture_output=True)
    # A team-mode variant's gateway and provider (also after an interrupted run: the bench script's trap).
    for role in ("gateway", "oidc"):
        subprocess.run(["docker", "rm", "-f", f"{NAME}-{role}"], cwd=REPO, capture_output=True)


def start(
    environment: dict[str, str],
    plain_mlflow: bool = False,
    fasttrackml: bool = False,
    team: str | None = None,
    team_mode: TeamMode | None = None,
) -> Running:
    """`team` (basic or oidc, with `team_mode`): the stack's server with that login kind and MLFLOW_TLS=on,
    unpublished, behind a gateway ending TLS on PORT."""
    stop()
    command = ["run", "--detach", "--no-deps", "--name", NAME]
    if team:
        assert team_mode is not None
        environment = {**environment, **team_mode.server_environment(team)}
        team_mode.prepare(team, environment)
        command += ["--volume", team_mode.volume]
    else:
        command += ["--publish", f"127.0.0.1:{PORT}:5000"]
    for key, value in environment.items():
        command += ["--env", f"{key}={value}"]
    if plain_mlflow:
        command += ["--entrypoint", "python", "tracking-server", "-c", PLAIN_MLFLOW]
    elif fasttrackml:
        # FastTrackML's static binary in the tracking-server container: same networks, same database server.
        command += ["--volume", f"{fml_binary()}:/usr/local/bin/fml:ro", "--entrypoint", "sh", "tracking-server"]
        command += ["-c", FASTTRACKML]
    else:
        command += ["tracking-server"]
    compose(*command, extra_file=NO_HEALTHCHECK)
    if team_mode and team:
        team_mode.start_gateway()
    healthy = team_mode.healthy if team_mode and team else _healthy
    wait_until(healthy, START_TIMEOUT, f"bench: {NAME} not healthy after {START_TIMEOUT} s (docker logs {NAME})", 1)
    _wait_until_idle()
    if not (team_mode and team):
        return Running()
    client, new_experiment = team_mode.logins(team)
    containers = {**stack_containers(NAME), "gateway": container_id(team_mode.gateway_name)}
    return Running(team_mode.api, containers, client, new_experiment)


def _healthy() -> bool:
    try:
        return requests.get(f"http://localhost:{PORT}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _wait_until_idle() -> None:
    """Until the container uses under SETTLED_CORES over two seconds, so that its start-up is not measured."""
    container = container_id(NAME)
    if not container or (before := cpu_seconds(container)) is None:
        return
    used = [before]

    def settled() -> bool:
        time.sleep(2)  # the CPU it used over these two seconds
        after = cpu_seconds(container)
        if after is None:
            return True
        used.append(after)
        return (used[-1] - used[-2]) / 2 < SETTLED_CORES

    # Still busy after SETTLE_TIMEOUT: measure anyway; the load report shows what the machine was doing.
    with contextlib.suppress(AssertionError):
        wait_until(settled, SETTLE_TIMEOUT, f"{NAME} still busy", interval=0)


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


# label -> how to start it; every one on the stack's Postgres server, published on 127.0.0.1:PORT.
SIDE_BY_SIDE: dict[str, dict[str, Any]] = {
    "stack, fast store": {"environment": {"MLFLOW_FAST_STORE": "on"}},
    "stack, MLFLOW_FAST_STORE=off": {"environment": {"MLFLOW_FAST_STORE": "off"}},
    "MLflow defaults": {"environment": MLFLOW_DEFAULTS, "plain_mlflow": True},
    # Team mode (TLS and logins): the shipped server with logins, behind the gateway ending TLS.
    "team mode, basic": {"environment": {"MLFLOW_FAST_STORE": "on"}, "team": "basic"},
    "team mode, OIDC token": {"environment": {"MLFLOW_FAST_STORE": "on"}, "team": "oidc"},
    "FastTrackML 0.6.0": {"environment": {}, "fasttrackml": True},
}


def side_by_side() -> None:
    """Each server in turn, the same closed-loop load at each K, REPEATS times; load average recorded with each
    measurement because the machine may be shared (CPU per request is the steadier number). Results are saved
    after every measurement, and a server that does not start is recorded and skipped."""
    labels = sys.argv[2:] or list(SIDE_BY_SIDE)
    unknown = [label for label in labels if label not in SIDE_BY_SIDE]
    if unknown:
        raise SystemExit(f"bench: unknown side-by-side server {unknown[0]!r}; expected one of {list(SIDE_BY_SIDE)}")
    create_fasttrackml_database()
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    team_mode = TeamMode(NAME, PORT)
    try:
        for repeat in range(REPEATS):
            for label in labels:
                try:
                    running = start(**SIDE_BY_SIDE[label], team_mode=team_mode)
                except (SystemExit, subprocess.CalledProcessError, requests.RequestException) as error:
                    reason = error.stderr.strip()[-500:] if isinstance(error, subprocess.CalledProcessError) else error
                    failures.append(f"{label} (run {repeat + 1}): {reason}")
                    print(f"bench: {label} did not start, skipped: {reason}")
                    continue
                if WARMUP:
                    load(
                        8, running.containers, running.api, client=running.client, new_experiment=running.new_experiment
                    )
                for k in SIDE_BY_SIDE_KS:
                    before = load_average()
                    row = load_and_print(
                        f"{label} (run {repeat + 1})", k, running.containers, running.api,
                        client=running.client, new_experiment=running.new_experiment,
                    )  # fmt: skip
                    rows.append({"server": label, "repeat": repeat + 1, "load_average_1m_before": before,
                                 "load_average_1m_after": load_average(), "fast_path": running.fast_path,
                                 **row})  # fmt: skip
                    print(f"bench:   load average {before:.2f} -> {load_average():.2f}")
                    save("server_side_by_side", {"ks": SIDE_BY_SIDE_KS, "repeats": REPEATS, "rows": rows,
                                                 "failures": failures, "warmup": WARMUP})  # fmt: skip
    finally:
        stop()
        team_mode.close()


if __name__ == "__main__":
    {"baseline": baseline, "tuning": tuning, "side-by-side": side_by_side, "stop": stop}[sys.argv[1]]()
