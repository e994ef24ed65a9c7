"""The server-load benchmark against 1 and 3 tracking-server replicas, as the Helm chart runs them.

    python -m bench.replicas [--replicas 1 3] [--k 64] [--repeat 2]

For each replica count: the chart's pods (bundled Postgres and MinIO, the prepare Job, N replicas with the
chart's workers and request threads) run with Docker exactly as rendered (tests/chart_live/pods.py), behind
HAProxy (round-robin per request, on 127.0.0.1:$MLFLOW_PORT) standing in for the Service. Then bench.server_load's
closed-loop K trainers, `--repeat` times. Prints req/s, p50/p99 and the CPU milliseconds each request cost the
replicas (summed), Postgres, HAProxy and the load generator, with the load average around each repeat (the
machine may be shared). Writes docs/bench-results/replicas.json.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import save
from bench.server_load import load
from tests.chart.chart import ci_values, render
from tests.chart_live.pods import PREFIX, Pods, docker

TRACKING_SERVER_IMAGE = os.environ.get("TRACKING_SERVER_IMAGE", "mlflow-stack/tracking-server:3.17.2")
PORT = int(os.environ.get("MLFLOW_PORT", "5000"))
LB = f"{PREFIX}-lb"


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def start(replicas: int) -> tuple[Pods, dict[str, str | None]]:
    repository, _, tag = TRACKING_SERVER_IMAGE.rpartition(":")
    postgres_uid = docker("run", "--rm", "--entrypoint", "id", "postgres:16-bookworm", "-u", "postgres").stdout.strip()
    manifests = render(
        ci_values("bundled-evaluation"),
        set_values=[
            f"images.trackingServer.repository={repository}",
            f"images.trackingServer.tag={tag}",
            f"trackingServer.replicas={replicas}",
            f"postgresql.uid={postgres_uid}",
        ],
    )
    pods = Pods(
        manifests,
        {
            "mlflow-postgres": {"password": secrets.token_hex(16)},
            "mlflow-s3": {
                "AWS_ACCESS_KEY_ID": "bench" + secrets.token_hex(4),
                "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
            },
        },
    )
    pods.create_network()
    postgres = pods.run(pods.workload("StatefulSet", "postgres"))
    pods.run(pods.workload("StatefulSet", "minio"))
    prepare = pods.run(pods.workload("Job", "prepare"))
    assert pods.wait_exit(prepare, timeout=300) == 0, pods.logs(prepare)
    deployment = pods.workload("Deployment", "tracking")
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    names = [pods.run(deployment, index) for index in range(replicas)]
    for name in names:
        pods.wait_ready(name, server, timeout=300)
    time.sleep(10)  # let the workers' start-up CPU settle before measuring
    config = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-lb-")) / "haproxy.cfg"
    backends = "\n".join(f"  server r{i} {pods.ip(name)}:5000" for i, name in enumerate(names))
    config.write_text(
        "global\n  maxconn 4096\n"
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 120s\n  timeout server 120s\n"
        f"frontend api\n  bind :5000\n  default_backend replicas\nbackend replicas\n  balance roundrobin\n{backends}\n"
    )
    config.chmod(0o644)
    config.parent.chmod(0o755)
    docker("run", "-d", "--name", LB, "--network", pods.network, "-p", f"127.0.0.1:{PORT}:5000",
           "-v", f"{config}:/usr/local/etc/haproxy/haproxy.cfg:ro", "haproxy:3.2")  # fmt: skip
    pods.started.append(LB)
    containers: dict[str, str | None] = {f"replica_{i}": _id(name) for i, name in enumerate(names)}
    containers |= {"postgres": _id(postgres), "haproxy": _id(LB)}
    return pods, containers


def _id(name: str) -> str:
    return docker("inspect", "--format", "{{.Id}}", name).stdout.strip()


def summarize(row: dict[str, Any]) -> dict[str, Any]:
    cpu = row["cpu_ms_per_request"]
    replicas_ms = sum(ms for role, ms in cpu.items() if role.startswith("replica_"))
    return {**row, "cpu_ms_per_request_replicas_total": round(replicas_ms, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2)
    options = parser.parse_args()
    api = f"http://127.0.0.1:{PORT}/api/2.0/mlflow"
    results = []
    for replicas in options.replicas:
        pods, containers = start(replicas)
        try:
            load(8, containers, api=api, deadline=30)  # warm-up: connections, caches
            for attempt in range(options.repeat):
                before = load_average()
                row = summarize(load(options.k, containers, api=api))
                row |= {
                    "replicas": replicas,
                    "attempt": attempt + 1,
                    "load_average_before": before,
                    "load_average_after": load_average(),
                }
                results.append(row)
                print(
                    f"bench: {replicas} replica(s) K={options.k} #{attempt + 1}: {row['requests_per_second']} req/s, "
                    f"p50 {row['latency_ms_p50']} ms, p99 {row['latency_ms_p99']} ms, errors {row['errors']}; "
                    f"CPU ms/request: replicas {row['cpu_ms_per_request_replicas_total']}, "
                    f"postgres {row['cpu_ms_per_request'].get('postgres')}, haproxy {row['cpu_ms_per_request'].get('haproxy')}, "
                    f"load generator {row['cpu_ms_per_request']['load_generator']}; "
                    f"load average {before[0]} -> {row['load_average_after'][0]}",
                    flush=True,
                )
        finally:
            pods.remove_all()
    save("replicas", {"k": options.k, "image": TRACKING_SERVER_IMAGE, "rows": results})


if __name__ == "__main__":
    main()
