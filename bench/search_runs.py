"""`search_runs` over 10k runs with a metric filter and an order-by, through the tracking server's API.

Creating 10k runs through the API would take minutes of this benchmark's budget and measure the load
benchmark again, so the runs are written once, straight into MLflow's tables in Postgres, into the
experiment `bench-search-10k`; later rounds reuse them. When the search is slow, the plan of the statement
Postgres spent longest on is printed.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import requests

from bench.common import STACK_URL, compose, median, percentile, save

RUNS = int(os.environ.get("BENCH_SEARCH_RUNS", "10000"))
EXPERIMENT = f"bench-search-{RUNS // 1000}k"
EPOCHS = 10
REPEATS = 10
TARGET_SECONDS = float(os.environ.get("BENCH_SEARCH_SLOW_SECONDS", "1.0"))
API = STACK_URL + "/api/2.0/mlflow"
QUERIES: dict[str, dict[str, Any]] = {
    "filter val_accuracy > 0.9, order by val_loss, 100 rows": {
        "filter": "metrics.val_accuracy > 0.9",
        "order_by": ["metrics.val_loss ASC"],
        "max_results": 100,
    },
    "same, 1000 rows (the API's default page)": {
        "filter": "metrics.val_accuracy > 0.9",
        "order_by": ["metrics.val_loss ASC"],
        "max_results": 1000,
    },
    "filter on a param and a metric, order by start time, 100 rows": {
        "filter": "params.batch_size = '128' and metrics.test_accuracy > 0.95",
        "order_by": ["attributes.start_time DESC"],
        "max_results": 100,
    },
}

# One statement per table: series of runs, their params, tags, per-epoch and latest metrics. Values
# spread like a real sweep's (accuracy 0.85..0.995), so a filter keeps a realistic share.
SEED_SQL = """
INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, start_time,
                  end_time, source_version, lifecycle_stage, artifact_uri, experiment_id)
SELECT md5(:'experiment' || i), 'bench-' || i, 'LOCAL', '', '', 'bench', 'FINISHED',
       1700000000000 + i * 60000, 1700000000000 + i * 60000 + 50000, '', 'active',
       'mlflow-artifacts:/' || :experiment_id || '/' || md5(:'experiment' || i) || '/artifacts', :experiment_id
FROM generate_series(1, :runs) AS i;
INSERT INTO params (key, value, run_uuid)
SELECT p.key, CASE p.key WHEN 'batch_size' THEN (ARRAY['64','128','256'])[1 + i % 3]
                         WHEN 'learning_rate' THEN (ARRAY['0.0003','0.001','0.003'])[1 + (i / 3) % 3]
                         ELSE (i % 5)::text END, md5(:'experiment' || i)
FROM generate_series(1, :runs) AS i, (VALUES ('batch_size'), ('learning_rate'), ('epochs'), ('seed')) AS p(key);
INSERT INTO tags (key, value, run_uuid)
SELECT t.key, 'bench', md5(:'experiment' || i)
FROM generate_series(1, :runs) AS i, (VALUES ('mlflow.user'), ('mlflow.source.type')) AS t(key);
INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan)
SELECT m.key, CASE WHEN m.key LIKE '%loss' THEN 0.5 / e + (i % 97) / 1000.0
                   ELSE 0.85 + 0.145 * (1 - 1.0 / e) * ((i % 89) / 88.0) END,
       1700000000000 + i * 60000 + e * 5000, md5(:'experiment' || i), e, false
FROM generate_series(1, :runs) AS i, generate_series(1, :epochs) AS e,
     (VALUES ('val_accuracy'), ('val_loss'), ('train_loss')) AS m(key);
INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)
SELECT key, value, timestamp, step, is_nan, run_uuid FROM metrics
WHERE step = :epochs AND run_uuid IN (SELECT run_uuid FROM runs WHERE experiment_id = :experiment_id);
INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)
SELECT 'test_accuracy', 0.86 + 0.135 * ((i % 83) / 82.0), 1700000000000 + i * 60000 + 50000, 0, false,
       md5(:'experiment' || i)
FROM generate_series(1, :runs) AS i;
ANALYZE;
"""


def psql(*args: str, stdin: str | None = None) -> str:
    script = 'psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -At "$@"'
    return compose("exec", "-T", "postgres", "sh", "-c", script, "psql", *args, stdin=stdin)


def experiment_id() -> str:
    found = requests.get(API + "/experiments/get-by-name", params={"experiment_name": EXPERIMENT}, timeout=30)
    if found.status_code == 200:
        return str(found.json()["experiment"]["experiment_id"])
    created = requests.post(API + "/experiments/create", json={"name": EXPERIMENT}, timeout=30)
    created.raise_for_status()
    return str(created.json()["experiment_id"])


def seed(experiment: str) -> float:
    have = int(psql("-c", f"SELECT count(*) FROM runs WHERE experiment_id = {int(experiment)}").strip())
    if have >= RUNS:
        return 0.0
    if have:
        raise SystemExit(f"bench: experiment {EXPERIMENT} holds {have} runs, not {RUNS}; delete it and run again")
    started = time.perf_counter()
    variables = ["-v", f"experiment={EXPERIMENT}", "-v", f"experiment_id={int(experiment)}", "-v", f"runs={RUNS}"]
    psql(*variables, "-v", f"epochs={EPOCHS}", "-f", "-", stdin=SEED_SQL)
    return time.perf_counter() - started


def search(experiment: str, query: dict[str, Any]) -> tuple[float, int]:
    body = {"experiment_ids": [experiment], **query}
    started = time.perf_counter()
    response = requests.post(API + "/runs/search", json=body, timeout=120)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed, len(response.json().get("runs", []))


def slowest_statement(experiment: str, query: dict[str, Any]) -> dict[str, Any]:
    """Runs the search once more with Postgres logging every statement's duration, then EXPLAINs the
    slowest. psycopg2 interpolates parameters client-side, so the logged text runs as it is."""
    psql("-c", "ALTER SYSTEM SET log_min_duration_statement = 0")
    psql("-c", "SELECT pg_reload_conf()")
    try:
        since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
        request_seconds, _ = search(experiment, query)
        logs = compose("logs", "--no-log-prefix", "--since", since, "postgres")
    finally:
        psql("-c", "ALTER SYSTEM RESET log_min_duration_statement")
        psql("-c", "SELECT pg_reload_conf()")
    # An entry runs from its "duration: N ms  statement:" line up to the next timestamped log line.
    entries = re.findall(r"duration: ([\d.]+) ms\s+statement: (.*?)(?=^\d{4}-\d\d-\d\d |\Z)", logs, re.S | re.M)
    if not entries:
        return {}
    milliseconds, statement = max(entries, key=lambda entry: float(entry[0]))
    return {
        "request_ms": round(request_seconds * 1000, 1),
        "statements": len(entries),
        "all_statements_ms": round(sum(float(entry[0]) for entry in entries), 1),
        "slowest_statement_ms": float(milliseconds),
        "slowest_statement": statement.strip(),
        "plan": psql("-c", f"EXPLAIN (ANALYZE, BUFFERS) {statement.strip()}"),
    }


def main() -> None:
    experiment = experiment_id()
    seconds_to_seed = seed(experiment)
    if seconds_to_seed:
        print(f"bench: wrote {RUNS} runs into {EXPERIMENT} in {seconds_to_seed:.1f} s")
    rows: list[dict[str, Any]] = []
    for name, query in QUERIES.items():
        search(experiment, query)  # warm the server's and Postgres' caches
        timings, found = [], 0
        for _ in range(REPEATS):
            elapsed, found = search(experiment, query)
            timings.append(elapsed)
        row = {
            "query": name,
            **query,
            "runs_returned": found,
            "seconds_median": round(median(timings), 3),
            "seconds_p95": round(percentile(timings, 0.95), 3),
        }
        rows.append(row)
        print(f"bench: search {name}: median {row['seconds_median']} s, p95 {row['seconds_p95']} s, {found} runs")
    # Where a search's time goes: Postgres, or MLflow turning rows into runs. The largest page shows it best.
    largest = max(QUERIES, key=lambda name: QUERIES[name]["max_results"])
    database = slowest_statement(experiment, QUERIES[largest])
    if database:
        print(
            f"bench: {largest}: {database['statements']} SQL statements took {database['all_statements_ms']} ms "
            f"of the {database['request_ms']} ms request; the slowest {database['slowest_statement_ms']} ms"
        )
        if any(row["seconds_median"] >= TARGET_SECONDS for row in rows):
            print(database["slowest_statement"], database["plan"], sep="\n")
    save(
        "search_runs",
        {"runs": RUNS, "experiment": EXPERIMENT, "repeats": REPEATS, "rows": rows, "database": database},
    )


if __name__ == "__main__":
    main()
