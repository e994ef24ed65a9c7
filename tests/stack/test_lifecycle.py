"""Train -> compare -> promote -> serve, through the trainer's own commands against the running stack."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow import MlflowClient

from tests.stack.conftest import SERVING_PORT, Training, compose, mnist_npz, parse_training, run_trainer
from tests.support.registration import register_and_promote_at_once, scored_runs

SERVING_URL = f"http://localhost:{SERVING_PORT}"


@dataclass(frozen=True)
class Lifecycle:
    model: str
    experiment: str
    first: Training  # a subset: middling
    worse: Training  # a smaller subset: worse, passes the lowered gate
    better: Training  # four times the first's subset: best


def _train(lifecycle_names: tuple[str, str], run_name: str, *args: str) -> Training:
    experiment, model = lifecycle_names
    options = ["--epochs", "1", "--batch-size", "64", "--min-accuracy", "0.5", "--run-name", run_name]
    names = ["--experiment-name", experiment, "--registered-model-name", model]
    return parse_training(run_trainer(*options, *names, *args))


@pytest.fixture(scope="module")
def lifecycle() -> Lifecycle:
    suffix = uuid.uuid4().hex[:8]
    names = (f"lifecycle-{suffix}", f"mnist-lifecycle-{suffix}")
    first = _train(names, "first", "--max-train-samples", "6000")
    worse = _train(names, "worse", "--max-train-samples", "1500")
    better = _train(names, "better", "--max-train-samples", "24000")
    return Lifecycle(names[1], names[0], first, worse, better)


def _alias(client: MlflowClient, model: str, alias: str) -> int:
    return int(client.get_model_version_by_alias(model, alias).version)


def test_champion_stays_on_a_worse_version_and_moves_to_a_better_one(
    client: MlflowClient, lifecycle: Lifecycle
) -> None:
    assert "is @champion: first version with a champion" in lifecycle.first.stdout
    assert "is @challenger" in lifecycle.worse.stdout
    assert "is @champion" in lifecycle.better.stdout
    assert _alias(client, lifecycle.model, "champion") == lifecycle.better.version
    assert _alias(client, lifecycle.model, "challenger") == lifecycle.worse.version
    better = client.get_model_version(lifecycle.model, str(lifecycle.better.version))
    assert better.tags["validation_status"] == "passed"
    assert f"beats v{lifecycle.first.version}" in better.tags["promotion"]


def test_every_run_carries_its_evaluation_pictures(client: MlflowClient, lifecycle: Lifecycle) -> None:
    paths = {artifact.path for artifact in client.list_artifacts(lifecycle.better.run_id, "evaluation")}
    assert paths == {"evaluation/confusion_matrix.png", "evaluation/misclassified.png"}
    picture = client.download_artifacts(lifecycle.better.run_id, "evaluation/confusion_matrix.png")
    assert Path(picture).read_bytes()[:4] == b"\x89PNG"


def test_models_lists_versions_and_promote_overrides_by_hand(client: MlflowClient, lifecycle: Lifecycle) -> None:
    table = compose("run", "--rm", "-T", "trainer", "models", "--registered-model-name", lifecycle.model)
    rows = [line.split() for line in table.stdout.strip().splitlines()]
    assert rows[0][:3] == ["version", "aliases", "test_accuracy"]
    assert [int(row[0]) for row in rows[1:]] == [lifecycle.better.version, lifecycle.worse.version,
                                                 lifecycle.first.version]  # fmt: skip
    assert rows[1][1] == "champion"

    promoted = compose(
        "run", "--rm", "-T", "-e", "TRAINER_USER=stack-test", "trainer", "promote",
        "--registered-model-name", lifecycle.model, "--version", str(lifecycle.first.version),
        "--alias", "staging", "--reason", "canary",
    )  # fmt: skip
    assert f"version {lifecycle.first.version} is now @staging (set by stack-test)" in promoted.stdout
    assert _alias(client, lifecycle.model, "staging") == lifecycle.first.version
    version = client.get_model_version(lifecycle.model, str(lifecycle.first.version))
    assert version.tags["staging_set_by"].startswith("stack-test at ")
    assert version.tags["staging_set_by"].endswith(": canary")
    # A version that does not exist is a usage error, not a crash.
    missing = compose(
        "run", "--rm", "-T", "trainer", "promote", "--registered-model-name", lifecycle.model, "--version", "999",
        check=False,
    )  # fmt: skip
    assert missing.returncode == 2, missing.stderr[-1000:]


def test_concurrent_registrations_get_distinct_versions_and_the_champion_ends_on_the_best(
    client: MlflowClient, lifecycle: Lifecycle
) -> None:
    """Four trainers finishing at once, each registering and promoting through the real server."""
    experiment = client.get_experiment_by_name(lifecycle.experiment)
    assert experiment is not None
    model = f"{lifecycle.model}-race"
    client.create_registered_model(model)
    accuracies = [0.981, 0.987, 0.983, 0.985]
    scores = scored_runs(client, experiment.experiment_id, accuracies)
    runs = list(scores)
    versions = register_and_promote_at_once(client, model, runs)
    assert sorted(versions.values()) == [1, 2, 3, 4]
    best_run = runs[accuracies.index(max(accuracies))]
    assert _alias(client, model, "champion") == versions[best_run]


def test_a_sweep_nests_one_child_per_combination_and_registers_only_the_best(client: MlflowClient) -> None:
    suffix = uuid.uuid4().hex[:8]
    experiment, model = f"sweep-{suffix}", f"mnist-sweep-{suffix}"
    result = compose(
        "run", "--rm", "-T", "-v", f"{mnist_npz()}:/data/mnist.npz:ro", "trainer", "sweep",
        "--data", "/data/mnist.npz", "--learning-rate", "0.001,0.003", "--batch-size", "64,128",
        "--epochs", "1", "--max-train-samples", "3000", "--parallel", "2", "--min-accuracy", "0.5",
        "--experiment-name", experiment, "--registered-model-name", model, "--run-name", "grid",
    )  # fmt: skip
    assert result.stdout.count("sweep: [") == 4
    assert "sweep: results, best first" in result.stdout
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    runs = client.search_runs([found.experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == 1
    assert len(children) == 4
    parent = parents[0]
    assert {child.data.tags["mlflow.parentRunId"] for child in children} == {parent.info.run_id}
    assert {(c.data.params["learning_rate"], c.data.params["batch_size"]) for c in children} == {
        ("0.001", "64"), ("0.001", "128"), ("0.003", "64"), ("0.003", "128")
    }  # fmt: skip
    assert all(child.info.status == "FINISHED" for child in children)
    best = max(children, key=lambda run: run.data.metrics["test_accuracy"])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    assert parent.data.metrics["best_test_accuracy"] == pytest.approx(best.data.metrics["test_accuracy"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"sweep_results.txt", "sweep_results.json"}
    (version,) = client.search_model_versions(f"name = '{model}'")
    assert version.run_id == best.info.run_id


@pytest.fixture(scope="module")
def serving(lifecycle: Lifecycle) -> Iterator[str]:
    uri = f"models:/{lifecycle.model}@champion"
    compose(
        "--profile", "serve", "up", "-d", "--wait", "--wait-timeout", "180", "serving",
        env={"SERVING_MODEL_URI": uri},
    )  # fmt: skip
    yield SERVING_URL
    compose("--profile", "serve", "rm", "-sf", "serving")


def test_serving_answers_with_the_champion(serving: str) -> None:
    with np.load(mnist_npz()) as archive:
        images, labels = archive["x_test"][:200], archive["y_test"][:200]
    body = {"inputs": ((images.astype(np.float32) / 255.0)[..., np.newaxis]).tolist()}
    response = requests.post(serving + "/invocations", json=body, timeout=60)
    assert response.status_code == 200, response.text[:500]
    predictions = np.asarray(response.json()["predictions"])
    assert predictions.shape == (200, 10)
    assert float((predictions.argmax(axis=1) == labels).mean()) >= 0.97


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"inputs": [1, 2', "application/json"),  # not JSON
        (json.dumps({"inputs": [[1.0, 2.0, 3.0]]}).encode(), "application/json"),  # wrong shape
        (json.dumps({"wrong_key": [1]}).encode(), "application/json"),
        (b"1,2,3", "text/plain"),
    ],
)
def test_serving_refuses_malformed_bodies_with_4xx_and_stays_up(serving: str, body: bytes, content_type: str) -> None:
    response = requests.post(serving + "/invocations", data=body, headers={"Content-Type": content_type}, timeout=30)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.text.strip()
    assert requests.get(serving + "/ping", timeout=10).status_code == 200


def test_predict_classifies_image_files_with_the_champion(lifecycle: Lifecycle, tmp_path: Path) -> None:
    from PIL import Image

    with np.load(mnist_npz()) as archive:
        images, labels = archive["x_test"][:3], archive["y_test"][:3]
    for index, image in enumerate(images):
        Image.fromarray(255 - image).save(tmp_path / f"digit{index}.png")  # dark ink on white, like a scan
    tmp_path.chmod(0o755)
    result = compose(
        "run", "--rm", "-T", "-v", f"{tmp_path}:/images:ro", "trainer", "predict",
        "--model", f"models:/{lifecycle.model}@champion", *(f"/images/digit{i}.png" for i in range(3)),
    )  # fmt: skip
    lines = [line for line in result.stdout.splitlines() if line.startswith("/images/")]
    assert [int(line.split(": ")[1].split()[0]) for line in lines] == labels.tolist()
