"""Concurrent registration against a real server: scored stand-in runs, registered and promoted all at once.

Only the registry is under test where this is used: each version's run has a logged test accuracy and a
stand-in artifact, not a trained model.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from mlflow import MlflowClient

from mnist_trainer import registry


def scored_runs(client: MlflowClient, experiment_id: str, accuracies: Iterable[float]) -> dict[str, float]:
    """One finished run per accuracy, with `test_accuracy` logged and a stand-in model artifact: run id -> accuracy."""
    runs = {}
    for accuracy in accuracies:
        run = client.create_run(experiment_id, run_name=f"race-{accuracy:.3f}")
        client.log_metric(run.info.run_id, "test_accuracy", accuracy)
        client.log_text(run.info.run_id, "stand-in for a model", "model/MLmodel")
        client.set_terminated(run.info.run_id)
        runs[run.info.run_id] = accuracy
    return runs


def register_and_promote_at_once(
    client: MlflowClient,
    model: str,
    run_ids: list[str],
    tags: dict[str, str] | None = None,
    timeout: float = 120,
) -> dict[str, int]:
    """Each run registered as a version of `model` and promoted by its own thread, all released at once by a
    barrier, as trainers finishing together would; run id -> version. AssertionError if any thread failed."""
    versions: dict[str, int] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(run_ids))

    def register_and_promote(run_id: str) -> None:
        try:
            start.wait()
            created = client.create_model_version(model, f"runs:/{run_id}/model", run_id=run_id, tags=tags)
            versions[run_id] = int(created.version)
            registry.promote(client, model, int(created.version), registry.PromotionRule())
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=register_and_promote, args=(run_id,)) for run_id in run_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not errors, errors
    return versions
