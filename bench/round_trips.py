"""Postgres round trips per hot write of the fast store, counted in the server's statement log.

    python -m bench.round_trips [CALLS]

Starts a throwaway Postgres container of the stack's image with `log_statement=all`, builds the tracking store
the server builds (the fast store, warm pool), makes CALLS calls of each hot write and counts the messages the
server logged for them: psycopg2 sends every statement as one simple-query message, which the server logs as
one `statement:` line (several statements in one message are one line), so lines are round trips. Writes
docs/bench-results/fast_store_round_trips.json.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import uuid
from typing import Any

from bench.common import REPO, save
from bench.profile_log_batch import POSTGRES_IMAGE, wait_for

sys.path.insert(0, str(REPO / "tracking-server"))
MARK = "round-trips-mark"


def start_postgres() -> tuple[str, str]:
    password, name = uuid.uuid4().hex, f"mlflow-stack-round-trips-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "run", "--detach", "--rm", "--name", name, "--env", f"POSTGRES_PASSWORD={password}",
         "--publish", "127.0.0.1::5432", POSTGRES_IMAGE, "postgres", "-c", "log_statement=all"],
        check=True, capture_output=True,
    )  # fmt: skip
    port = subprocess.run(["docker", "port", name, "5432/tcp"], check=True, capture_output=True, text=True)
    return name, f"postgresql+psycopg2://postgres:{password}@127.0.0.1:{port.stdout.split(':')[-1].strip()}"


def count(name: str, server: str, calls: int) -> dict[str, Any]:
    import psycopg2
    import sqlalchemy
    from mlflow.entities import Metric, Param, RunStatus, RunTag

    from mlflow_stack_server.fast_store import FastSqlAlchemyStore

    store = FastSqlAlchemyStore(server + "/postgres", tempfile.mkdtemp(prefix="round-trips-"))
    # One autocommit connection, opened before counting starts: each mark is one logged statement, nothing else.
    marker = psycopg2.connect(
        sqlalchemy.engine.make_url(server + "/postgres")
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )
    marker.autocommit = True

    def mark(label: str) -> None:
        with marker.cursor() as cursor:
            cursor.execute(f"SELECT '{MARK} {label}'")

    experiment_id = store.create_experiment(f"round-trips-{uuid.uuid4().hex[:8]}")
    run_id = store.create_run(experiment_id, "user", 0, [], "warm").info.run_id
    store.log_batch(run_id, [Metric(f"m{i}", 0.0, 0, 0) for i in range(5)], [], [])  # latest_metrics rows exist
    store.set_tag(run_id, RunTag("warm", "0"))
    writes = {
        "log-batch (5 metrics of a new step)": lambda n: store.log_batch(
            run_id, [Metric(f"m{i}", 1.0 / n, n, n) for i in range(5)], [], []
        ),
        "log-param (new key)": lambda n: store.log_param(run_id, Param(f"p{n}", "v")),
        "set-tag": lambda n: store.set_tag(run_id, RunTag("epoch", str(n))),
        "runs/update (status)": lambda n: store.update_run_info(run_id, RunStatus.RUNNING, None, None),
        "runs/create": lambda n: store.create_run(experiment_id, "user", n, [], f"run-{n}"),
    }
    for label, write in writes.items():
        mark(label)
        for n in range(1, calls + 1):
            write(n)
    mark("end")
    store.engine.dispose()
    marker.close()
    log = subprocess.run(["docker", "logs", name], capture_output=True, text=True, check=True).stderr
    per_call: dict[str, float] = {}
    current: str | None = None
    for line in log.splitlines():
        if "statement:" not in line:
            continue
        if MARK in line:
            current = line.split(MARK, 1)[1].strip(" '")
            per_call[current] = 0
        elif current is not None and current != "end":
            per_call[current] += 1
    per_call.pop("end", None)
    return {label: round(total / calls, 2) for label, total in per_call.items()}


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    name, server = start_postgres()
    try:
        wait_for(server)
        round_trips = count(name, server, calls)
    finally:
        subprocess.run(["docker", "rm", "--force", name], capture_output=True, check=False)
    for label, trips in round_trips.items():
        print(f"bench: {label}: {trips} round trips per call")
    save("fast_store_round_trips", {"calls_each": calls, "round_trips_per_call": round_trips})


if __name__ == "__main__":
    main()
