"""The whole trainer against a local SQLite store: what `pip install ./trainer` users get without a server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.trainer.conftest import write_npz
from tests.unit.trainer.test_cli import run_trainer


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_a_local_run_logs_everything_and_registers_versions(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    npz = write_npz(tmp_path / "m.npz", train=400, test=100)
    args = [
        "--data",
        str(npz),
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--run-name",
        "local",
        "--experiment-name",
        "unit",
        "--min-accuracy",
        "0.5",
    ]
    first = run_trainer(args, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "registered mnist version 1" in first.stdout

    client = MlflowClient(
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", registry_uri=f"sqlite:///{tmp_path}/mlflow.db"
    )
    experiment = client.get_experiment_by_name("unit")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "local"
    assert {"epochs": "2", "batch_size": "32", "seed": "42", "train_samples": "360"}.items() <= run.data.params.items()
    for metric in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert [point.step for point in history] == [1, 2], metric
    assert run.data.metrics["test_accuracy"] > 0.5  # patterned digits are easy; chance is 0.1
    assert run.data.tags["devices"] == "CPU"
    assert run.inputs is not None
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "mnist"

    version = client.get_model_version("mnist", "1")
    assert version.run_id == run.info.run_id
    assert "| test_accuracy |" in (version.description or "")
    assert version.tags["data_digest"] == dataset_input.dataset.digest
    assert client.get_registered_model("mnist").description.startswith("Handwritten-digit classifier")
    assert version.tags["validation_status"] == "passed"
    assert str(client.get_model_version_by_alias("mnist", "champion").version) == "1"
    assert "version 1 is @champion: first version with a champion" in first.stdout
    pictures = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "evaluation")}
    assert pictures == {"evaluation/confusion_matrix.png", "evaluation/misclassified.png"}

    # One epoch on the same data cannot beat two: the new version must not take the champion alias.
    second = run_trainer([*args, "--epochs", "1"], tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert client.get_model_version("mnist", "2").run_id != run.info.run_id
    assert str(client.get_model_version_by_alias("mnist", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("mnist", "challenger").version) == "2"

    table = run_trainer(["models"], tmp_path)
    assert table.returncode == 0, table.stderr
    assert [line.split()[:2] for line in table.stdout.splitlines()[1:3]] == [["2", "challenger"], ["1", "champion"]]
