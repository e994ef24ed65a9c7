"""Lineage on the stack: a version names where it came from, and `trainer reproduce` trains it again exactly."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from tests.stack.conftest import TRAINER_IMAGE, Training, compose, mnist_npz, parse_training, run_trainer


@dataclass(frozen=True)
class Original:
    experiment: str
    model: str
    training: Training
    seconds: float


@pytest.fixture(scope="module")
def original() -> Original:
    suffix = uuid.uuid4().hex[:8]
    experiment, model = f"reproduce-{suffix}", f"mnist-reproduce-{suffix}"
    started = time.perf_counter()
    result = run_trainer(
        "--epochs", "1", "--max-train-samples", "3000", "--batch-size", "64", "--min-accuracy", "0.5",
        "--experiment-name", experiment, "--registered-model-name", model, "--run-name", "original",
    )  # fmt: skip
    return Original(experiment, model, parse_training(result), time.perf_counter() - started)


def _reproductions(client: MlflowClient, original: Original) -> list[object]:
    found = client.get_experiment_by_name(original.experiment)
    assert found is not None
    return list(
        client.search_runs([found.experiment_id], filter_string=f"tags.reproduces = '{original.training.run_id}'")
    )


def _reproduce(client: MlflowClient, original: Original, uri: str) -> None:
    before = len(_reproductions(client, original))
    started = time.perf_counter()
    result = run_trainer("reproduce", uri, check=False)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    print(f"reproduce {uri}: {seconds:.1f} s (original training {original.seconds:.1f} s)")
    copies = _reproductions(client, original)
    assert len(copies) == before + 1
    copy = max(copies, key=lambda run: run.info.start_time)  # type: ignore[attr-defined]
    source = client.get_run(original.training.run_id)
    assert copy.data.metrics["test_accuracy"] == pytest.approx(source.data.metrics["test_accuracy"], abs=1e-4)  # type: ignore[attr-defined]
    assert copy.data.metrics["test_loss"] == pytest.approx(source.data.metrics["test_loss"], abs=1e-4)  # type: ignore[attr-defined]
    for key in ("code_digest", "image", "package_lock_digest", "data_digest"):
        assert copy.data.tags[key] == source.data.tags[key], key  # type: ignore[attr-defined]
    table = [line.split() for line in result.stdout.splitlines() if line.startswith("test_")]
    assert [row[0] for row in table] == ["test_accuracy", "test_loss"] and all(row[-1] == "ok" for row in table)
    # Nothing registered by default: the model still has its one version.
    assert len(client.search_model_versions(f"name = '{original.model}'")) == 1


def test_a_version_records_its_lineage(client: MlflowClient, original: Original) -> None:
    run = client.get_run(original.training.run_id)
    tags = run.data.tags
    assert tags["code_digest"].startswith("sha256:") and tags["code_digest_source"] == "image build"
    assert tags["image"] == TRAINER_IMAGE and tags["tf_op_determinism"] == "on" and tags["devices"] == "CPU"
    artifacts = {artifact.path for artifact in client.list_artifacts(original.training.run_id)}
    assert {"config.json", "lineage"} <= artifacts
    version = client.get_model_version(original.model, str(original.training.version))
    for key in ("code_digest", "image", "package_lock_digest", "data_digest"):
        assert version.tags[key] == tags[key], key
    assert "**Lineage**" in (version.description or "")
    assert f"image: `{TRAINER_IMAGE}`" in (version.description or "")


def test_reproduce_from_a_run_gives_the_same_test_accuracy(client: MlflowClient, original: Original) -> None:
    _reproduce(client, original, f"runs:/{original.training.run_id}")


def test_reproduce_from_the_champion_alias(client: MlflowClient, original: Original) -> None:
    _reproduce(client, original, f"models:/{original.model}@champion")


def test_other_data_is_refused_with_exit_2_and_no_run(client: MlflowClient, original: Original, tmp_path: Path) -> None:
    with np.load(mnist_npz()) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays["y_train"] = arrays["y_train"].copy()
    arrays["y_train"][0] = (arrays["y_train"][0] + 1) % 10  # one label changed: other data
    np.savez(tmp_path / "other.npz", **arrays)
    tmp_path.chmod(0o755)
    (tmp_path / "other.npz").chmod(0o644)
    experiment = client.get_experiment_by_name(original.experiment)
    assert experiment is not None
    runs_before = len(client.search_runs([experiment.experiment_id]))
    result = compose(
        "run", "--rm", "-T", "-v", f"{tmp_path}:/other:ro", "trainer", "reproduce",
        f"models:/{original.model}/{original.training.version}", "--data", "/other/other.npz", check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout[-1000:] + result.stderr[-1000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("trainer:")]
    assert len(errors) == 1 and "differs from the original's" in errors[0] and "nothing was logged" in errors[0]
    assert len(client.search_runs([experiment.experiment_id])) == runs_before


def test_lineage_names_every_link(client: MlflowClient, original: Original) -> None:
    uri = f"models:/{original.model}/{original.training.version}"
    result = compose("run", "--rm", "-T", "trainer", "lineage", uri)
    rows = dict(line.split("  ", 1) for line in result.stdout.strip().splitlines())
    chain = {label.strip(): value.strip() for label, value in rows.items()}
    assert list(chain) == [
        "version", "run", "config", "data digest", "code digest", "image", "package lock", "determinism"
    ]  # fmt: skip
    tags = client.get_run(original.training.run_id).data.tags
    assert chain["version"].startswith(uri)
    assert chain["run"].startswith(original.training.run_id)
    assert chain["config"].startswith("config.json: ") and "epochs=1" in chain["config"]
    assert chain["data digest"].startswith(tags["data_digest"])
    assert chain["code digest"].startswith(tags["code_digest"]) and "(image build)" in chain["code digest"]
    if tags.get("git_sha"):
        assert f"git {tags['git_sha']}" in chain["code digest"]
    assert chain["image"] == TRAINER_IMAGE
    assert chain["package lock"].startswith("lineage/packages.lock.txt: ")
    assert chain["package lock"].endswith(tags["package_lock_digest"])
