"""A grid sweep: one parent run, one nested child run per combination, the best child registered.

Each child is a separate `trainer train` process: a child that crashes (even hard, out of memory) cannot take
the sweep down, and `--parallel N` is plain process parallelism. A child gets its whole configuration as a
config file and writes a result file; the sweep reads nothing from its printed output.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnist_trainer import registry, tracking
from mnist_trainer.config import CONFIG_ARTIFACT, RegistryConfig, RunConfig, Settings, short_label
from mnist_trainer.registry import PromotionRule
from mnist_trainer.tracking import MODEL_URI_TAG, PARENT_RUN_TAG, TrainResult

if TYPE_CHECKING:
    from mlflow import MlflowClient


@dataclass(frozen=True)
class Combination:
    values: Mapping[str, Any]  # training field -> value; `auto` is resolved by the child on its own devices

    @property
    def label(self) -> str:
        return short_label(self.values)


@dataclass(frozen=True)
class ChildOutcome:
    combination: Combination
    exit_code: int
    seconds: float
    summary: str


def grid(values: Mapping[str, Sequence[Any]]) -> list[Combination]:
    keys = list(values)
    return [Combination(dict(zip(keys, combo, strict=True))) for combo in itertools.product(*values.values())]


def _grid_param(values: Sequence[Any]) -> str:
    """'auto,64,128': words first, then the numbers in order."""
    words = sorted({v for v in values if isinstance(v, str)})
    numbers = sorted({v for v in values if not isinstance(v, str)})
    return ",".join([*words, *(f"{n:g}" for n in numbers)])


def _run_child(config: RunConfig, combination: Combination, work_dir: Path) -> ChildOutcome:
    stem = combination.label.replace(" ", "_")
    config_path, result_path = work_dir / f"{stem}.config.json", work_dir / f"{stem}.result.json"
    config_path.write_text(config.to_json())
    command = [
        sys.executable, "-m", "mnist_trainer", "train", "--config", str(config_path), "--result-file", str(result_path),
    ]  # fmt: skip
    started = time.perf_counter()
    with (work_dir / f"{stem}.log").open("w") as log:
        exit_code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    try:
        result = json.loads(result_path.read_text())
    except (OSError, ValueError):
        result = {"error": f"no result file (the process ended with exit code {exit_code})"}
    if "error" in result:
        summary = f"error: {result['error']}"
    else:
        summary = f"test accuracy {result['metrics']['test_accuracy']:.4f}, run {result['run_id']}"
    return ChildOutcome(combination, exit_code, time.perf_counter() - started, summary)


def run_sweep(base: RunConfig, combinations: Sequence[Combination], settings: Settings, parallel: int) -> int:
    """Returns the registered version, or 0 when registration is off. Raises when every child failed."""
    import tempfile

    import mlflow

    uri = settings.tracking_uri
    rule = registry.promotion_rule(base.registry)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(base.tracking.experiment_name)
    # experiment_id named explicitly for the reason given in training._start_run.
    with (
        mlflow.start_run(experiment_id=experiment.experiment_id, run_name=base.tracking.run_name) as parent,
        tempfile.TemporaryDirectory() as work_dir,
    ):
        parent_id = parent.info.run_id
        _log_sweep(base, combinations, parallel, rule.metric)
        print(f"sweep: {len(combinations)} runs, {parallel} at a time, parent run {parent_id}", flush=True)
        configs = [child_config(base, combination, parent_id) for combination in combinations]
        outcomes = _run_children(configs, combinations, Path(work_dir), parallel)
        finished, failed = _results(tracking.client(uri), experiment.experiment_id, parent_id, outcomes, rule)
        best = _report(finished, failed, rule.metric, len(combinations))
        print(f"sweep: parent run: {tracking.run_link(settings, experiment.experiment_id, parent_id)}")
    if base.registry.no_register:
        return 0
    return _register_best(best, experiment.experiment_id, settings, base.registry)


def child_config(base: RunConfig, combination: Combination, parent_run_id: str) -> RunConfig:
    """A child's whole configuration: the base with the combination's values, nested under the parent and left
    unregistered (the sweep registers its best child once all are done)."""
    return replace(
        base,
        train=replace(base.train, **combination.values),
        tracking=replace(base.tracking, run_name=combination.label, parent_run_id=parent_run_id),
        registry=replace(base.registry, no_register=True),
    )


def _log_sweep(base: RunConfig, combinations: Sequence[Combination], parallel: int, metric: str) -> None:
    """The parent run's params (the grid), its config and its tag."""
    import mlflow

    keys = list(combinations[0].values) if combinations else []
    mlflow.log_params(
        {
            **{f"grid.{key}": _grid_param([c.values[key] for c in combinations]) for key in keys},
            "grid.size": len(combinations),
            "parallel": parallel,
            "promotion_metric": metric,
        }
    )
    mlflow.log_text(base.to_json(), CONFIG_ARTIFACT)
    mlflow.set_tag("sweep", "parent")


def _run_children(
    configs: Sequence[RunConfig], combinations: Sequence[Combination], work_dir: Path, parallel: int
) -> list[ChildOutcome]:
    """Every child, `parallel` at a time, with one line per child as it ends (in grid order)."""
    outcomes: list[ChildOutcome] = []
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [pool.submit(_run_child, *job, work_dir) for job in zip(configs, combinations, strict=True)]
        for future in futures:
            outcome = future.result()
            outcomes.append(outcome)
            status = "ok" if outcome.exit_code == 0 else f"FAILED (exit {outcome.exit_code})"
            print(
                f"sweep: [{len(outcomes)}/{len(combinations)}] {outcome.combination.label}: {status} "
                f"in {outcome.seconds:.0f} s; {outcome.summary}",
                flush=True,
            )
    return outcomes


def _results(
    client: MlflowClient, experiment_id: str, parent_id: str, outcomes: Sequence[ChildOutcome], rule: PromotionRule
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One row per child: the finished ones best first, and the failed ones (with or without a run)."""
    metric = rule.metric
    children = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_id}'")
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
    return finished, [row for row in rows if row not in finished]


def _report(finished: list[dict[str, Any]], failed: list[dict[str, Any]], metric: str, size: int) -> dict[str, Any]:
    """Print and log the results table; returns the best row, raises when no child finished."""
    import mlflow

    table = registry.format_table(finished + failed)
    print("sweep: results, best first\n" + table, flush=True)
    mlflow.log_text(table + "\n", "sweep_results.txt")
    mlflow.log_dict({"metric": metric, "runs": finished + failed}, "sweep_results.json")
    if not finished:
        raise RuntimeError(f"all {size} sweep runs failed; see the child runs for details")
    best = finished[0]
    mlflow.log_metric(f"best_{metric}", float(best[metric]))
    mlflow.set_tags({"best_run_id": best["run_id"], "best_combination": best["run"]})
    print(f"sweep: best {best['run']} ({metric} {best[metric]:.4f}), run {best['run_id']}", flush=True)
    return best


def _register_best(best: dict[str, Any], experiment_id: str, settings: Settings, options: RegistryConfig) -> int:
    best_run = tracking.client(settings.tracking_uri).get_run(best["run_id"])
    result = TrainResult(
        run_id=best["run_id"],
        experiment_id=experiment_id,
        model_uri=best_run.data.tags[MODEL_URI_TAG],
        metrics={
            key: float(value)
            for key, value in best_run.data.metrics.items()
            if key in ("test_loss", "test_accuracy", "train_seconds")
        },
    )
    return registry.register_and_promote(result, settings, options)


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
