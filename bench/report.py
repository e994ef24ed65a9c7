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


def main() -> None:
    lines = [
        "# Performance",
        "",
        "Written by `scripts/bench.sh` (`make bench`); raw numbers in `docs/bench-results/`.",
        "",
    ]
    overhead, pipeline, start = load("tracking_overhead"), load("input_pipeline"), load("stack_start")
    loads = [load(path.stem) for path in sorted(RESULTS_DIR.glob("server_load_*.json"))]
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
            f"median of {s['rounds']} alternating rounds, wall time of `fit`:",
            "",
            "| mode | seconds | overhead vs off |",
            "| --- | --- | --- |",
        ]
        for mode, seconds in overhead["seconds_median"].items():
            lines.append(f"| {mode} | {seconds} | {overhead['overhead_percent'][mode]:+.2f} % |")
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
            f"| trainer's tf.data (cache, shuffle, batch, prefetch) | {rates['tf_data']} |",
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
            "Each simulated trainer: create a run, log 10 params, one `log-batch` of 5 metrics per epoch, a tag, "
            "end the run; twice. Load generator and stack on the same 2 cores.",
            "",
            "| configuration | K | req/s | metric points/s | p50 ms | p99 ms | errors |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for result in loads:
            if result:
                for row in result["rows"]:
                    lines.append(
                        f"| {result['label']} | {row['k']} | {row['requests_per_second']} | "
                        f"{row['metric_points_per_second']} | {row['latency_ms_p50']} | {row['latency_ms_p99']} | "
                        f"{row['errors']} |"
                    )
        lines.append("")
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
