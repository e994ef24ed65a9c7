"""The fast store against MLflow's own: the same random calls on two fresh databases must give the same answers.

Each step draws a call (create_run, log_batch, log_metric, log_param, set_tag, update_run_info, delete_run,
restore_run) with arguments built to hit the edges: NaN and infinite values, duplicate and retried metrics, ties in
step and timestamp, changed param values, too-long values, too many entries, the run-name tag, deleted and unknown
runs and experiments. Both stores must then return equal results or raise MlflowException with the same error code
and message, and after every step each touched run must read back the same through get_run (info, params, tags,
latest_metrics) and get_metric_history.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from tests.fast_store.conftest import fresh_database

STEPS = 400
SEEDS = (1, 2, 3)
METRIC_KEYS = ("loss", "accuracy", "val/loss", "lr")
PARAM_KEYS = ("epochs", "batch_size", "optimizer")
TAG_KEYS = ("team", "note", MLFLOW_RUN_NAME)


@dataclass
class Pair:
    """The two stores, and how the fast store's run ids map to MLflow's."""

    plain: SqlAlchemyStore
    fast: SqlAlchemyStore
    experiments: list[str] = field(default_factory=list)
    runs: list[tuple[str, str]] = field(default_factory=list)  # (plain id, fast id)

    def normalise(self, value: Any) -> Any:
        text = repr(value)
        for plain_id, fast_id in self.runs:
            text = text.replace(fast_id, plain_id)
        return text


@pytest.fixture(scope="module")
def stores(migrated_server: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    from mlflow_stack_server.fast_store import FastSqlAlchemyStore

    artifacts = Path(tmp_path_factory.mktemp("artifacts")).as_uri()
    plain = SqlAlchemyStore(fresh_database(migrated_server), artifacts)
    fast = FastSqlAlchemyStore(fresh_database(migrated_server), artifacts)
    yield plain, fast
    plain.engine.dispose()
    fast.engine.dispose()


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except MlflowException as error:
        return "error", (error.error_code, error.message)


def run_state(store: SqlAlchemyStore, run_id: str) -> Any:
    try:
        run = store.get_run(run_id)
    except MlflowException as error:
        return ("error", error.error_code)
    info = run.info
    history = {
        key: sorted((m.key, m.value, m.timestamp, m.step) for m in store.get_metric_history(run_id, key))
        for key in METRIC_KEYS
    }
    latest = sorted((m.key, m.value, m.timestamp, m.step) for m in run.data._metric_objs)
    return (
        (info.run_name, info.experiment_id, info.user_id, info.status, info.start_time, info.end_time),
        (info.lifecycle_stage, info.artifact_uri),
        sorted(run.data.params.items()),
        sorted(run.data.tags.items()),
        latest,
        history,
        [d.to_dictionary() for d in run.inputs.dataset_inputs],
    )


def random_value(rng: random.Random) -> float:
    return rng.choice([0.5, 1.0, -2.0, 0.25, math.nan, math.inf, -math.inf, 1e308, rng.random()])


def random_metric(rng: random.Random) -> Metric:
    # Few keys, steps and timestamps: ties, duplicates and "older than latest" values happen often.
    return Metric(rng.choice(METRIC_KEYS), random_value(rng), rng.choice([1000, 2000, 3000]), rng.randint(0, 3))


def random_params(rng: random.Random) -> list[Param]:
    keys = rng.sample(PARAM_KEYS, rng.randint(0, len(PARAM_KEYS)))
    # Mostly the value already logged for the key; sometimes another one (refused) or one cut at 6000 chars.
    params = [Param(key, rng.choices([key, "other", "x" * 7000], weights=[85, 10, 5])[0]) for key in keys]
    if rng.random() < 0.05:
        params = [Param(f"p{i}", "v") for i in range(101)]  # over the 100-param limit
    if rng.random() < 0.05 and params:
        params.append(Param(params[0].key, "dup"))  # a key twice in one batch
    return params


def random_tags(rng: random.Random) -> list[RunTag]:
    keys = rng.choices(TAG_KEYS, weights=[45, 45, 10], k=rng.randint(0, 3))
    tags = [RunTag(key, rng.choices(["a", "b", "y" * 9000], weights=[45, 45, 10])[0]) for key in keys]
    if rng.random() < 0.03:
        tags.append(RunTag("", "empty key"))
    return tags


def random_batch_metrics(rng: random.Random, history: list[Metric]) -> list[Metric]:
    metrics = [random_metric(rng) for _ in range(rng.randint(0, 6))]
    if history and rng.random() < 0.1:
        metrics += rng.sample(history, min(len(history), 3))  # a client retrying an earlier batch
    if rng.random() < 0.03:
        metrics = [Metric(f"m{i}", 1.0, 1, 0) for i in range(1001)]  # over the 1000-metric limit
    if rng.random() < 0.03:
        metrics.append(Metric("bad", float("nan"), 1, 0))
        metrics.append(Metric("bad", float("nan"), 1, 0))  # two NaNs: equal rows, unequal Metric objects
    if rng.random() < 0.02:
        metrics.append(Metric("bad//key", 1.0, 1, 0))
    return metrics


def pick_run(rng: random.Random, pair: Pair) -> tuple[str, str]:
    if not pair.runs or rng.random() < 0.04:
        return ("0" * 32, "0" * 32)  # no such run
    return rng.choice(pair.runs)


def step(rng: random.Random, pair: Pair, history: list[Metric]) -> tuple[str, tuple[str, str] | None]:
    """One random call on both stores; returns its name and the run it touched."""
    kind = rng.choices(
        ["create_run", "log_batch", "log_metric", "log_param", "set_tag", "update_run", "delete_run", "restore_run"],
        weights=[3, 10, 3, 2, 2, 2, 1, 2],
    )[0]
    plain, fast = pair.plain, pair.fast
    if kind == "create_run":
        known, deleted = pair.experiments[:-1], pair.experiments[-1]
        experiment = rng.choices([rng.choice(known), deleted, "999999", "abc"], weights=[85, 5, 5, 5])[0]
        tags = [RunTag("team", "a")] + ([RunTag(MLFLOW_RUN_NAME, "from-tag")] if rng.random() < 0.2 else [])
        run_name = rng.choice([None, "named", "from-tag"])
        start_time = rng.randint(0, 10**12)
        seed = rng.random()

        def create(store: SqlAlchemyStore) -> Callable[[], Any]:
            def call() -> Any:
                random.seed(seed)  # MLflow draws the random run name from the global generator
                return store.create_run(experiment, "user", start_time, list(tags), run_name)

            return call

        expected, got = outcome(create(plain)), outcome(create(fast))
        run_ids = None
        if expected[0] == "ok" and got[0] == "ok":
            run_ids = (expected[1].info.run_id, got[1].info.run_id)
            pair.runs.append(run_ids)
        assert pair.normalise(got) == pair.normalise(expected), kind
        return kind, run_ids

    run_ids = pick_run(rng, pair)
    calls: dict[str, Callable[[SqlAlchemyStore, str], Any]] = {}
    if kind == "log_batch":
        metrics, params, tags = random_batch_metrics(rng, history), random_params(rng), random_tags(rng)
        history.extend(metrics)
        calls[kind] = lambda store, run_id: store.log_batch(run_id, metrics, params, tags)
    elif kind == "log_metric":
        metric = rng.choice(history) if history and rng.random() < 0.3 else random_metric(rng)
        history.append(metric)
        calls[kind] = lambda store, run_id: store.log_metric(run_id, metric)
    elif kind == "log_param":
        param = random_params(rng)[:1] or [Param("epochs", "1")]
        calls[kind] = lambda store, run_id: store.log_param(run_id, param[0])
    elif kind == "set_tag":
        tag = random_tags(rng)[:1] or [RunTag("note", "z")]
        calls[kind] = lambda store, run_id: store.set_tag(run_id, tag[0])
    elif kind == "update_run":
        status = rng.choice([None, RunStatus.FINISHED, RunStatus.FAILED, RunStatus.RUNNING, RunStatus.KILLED])
        end_time = rng.choice([None, rng.randint(0, 10**12)])
        name = rng.choice([None, None, "", "renamed"])
        calls[kind] = lambda store, run_id: store.update_run_info(run_id, status, end_time, name)
    elif kind == "delete_run":
        calls[kind] = lambda store, run_id: store.delete_run(run_id)
    else:
        calls[kind] = lambda store, run_id: store.restore_run(run_id)
    expected = outcome(lambda: calls[kind](plain, run_ids[0]))
    got = outcome(lambda: calls[kind](fast, run_ids[1]))
    assert pair.normalise(got) == pair.normalise(expected), kind
    return kind, run_ids


@pytest.mark.parametrize("seed", SEEDS)
def test_same_calls_same_results(stores: tuple[Any, Any], seed: int) -> None:
    plain, fast = stores
    pair = Pair(plain, fast)
    rng = random.Random(seed)
    for name in (f"diff-{seed}-a", f"diff-{seed}-b", f"diff-{seed}-deleted"):
        plain_id, fast_id = plain.create_experiment(name), fast.create_experiment(name)
        assert plain_id == fast_id  # both databases are fresh and see the same calls
        pair.experiments.append(plain_id)
    plain.delete_experiment(pair.experiments[-1])
    fast.delete_experiment(pair.experiments[-1])
    history: list[Metric] = []
    kinds: dict[str, int] = {}
    for number in range(STEPS):
        kind, run_ids = step(rng, pair, history)
        kinds[kind] = kinds.get(kind, 0) + 1
        if run_ids is not None:
            assert pair.normalise(run_state(fast, run_ids[1])) == pair.normalise(run_state(plain, run_ids[0])), (
                f"step {number}: {kind}"
            )
    for plain_id, fast_id in pair.runs:
        assert pair.normalise(run_state(fast, fast_id)) == pair.normalise(run_state(plain, plain_id))
    # The sequence really exercised the stores: runs exist, and batches both landed and were refused.
    assert len(pair.runs) >= 5 and kinds.get("log_batch", 0) >= 50
