"""A grid sweep: one parent run, one nested child run per combination, the best child registered.

Each child is a separate `trainer train` process: a child that crashes (even hard, out of memory) cannot take
the sweep down, and `--parallel N` is plain process parallelism.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mnist_trainer import registry, tracking
from mnist_trainer.training import MODEL_URI_TAG, PARENT_RUN_TAG, RegistryOptions, TrainResult, register_and_promote


@dataclass(frozen=True)
class Combination:
    learning_rate: float
    batch_size: int | Literal["auto"]  # `auto` is resolved by the child, on the devices it trains on

    @property
    def label(self) -> str:
        return f"lr={self.learning_rate:g} bs={self.batch_size}"


@dataclass(frozen=True)
class ChildOutcome:
    combination: Combination
    exit_code: int
    seconds: float
    last_line: str


def grid(learning_rates: Sequence[float], batch_sizes: Sequence[int | Literal["auto"]]) -> list[Combination]:
    return [Combination(lr, bs) for lr, bs in itertools.product(learning_rates, batch_sizes)]


def _batch_sizes_param(combinations: Sequence[Combination]) -> str:
    """'auto,64,128': `auto` first, then the numbers in order."""
    sizes = {c.batch_size for c in combinations}
    return ",".join(["auto"] * ("auto" in sizes) + [str(size) for size in sorted(s for s in sizes if s != "auto")])


def _run_child(command: list[str], combination: Combination, log_dir: Path) -> ChildOutcome:
    started = time.perf_counter()
    log_path = log_dir / f"{combination.label.replace(' ', '_')}.log"
    with log_path.open("w") as log:
        exit_code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    # The line worth a glance: the error if there was one, else the test result.
    errors = [line for line in lines if line.startswith("trainer: error")]
    results = [line for line in lines if line.startswith("trainer: test accuracy")]
    last = (errors or results or lines or [""])[-1]
    return ChildOutcome(combination, exit_code, time.perf_counter() - started, last)


def run_sweep(
    combinations: Sequence[Combination],
    shared_args: Sequence[str],
    uri: str,
    experiment_name: str,
    run_name: str | None,
    parallel: int,
    registry_options: RegistryOptions | None,
) -> int:
    """Returns the registered version, or 0 when registration is off. Raises when every child failed."""
    import tempfile

    import mlflow
    from mlflow import MlflowClient

    rule = registry_options.rule if registry_options else registry.PromotionRule()
    metric = rule.metric
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(experiment_name)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    # experiment_id named explicitly for the reason given in training.train_and_track.
    with (
        mlflow.start_run(experiment_id=experiment.experiment_id, run_name=run_name) as parent,
        tempfile.TemporaryDirectory() as log_dir,
    ):
        mlflow.log_params(
            {
                "grid.learning_rate": ",".join(f"{c:g}" for c in sorted({c.learning_rate for c in combinations})),
                "grid.batch_size": _batch_sizes_param(combinations),
                "grid.size": len(combinations),
                "parallel": parallel,
                "promotion_metric": metric,
            }
        )
        mlflow.set_tag("sweep", "parent")
        print(f"sweep: {len(combinations)} runs, {parallel} at a time, parent run {parent.info.run_id}", flush=True)

        def command(combination: Combination) -> list[str]:
            return [
                sys.executable, "-m", "mnist_trainer", "train", *shared_args,
                "--learning-rate", repr(combination.learning_rate), "--batch-size", str(combination.batch_size),
                "--experiment-name", experiment_name, "--run-name", combination.label,
                "--parent-run-id", parent.info.run_id, "--no-register",
            ]  # fmt: skip

        outcomes: list[ChildOutcome] = []
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = [pool.submit(_run_child, command(c), c, Path(log_dir)) for c in combinations]
            for future in futures:
                outcome = future.result()
                outcomes.append(outcome)
                status = "ok" if outcome.exit_code == 0 else f"FAILED (exit {outcome.exit_code})"
                print(
                    f"sweep: [{len(outcomes)}/{len(combinations)}] {outcome.combination.label}: {status} "
                    f"in {outcome.seconds:.0f} s; {outcome.last_line}",
                    flush=True,
                )

        children = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent.info.run_id}'"
        )
        # A child that died without closing its run would stay RUNNING forever: say what happened.
        for child in children:
            if child.info.status == "RUNNING":
                client.set_terminated(child.info.run_id, status="FAILED")
        rows = _rows(children, metric)
        logged = {row["run"] for row in rows}
        rows += [
            {"run": o.combination.label, "status": f"FAILED (exit {o.exit_code}, no run)", metric: None}
            for o in outcomes
            if o.combination.label not in logged
        ]
        finished = [row for row in rows if row["status"] == "FINISHED" and row[metric] is not None]
        finished.sort(key=lambda row: row[metric], reverse=rule.greater_is_better)
        failed = [row for row in rows if row not in finished]
        table = registry.format_table(finished + failed)
        print("sweep: results, best first\n" + table, flush=True)
        mlflow.log_text(table + "\n", "sweep_results.txt")
        mlflow.log_dict({"metric": metric, "runs": finished + failed}, "sweep_results.json")
        if not finished:
            raise RuntimeError(f"all {len(combinations)} sweep runs failed; see the child runs for details")
        best = finished[0]
        mlflow.log_metric(f"best_{metric}", float(best[metric]))
        mlflow.set_tags({"best_run_id": best["run_id"], "best_combination": best["run"]})
        print(f"sweep: best {best['run']} ({metric} {best[metric]:.4f}), run {best['run_id']}", flush=True)
        print(f"sweep: parent run: {tracking.run_link(uri, experiment.experiment_id, parent.info.run_id)}")

    if registry_options is None:
        return 0
    best_run = client.get_run(best["run_id"])
    result = TrainResult(
        run_id=best["run_id"],
        experiment_id=experiment.experiment_id,
        model_uri=best_run.data.tags[MODEL_URI_TAG],
        metrics={
            key: float(value)
            for key, value in best_run.data.metrics.items()
            if key in ("test_loss", "test_accuracy", "train_seconds")
        },
    )
    return register_and_promote(result, uri, registry_options)


def _rows(children: Sequence[Any], metric: str) -> list[dict[str, Any]]:
    return [
        {
            "run": child.info.run_name,
            "status": child.info.status,
            metric: child.data.metrics.get(metric),
            "val_accuracy": child.data.metrics.get("val_accuracy"),
            "train_seconds": child.data.metrics.get("train_seconds"),
            "run_id": child.info.run_id,
        }
        for child in children
    ]
