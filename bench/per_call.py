"""Server CPU per call, by call, for the side-by-side servers: where a trainer's run costs what it costs.

    python -m bench.per_call [LABEL ...]      # default: no logins, team mode basic, team mode OIDC token

One client calls each kind of a trainer's calls CALLS times in a row, one at a time, against a server started as
bench.server_variants starts it (team mode behind the gateway ending TLS, logged in as its trainers are), and the
server container's CPU (its cgroup) over those calls is divided by their number. One at a time, so nothing is
amortized over concurrent requests: these numbers are higher than the load benchmark's per request, and they tell
which call costs what, not a throughput. Each server gets WARMUP_RUNS runs first (its workers' imports, pools and
caches), then ROUNDS rounds of every kind. The servers are measured in PASSES passes, every other one in reverse
order, each pass on a freshly started server: a machine that slows or speeds up over minutes (a shared host) then
weighs on every server alike instead of on the last ones. The kinds, in the order a trainer sends them:

- create-run: a new run in an experiment the login has written to already;
- the first log-batch of a new run (its params), then log-batch of metrics to one run again and again;
- the first set-tag of a run, then runs/update ending it.

Writes docs/bench-results/server_cpu_per_call.json.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import requests

from bench import server_variants
from bench.common import save
from bench.server_load import client_session, cpu_seconds
from bench.team_variants import TeamMode

CALLS = 150
ROUNDS = 2
WARMUP_RUNS = 60
PASSES = int(os.environ.get("BENCH_REPEATS", "2"))
LABELS = ("stack, fast store", "team mode, basic", "team mode, OIDC token")


def now() -> int:
    return int(time.time() * 1000)


def measure(label: str) -> dict[str, list[float]]:
    """CPU ms per call of each kind, one value per round."""
    team_mode = TeamMode(server_variants.NAME, server_variants.PORT)
    try:
        running = server_variants.start(**server_variants.SIDE_BY_SIDE[label], team_mode=team_mode)
        server = running.containers["tracking_server"]
        if server is None:
            raise SystemExit(f"bench: {label}: no server container")
        session = client_session(running.client)

        def post(path: str, body: dict[str, Any]) -> Any:
            response = session.post(running.api + path, json=body, timeout=30)
            if response.status_code != 200:
                raise SystemExit(f"bench: {label}: {path} answered {response.status_code}: {response.text[:200]}")
            return response.json()

        name = f"bench-per-call-{time.time_ns()}"
        if running.new_experiment:
            experiment = running.new_experiment(name)
        else:
            experiment = post("/experiments/create", {"name": name})["experiment_id"]

        def create() -> str:
            return str(
                post("/runs/create", {"experiment_id": experiment, "start_time": now()})["run"]["info"]["run_id"]
            )

        for _ in range(WARMUP_RUNS):
            run_id = create()
            post("/runs/log-batch", {"run_id": run_id, "params": [{"key": "p", "value": "1"}]})
            post("/runs/set-tag", {"run_id": run_id, "key": "t", "value": "v"})
        per_kind: dict[str, list[float]] = {}

        def each(kind: str, call: Callable[[int], Any]) -> None:
            before = cpu_seconds(server)
            for index in range(CALLS):
                call(index)
            after = cpu_seconds(server)
            if before is None or after is None:
                raise SystemExit("bench: cannot read the server container's CPU time")
            per_kind.setdefault(kind, []).append(round((after - before) / CALLS * 1000, 3))

        params = [{"key": f"param_{i}", "value": str(i)} for i in range(10)]

        def metrics(step: int) -> list[dict[str, Any]]:
            """An epoch's metrics: a new step each call, as a trainer logs them (a repeated point is a conflict the
            store resolves through MLflow's method, which is not the trainer's loop)."""
            return [
                {"key": f"metric_{j}", "value": 1.0 / (step + 1), "timestamp": now(), "step": step} for j in range(5)
            ]

        def one_round() -> None:
            runs: list[str] = []
            each("create-run", lambda i: runs.append(create()))
            each(
                "first log-batch of a run (params)",
                lambda i: post("/runs/log-batch", {"run_id": runs[i], "params": params}),
            )
            each(
                "log-batch (metrics), same run",
                lambda i: post("/runs/log-batch", {"run_id": runs[0], "metrics": metrics(i)}),
            )
            each(
                "first set-tag of a run",
                lambda i: post("/runs/set-tag", {"run_id": runs[i], "key": "bench", "value": "x"}),
            )
            each(
                "runs/update (end)",
                lambda i: post("/runs/update", {"run_id": runs[i], "status": "FINISHED", "end_time": now()}),
            )

        for _ in range(ROUNDS):
            one_round()
        return per_kind
    finally:
        server_variants.stop()
        team_mode.close()


def main() -> None:
    labels = sys.argv[1:] or list(LABELS)
    unknown = [label for label in labels if label not in server_variants.SIDE_BY_SIDE]
    if unknown:
        raise SystemExit(f"bench: unknown server {unknown[0]!r}; expected one of {list(server_variants.SIDE_BY_SIDE)}")
    # In the order given, whichever pass measures them first.
    results: dict[str, dict[str, list[float]]] = {label: {} for label in labels}
    for done in range(PASSES):
        for label in labels if done % 2 == 0 else reversed(labels):
            try:
                measured = measure(label)
            except requests.RequestException as error:
                raise SystemExit(f"bench: {label}: {error}") from error
            for kind, values in measured.items():
                results[label].setdefault(kind, []).extend(values)
                print(f"bench: {label} (pass {done + 1}): {kind}: {' / '.join(f'{v:.2f}' for v in values)} ms")
            save("server_cpu_per_call", {"calls": CALLS, "rounds": ROUNDS * (done + 1), "passes": done + 1,
                                         "warmup_runs": WARMUP_RUNS, "ms_server_cpu_per_call": results})  # fmt: skip


if __name__ == "__main__":
    main()
