"""K simulated trainers against a tracking server: each creates a run, logs its params, one log_batch of
metrics per epoch, a tag, and ends the run. Reports requests/s, metric points/s, per-call latency, and
where the CPU went (tracking server, Postgres, this load generator) per request.

    python -m bench.server_load LABEL [K ...] [--epoch-seconds T]

By default trainers are closed-loop: each sends its
next call as soon as the last one answers, so this measures saturation, not a typical day; with
--epoch-seconds T each starts at a random moment within T and logs one epoch every T seconds, like
independent real trainers.
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bench.common import REPO, STACK_URL, percentile, save

EPOCHS = int(os.environ.get("BENCH_EPOCHS", "10"))
RUNS_PER_TRAINER = int(os.environ.get("BENCH_RUNS_PER_TRAINER", "2"))
METRICS_PER_EPOCH = 5
# A stalled server must not stall the benchmark: calls give up after CALL_TIMEOUT, and no trainer
# starts a new call after DEADLINE seconds; calls never made count as errors.
CALL_TIMEOUT = float(os.environ.get("BENCH_CALL_TIMEOUT", "30"))
DEADLINE = float(os.environ.get("BENCH_DEADLINE", "90"))
API = STACK_URL + "/api/2.0/mlflow"
CALLS_PER_RUN = 4 + EPOCHS


def container_id(name: str) -> str | None:
    """A compose service name (tracking-server) or a container name (mlflow-stack-baseline)."""
    for command in (
        ["docker", "compose", "ps", "-q", name],
        ["docker", "ps", "-q", "--no-trunc", "--filter", f"name=^{name}$"],
    ):
        found = subprocess.run(command, cwd=REPO, capture_output=True, text=True).stdout.split()
        if found:
            return found[0]
    return None


def cpu_seconds(container: str) -> float | None:
    """Cumulative CPU time of a container, from its cgroup (v1 or v2), as the host sees it."""
    v1 = Path(f"/sys/fs/cgroup/cpuacct/docker/{container}/cpuacct.usage")
    if v1.exists():
        return int(v1.read_text()) / 1e9
    for v2 in (Path(f"/sys/fs/cgroup/system.slice/docker-{container}.scope/cpu.stat"),):
        if v2.exists():
            usage = next(line for line in v2.read_text().splitlines() if line.startswith("usage_usec"))
            return int(usage.split()[1]) / 1e6
    return None


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.metric_points = 0
        self.by_call: dict[str, list[float]] = {}

    def add(self, call: str, elapsed: float, error: str | None, metric_points: int) -> None:
        with self.lock:
            self.latencies.append(elapsed)
            self.by_call.setdefault(call, []).append(elapsed)
            if error:
                self.errors.append(error)
            else:
                self.metric_points += metric_points


@dataclass(frozen=True)
class Client:
    """How the simulated trainers reach the server: the CA file that verifies its HTTPS, and their login (a
    password, or an access token sent as the password as MLflow's client does with MLflow OIDC tokens)."""

    ca_file: str | None = None
    login: tuple[str, str] | None = None

    @classmethod
    def from_environment(cls) -> Client:
        """MLflow's own client variables: MLFLOW_TRACKING_SERVER_CERT_PATH (certs/ca.crt in team mode) and
        MLFLOW_TRACKING_USERNAME / _PASSWORD."""
        user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
        return cls(
            os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None, (user, password) if user and password else None
        )


def client_session(client: Client | None = None) -> requests.Session:
    """Keep-alive session; `client` None: from the environment (Client.from_environment)."""
    client = client or Client.from_environment()
    session = requests.Session()
    if client.ca_file:
        session.verify = client.ca_file
        # Else requests prefers REQUESTS_CA_BUNDLE from the environment over the session's own CA file.
        session.trust_env = False
    if client.login:
        session.auth = client.login
    return session


def simulated_trainer(
    api: str,
    experiment_id: str,
    recorder: Recorder,
    deadline: float,
    epoch_seconds: float = 0.0,
    client: Client | None = None,
) -> int:
    """Returns the number of calls it never made because the deadline passed."""
    session = client_session(client)
    calls_made = 0
    if epoch_seconds:
        # Independent trainers do not start in step; without this all 64 would log in the same instant.
        time.sleep(random.uniform(0, epoch_seconds))

    def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls_made
        calls_made += 1
        started = time.perf_counter()
        error, payload = None, {}
        try:
            response = session.post(api + path, json=body, timeout=CALL_TIMEOUT)
            if response.status_code == 200:
                payload = response.json()
            else:
                error = f"HTTP {response.status_code}: {response.text[:120]}"
        except requests.RequestException as exception:
            error = type(exception).__name__
        kind = path + (" (metrics)" if body.get("metrics") else " (params)" if body.get("params") else "")
        recorder.add(kind, time.perf_counter() - started, error, len(body.get("metrics", [])))
        return payload

    for _ in range(RUNS_PER_TRAINER):
        if time.perf_counter() > deadline:
            break
        run = call("/runs/create", {"experiment_id": experiment_id, "start_time": int(time.time() * 1000)})
        run_id = run.get("run", {}).get("info", {}).get("run_id")
        if not run_id:
            continue
        params = [{"key": f"param_{i}", "value": str(i)} for i in range(10)]
        call("/runs/log-batch", {"run_id": run_id, "params": params})
        first_epoch_at = time.perf_counter()
        for epoch in range(1, EPOCHS + 1):
            # Paced like a real trainer: one epoch's metrics every epoch_seconds, whatever the last call took.
            time.sleep(max(0.0, first_epoch_at + epoch * epoch_seconds - time.perf_counter()))
            if time.perf_counter() > deadline:
                break
            now = int(time.time() * 1000)
            metrics = [
                {"key": f"metric_{i}", "value": 1.0 / epoch + i, "timestamp": now, "step": epoch}
                for i in range(METRICS_PER_EPOCH)
            ]
            call("/runs/log-batch", {"run_id": run_id, "metrics": metrics})
        call("/runs/set-tag", {"run_id": run_id, "key": "bench", "value": "server_load"})
        call("/runs/update", {"run_id": run_id, "status": "FINISHED", "end_time": int(time.time() * 1000)})
    return RUNS_PER_TRAINER * CALLS_PER_RUN - calls_made


def load(
    k: int,
    containers: dict[str, str | None],
    api: str = API,
    deadline: float = DEADLINE,
    epoch_seconds: float = 0.0,
    client: Client | None = None,
    new_experiment: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """`new_experiment(name)` makes the experiment the trainers log into and returns its id (another login
    than theirs may create it and grant them access); by default the trainers' own login creates it."""
    name = f"bench-load-{uuid.uuid4().hex[:8]}"
    if new_experiment:
        experiment_id = new_experiment(name)
    else:
        response = client_session(client).post(api + "/experiments/create", json={"name": name}, timeout=CALL_TIMEOUT)
        response.raise_for_status()
        experiment_id = response.json()["experiment_id"]
    recorder = Recorder()
    cpu_before = {role: cpu_seconds(cid) if cid else None for role, cid in containers.items()}
    own_before = own_cpu_seconds()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=k) as pool:
        futures = [
            pool.submit(simulated_trainer, api, experiment_id, recorder, started + deadline, epoch_seconds, client)
            for _ in range(k)
        ]
        never_made = sum(future.result() for future in futures)
    seconds = time.perf_counter() - started
    requests_done = len(recorder.latencies)
    cpu_ms_per_request: dict[str, float] = {"load_generator": (own_cpu_seconds() - own_before) * 1000}
    for role, cid in containers.items():
        before = cpu_before[role]
        after = cpu_seconds(cid) if cid else None
        if before is not None and after is not None:
            cpu_ms_per_request[role] = (after - before) * 1000
    cpu_busy_cores = sum(cpu_ms_per_request.values()) / 1000 / seconds
    return {
        "k": k,
        "epoch_seconds": epoch_seconds,
        "requests": requests_done,
        "errors": len(recorder.errors) + never_made,
        "never_made": never_made,
        "error_kinds": sorted(set(recorder.errors)),
        "seconds": round(seconds, 2),
        "requests_per_second": round(requests_done / seconds, 1),
        "metric_points_per_second": round(recorder.metric_points / seconds, 1),
        "latency_ms_p50": round(1000 * percentile(recorder.latencies, 0.50), 1),
        "latency_ms_p99": round(1000 * percentile(recorder.latencies, 0.99), 1),
        "cpu_ms_per_request": {role: round(ms / max(1, requests_done), 2) for role, ms in cpu_ms_per_request.items()},
        "cpu_busy_cores": round(cpu_busy_cores, 2),
        # Which calls make the tail: run creation and the end of a run cost more than a metrics batch.
        "latency_ms_p99_by_call": {
            call: round(1000 * percentile(values, 0.99), 1) for call, values in sorted(recorder.by_call.items())
        },
    }


def load_and_print(
    label: str,
    k: int,
    containers: dict[str, str | None],
    api: str = API,
    deadline: float = DEADLINE,
    epoch_seconds: float = 0.0,
    client: Client | None = None,
    new_experiment: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    row = load(k, containers, api, deadline, epoch_seconds, client, new_experiment)
    cpu = ", ".join(f"{role} {ms}" for role, ms in row["cpu_ms_per_request"].items())
    print(
        f"bench: {label} K={k}: {row['requests_per_second']} req/s, {row['metric_points_per_second']} points/s, "
        f"p50 {row['latency_ms_p50']} ms, p99 {row['latency_ms_p99']} ms, errors {row['errors']}; "
        f"CPU ms/request: {cpu} ({row['cpu_busy_cores']} cores busy)"
    )
    for kind in row["error_kinds"][:3]:
        print(f"bench:   error: {kind}")
    return row


def stack_containers(server: str = "tracking-server") -> dict[str, str | None]:
    containers = {"tracking_server": container_id(server), "postgres": container_id("postgres")}
    if server == "tracking-server":
        # The stack's gateway is in front of the published port: its CPU is the cost of TLS in team mode.
        containers["gateway"] = container_id("gateway")
    return containers


def main() -> None:
    label, *args = sys.argv[1:]
    epoch_seconds = 0.0
    if "--epoch-seconds" in args:
        at = args.index("--epoch-seconds")
        epoch_seconds = float(args[at + 1])
        del args[at : at + 2]
    ks = [int(k) for k in args] or [1, 8, 32, 64]
    containers = stack_containers()
    rows = [load_and_print(label, k, containers, epoch_seconds=epoch_seconds) for k in ks]
    save(
        f"server_load_{label}",
        {
            "label": label,
            "url": STACK_URL,
            "epochs": EPOCHS,
            "runs_per_trainer": RUNS_PER_TRAINER,
            "call_timeout_seconds": CALL_TIMEOUT,
            "deadline_seconds": DEADLINE,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
