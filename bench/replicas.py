"""The server-load benchmark against 1 and 3 tracking-server replicas, as the Helm chart runs them.

    python -m bench.replicas [--replicas 1 3] [--k 64] [--repeat 3]

The chart's pods (bundled Postgres and MinIO, the prepare Job, max(--replicas) replicas with the chart's
workers and request threads) run with Docker exactly as rendered (tests/chart_live/pods.py), behind HAProxy
(round-robin per request) standing in for the Service: one frontend per replica count, the first N replicas
each, on 127.0.0.1 ports $MLFLOW_PORT, $MLFLOW_PORT+1, ... Then bench.server_load's closed-loop K trainers
against each frontend in turn, `--repeat` rounds, so that a noisy neighbour on a shared machine hurts every
count alike (idle replicas cost next to no CPU). Prints req/s, p50/p99 and the CPU milliseconds each request
cost the replicas (summed), Postgres, HAProxy and the load generator, with the load average around each run,
and a sizing table from the measured cost. Writes docs/bench-results/replicas.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import save
from bench.server_load import load
from tests.chart_live.pods import PREFIX, TRACKING_SERVER_IMAGE, Pods, docker, install, tracking_pods
from tests.support.waiting import wait_until

PORT = int(os.environ.get("MLFLOW_PORT", "5000"))
LB = f"{PREFIX}-lb"


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def start(replicas: int, counts: list[int]) -> tuple[Pods, dict[str, str | None]]:
    pods = tracking_pods("bundled-evaluation", set_values=[f"trackingServer.replicas={replicas}"])
    installed = install(pods)
    postgres, names = installed.postgres, installed.replicas
    time.sleep(10)  # let the workers' start-up CPU settle before measuring
    config = pods.scratch / "lb" / "haproxy.cfg"  # removed with the pods
    config.parent.mkdir(parents=True, exist_ok=True)
    sections = [
        "global\n  maxconn 4096\n"
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n"
    ]
    for index, count in enumerate(counts):
        backends = "\n".join(f"  server r{i} {pods.ip(name)}:5000" for i, name in enumerate(names[:count]))
        sections.append(
            f"frontend replicas{count}\n  bind :{5000 + index}\n  default_backend replicas{count}\n"
            f"backend replicas{count}\n  balance roundrobin\n{backends}\n"
        )
    config.write_text("".join(sections))
    config.chmod(0o644)
    config.parent.chmod(0o755)
    ports = [arg for index in range(len(counts)) for arg in ("-p", f"127.0.0.1:{PORT + index}:{5000 + index}")]
    docker("run", "-d", "--name", LB, "--network", pods.network, *ports,
           "-v", f"{config}:/usr/local/etc/haproxy/haproxy.cfg:ro", "haproxy:3.2")  # fmt: skip
    pods.started.append(LB)
    for index in range(len(counts)):
        _wait_for(f"http://127.0.0.1:{PORT + index}/api/2.0/mlflow/experiments/search?max_results=1")
    containers: dict[str, str | None] = {f"replica_{i}": _id(name) for i, name in enumerate(names)}
    containers |= {"postgres": _id(postgres), "haproxy": _id(LB)}
    return pods, containers


def _wait_for(url: str, timeout: float = 60) -> None:
    """Until HAProxy answers through the published port (Docker's proxy accepts before it is up)."""
    wait_until(
        lambda: requests.get(url, timeout=5).status_code == 200, timeout, f"{url} did not answer within {timeout:.0f} s",
        ignoring=(requests.RequestException,),
    )  # fmt: skip


def _id(name: str) -> str:
    return docker("inspect", "--format", "{{.Id}}", name).stdout.strip()


def summarize(row: dict[str, Any]) -> dict[str, Any]:
    cpu = row["cpu_ms_per_request"]
    replicas_ms = sum(ms for role, ms in cpu.items() if role.startswith("replica_"))
    return {**row, "cpu_ms_per_request_replicas_total": round(replicas_ms, 2)}


# The chart's defaults: one uvicorn worker per core of a pod's CPU limit, 8 request threads per worker, each
# store's pool = overflow = threads (the entrypoint's sizing). A rolling update adds one surge pod.
REQUEST_THREADS = 8
SUPERUSER_RESERVED = 3
SIZING_ROWS = [(1, 2), (3, 2), (2, 4), (3, 4), (4, 4), (6, 4), (8, 4)]


# p99 of the shipped server when it is not saturated (docs/performance.md, K = 8: 115 ms): no number of
# replicas makes one request faster than that, so projections stop there.
P99_FLOOR_MS = 115.0


def sizing_table(server_ms: float, postgres_ms: float, p99_over_mean: float, k: int = 64) -> str:
    """Projected from the measured CPU per request: throughput at 80 % busy server cores; p99 of K closed-loop
    trainers = p99/mean (measured) x K / throughput (Little's law), not below P99_FLOOR_MS; Postgres cores for
    that throughput; connections = (replicas + 1 surge) x workers x 3 x threads (+ prepare, + reserved)."""
    lines = [
        "| replicas x cores | server cores | req/s | p99 at K = 64, closed loop | Postgres cores | "
        "connections per pod (auth) | max_connections ≥ (auth) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for replicas, cores in SIZING_ROWS:
        throughput = replicas * cores * 1000 / server_ms * 0.8
        p99 = max(P99_FLOOR_MS, p99_over_mean * k / throughput * 1000)
        per_pod, per_pod_auth = cores * 3 * REQUEST_THREADS, cores * 4 * REQUEST_THREADS
        need = (replicas + 1) * per_pod + 2 + SUPERUSER_RESERVED
        need_auth = (replicas + 1) * per_pod_auth + 2 + SUPERUSER_RESERVED
        lines.append(
            f"| {replicas} x {cores} | {replicas * cores} | {throughput:.0f} | "
            f"{'≈ ' if p99 == P99_FLOOR_MS else ''}{p99:.0f} ms | "
            f"{throughput * postgres_ms / 1000:.1f} | {per_pod} ({per_pod_auth}) | {need} ({need_auth}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    counts: list[int] = options.replicas
    pods, containers = start(max(counts), counts)
    results = []
    try:
        for index in range(len(counts)):
            load(8, containers, api=f"http://127.0.0.1:{PORT + index}/api/2.0/mlflow", deadline=30)  # warm-up
        for attempt in range(options.repeat):
            for index, count in enumerate(counts):
                before = load_average()
                row = summarize(load(options.k, containers, api=f"http://127.0.0.1:{PORT + index}/api/2.0/mlflow"))
                row |= {
                    "replicas": count,
                    "round": attempt + 1,
                    "load_average_before": before,
                    "load_average_after": load_average(),
                }
                results.append(row)
                print(
                    f"bench: {count} replica(s) K={options.k} round {attempt + 1}: {row['requests_per_second']} req/s, "
                    f"p50 {row['latency_ms_p50']} ms, p99 {row['latency_ms_p99']} ms, errors {row['errors']}; "
                    f"CPU ms/request: replicas {row['cpu_ms_per_request_replicas_total']}, "
                    f"postgres {row['cpu_ms_per_request'].get('postgres')}, haproxy {row['cpu_ms_per_request'].get('haproxy')}, "
                    f"load generator {row['cpu_ms_per_request']['load_generator']}; "
                    f"load average {before[0]} -> {row['load_average_after'][0]}",
                    flush=True,
                )
    finally:
        pods.remove_all()
    server_ms = statistics.median(r["cpu_ms_per_request_replicas_total"] for r in results)
    postgres_ms = statistics.median(r["cpu_ms_per_request"]["postgres"] for r in results)
    # Closed loop: mean latency = K / throughput; the tail over the mean is what the sizing carries over.
    ratio = statistics.median(r["latency_ms_p99"] / (options.k / r["requests_per_second"] * 1000) for r in results)
    table = sizing_table(server_ms, postgres_ms, ratio, options.k)
    print(f"bench: sizing from {server_ms} ms server + {postgres_ms} ms Postgres CPU per request, p99/mean {ratio:.2f}")
    print(table)
    save(
        "replicas",
        {
            "k": options.k,
            "image": TRACKING_SERVER_IMAGE,
            "rows": results,
            "server_cpu_ms_per_request": server_ms,
            "postgres_cpu_ms_per_request": postgres_ms,
            "p99_over_mean": round(ratio, 2),
            "sizing_table": table,
        },
    )


if __name__ == "__main__":
    main()
