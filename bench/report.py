"""docs/performance.md from the JSON results of the benchmarks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.common import RESULTS_DIR

DOC = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _cpu(row: dict[str, Any]) -> str:
    cpu = row.get("cpu_ms_per_request", {})
    parts = [cpu.get(role) for role in ("tracking_server", "postgres", "load_generator")]
    return " + ".join("?" if part is None else f"{part:.1f}" for part in parts)


def _load_row(label: str, row: dict[str, Any]) -> str:
    return (
        f"| {label} | {row['k']} | {row['requests_per_second']} | {row['metric_points_per_second']} | "
        f"{row['latency_ms_p50']} | {row['latency_ms_p99']} | {row['errors']} | {_cpu(row)} | "
        f"{row.get('cpu_busy_cores', '?')} |"
    )


def main() -> None:
    lines = [
        "# Performance",
        "",
        "Written by `scripts/bench.sh` (`make bench`); raw numbers in `docs/bench-results/`.",
        "",
    ]
    overhead, pipeline, start = load("tracking_overhead"), load("input_pipeline"), load("stack_start")
    loads = [load(name) for name in ("server_load_shipped", "server_load_mlflow-defaults")]
    first = next((r for r in (overhead, pipeline, start, *loads) if r), None)
    if first:
        m = first["machine"]
        lines += [f"Machine: {m['cpus']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, no GPU; {m['date']}.", ""]
    if overhead:
        s = overhead["setup"]
        lines += [
            "## 1. Tracking overhead",
            "",
            f"Same training ({s['train_samples']} images, {s['epochs']} epochs, batch {s['batch_size']}, seed 0), "
            f"median of {s['rounds']} alternating rounds. Whole-fit wall times vary by several % from run to run "
            "here, more than the overhead itself, so the last column times only what training waits for: the "
            "logging callback.",
            "",
            "| mode | fit seconds | wall overhead vs off | waiting on logging | share of the fit |",
            "| --- | --- | --- | --- | --- |",
        ]
        waits = overhead.get("logging_wait_seconds_median", {})
        shares = overhead.get("logging_wait_percent", {})
        for mode, seconds in overhead["seconds_median"].items():
            lines.append(
                f"| {mode} | {seconds} | {overhead['overhead_percent'][mode]:+.2f} % | {waits.get(mode, '?')} s | "
                f"{shares.get(mode, '?')} % |"
            )
        lines.append("")
    if pipeline:
        rates = pipeline["images_per_second_median"]
        lines += [
            "## 3. Input pipeline",
            "",
            f"One epoch of {pipeline['setup']['train_images']} images plus validation, batch "
            f"{pipeline['setup']['batch_size']}, CPU, median of {pipeline['setup']['rounds']}:",
            "",
            "| input | images/s |",
            "| --- | --- |",
            f"| trainer's tf.data (shuffled indices, batched gather and scaling, prefetch) | {rates['tf_data']} |",
            f"| keras-io `model.fit(numpy arrays)` | {rates['numpy_fit']} |",
            "",
            f"Ratio tf.data / numpy: **{pipeline['ratio_tf_data_over_numpy']}**; "
            f"epoch time with tf.data: {pipeline['epoch_seconds_tf_data']} s.",
            "",
        ]
    if any(loads):
        lines += [
            "## 2. Tracking server under concurrent trainers",
            "",
            "Each simulated trainer: create a run, log 10 params, one `log-batch` of 5 metrics per epoch for 10 "
            "epochs, a tag, end the run; twice, closed-loop (the next call leaves as soon as the last one "
            "answers). Load generator, server and Postgres share the same 2 cores. CPU is per request, from "
            "the containers' cgroups.",
            "",
            "| configuration | K | req/s | metric points/s | p50 ms | p99 ms | errors | CPU ms/req: server + Postgres "
            "+ load gen | cores busy |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for result in loads:
            if result:
                lines += [_load_row(result["label"], row) for row in result["rows"]]
        lines.append("")
        shipped = next((r for r in loads if r and r["label"] == "shipped"), None)
        default = next((r for r in loads if r and r["label"] == "mlflow-defaults"), None)
        if shipped and default:
            ratios = []
            for ours, theirs in zip(shipped["rows"], default["rows"], strict=False):
                ratio = ours["requests_per_second"] / max(theirs["requests_per_second"], 0.1)
                ratios.append(f"K={ours['k']} {ratio:.1f}x")
            lines += ["Throughput, shipped / MLflow defaults: " + ", ".join(ratios) + ".", ""]
        errors = sorted({kind for r in loads if r for row in r["rows"] for kind in row.get("error_kinds", [])})
        if errors:
            lines += ["Errors seen: " + "; ".join(f"`{kind[:110]}`" for kind in errors[:4]) + ".", ""]
    tuning = load("server_tuning")
    if tuning:
        lines += [
            f"### Tuning, one knob at a time, K = {tuning['k']}",
            "",
            "| configuration | req/s | p50 ms | p99 ms | errors | CPU ms/req: server + Postgres + load gen |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for row in tuning["rows"]:
            lines.append(
                f"| {row['configuration']} | {row['requests_per_second']} | {row['latency_ms_p50']} | "
                f"{row['latency_ms_p99']} | {row['errors']} | {_cpu(row)} |"
            )
        lines.append("")
    search = load("search_runs")
    if search:
        lines += [
            f"### search_runs over {search['runs']} runs",
            "",
            f"Through the REST API, median of {search['repeats']} after one warm-up:",
            "",
            "| query | runs returned | median s | p95 s |",
            "| --- | --- | --- | --- |",
            *(
                f"| {row['query']} | {row['runs_returned']} | {row['seconds_median']} | {row['seconds_p95']} |"
                for row in search["rows"]
            ),
            "",
        ]
        database = search.get("database")
        if database:
            lines += [
                f"Of one {database['request_ms']} ms search for 1000 runs, Postgres spent "
                f"{database['all_statements_ms']} ms in {database['statements']} statements (slowest "
                f"{database['slowest_statement_ms']} ms); the rest is MLflow building the response in Python.",
                "",
            ]
    if start:
        steps = start["tracking_server_steps_seconds_median"]
        lines += [
            "## 4. Stack start",
            "",
            f"`docker compose up -d --wait` with images built and volumes kept: **{start['up_to_healthy_seconds_median']} s** "
            f"to every service healthy (median of {start['rounds']}: {start['up_to_healthy_seconds']}).",
            "",
            "Tracking-server start, seconds since its container started: database reachable "
            f"{steps['database_reachable']}, schema checked/migrated {steps['schema_migrated']}, bucket ready "
            f"{steps['bucket_ready']}; the rest is MLflow's server boot and the first healthcheck.",
            "",
            "| image | size |",
            "| --- | --- |",
            *(f"| {image} | {size} MB |" for image, size in start["image_size_mb"].items()),
            "",
        ]
    DOC.write_text("\n".join(lines))
    print(f"bench: wrote {DOC}")


if __name__ == "__main__":
    main()
