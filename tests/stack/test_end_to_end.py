"""The product's promise, checked over HTTP against the running stack: train, track, store, register, load."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow import MlflowClient

from tests.stack.conftest import (
    MLFLOW_PORT,
    STACK_URL,
    Names,
    Training,
    mnist_npz,
    parse_training,
    run_trainer,
    s3_keys,
)

S3_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
EXPECTED_PARAMS = {
    "epochs",
    "batch_size",
    "learning_rate",
    "seed",
    "validation_fraction",
    "train_samples",
    "validation_samples",
    "test_samples",
    "optimizer",
}


def test_the_run_has_every_param_and_one_point_per_epoch(
    client: MlflowClient, first_training: Training, epochs: int
) -> None:
    run = client.get_run(first_training.run_id)
    assert run.info.status == "FINISHED"
    assert set(run.data.params) >= EXPECTED_PARAMS
    assert run.data.params["epochs"] == str(epochs)
    assert run.data.params["batch_size"] == "64"
    assert run.data.params["train_samples"] == "54000"
    for metric in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "epoch_seconds"):
        steps = [point.step for point in client.get_metric_history(run.info.run_id, metric)]
        assert steps == list(range(1, epochs + 1)), metric
    assert run.data.tags["devices"] == "CPU"
    assert run.data.tags["tensorflow_version"] == "2.21.0"
    assert run.data.tags["mlflow_version"] == "3.17.2"


def test_test_accuracy_on_real_mnist_is_at_least_97_percent(client: MlflowClient, first_training: Training) -> None:
    metrics = client.get_run(first_training.run_id).data.metrics
    assert metrics["test_accuracy"] >= 0.97, metrics
    assert metrics["test_loss"] < 0.15, metrics


def test_the_model_files_are_in_the_bucket(client: MlflowClient, first_training: Training, names: Names) -> None:
    version = client.get_model_version(names.model, str(first_training.version))
    model_id = (version.source or "").rsplit("/", 1)[-1]
    assert model_id.startswith("m-"), version.source
    keys = s3_keys(model_id)
    assert any(key.endswith("/MLmodel") for key in keys), keys
    assert any(key.endswith(".keras") or "/data/" in key for key in keys), keys


def test_the_version_is_described_and_tagged(client: MlflowClient, first_training: Training, names: Names) -> None:
    version = client.get_model_version(names.model, str(first_training.version))
    run = client.get_run(first_training.run_id)
    assert version.run_id == first_training.run_id
    description = version.description or ""
    assert f"| test_accuracy | {run.data.metrics['test_accuracy']:.4f} |" in description
    assert "| batch_size | 64 |" in description
    assert (
        f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning)" in description
    )
    assert description.count(f"http://localhost:{MLFLOW_PORT}/") == 1
    assert version.tags["test_accuracy"] == f"{run.data.metrics['test_accuracy']:.4f}"
    assert len(version.tags["data_digest"]) >= 8
    assert "models:/" in (client.get_registered_model(names.model).description or "")


def test_the_registered_version_loads_and_reproduces_its_accuracy(
    client: MlflowClient, first_training: Training, names: Names, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    for name in S3_CREDENTIAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    mlflow.set_tracking_uri(STACK_URL)
    model = mlflow.pyfunc.load_model(f"models:/{names.model}/{first_training.version}")
    with np.load(mnist_npz()) as archive:
        images, labels = archive["x_test"], archive["y_test"]
    probabilities = np.asarray(model.predict((images.astype(np.float32) / 255.0)[..., np.newaxis]))
    assert probabilities.shape == (10000, 10)
    accuracy = float((probabilities.argmax(axis=1) == labels).mean())
    logged = client.get_run(first_training.run_id).data.metrics["test_accuracy"]
    assert abs(accuracy - logged) <= 0.005, (accuracy, logged)


def test_a_second_run_makes_the_next_version(client: MlflowClient, first_training: Training, names: Names) -> None:
    second = parse_training(
        run_trainer(
            "--epochs",
            "1",
            "--max-train-samples",
            "3000",
            "--run-name",
            "stack-second",
            "--experiment-name",
            names.experiment,
            "--registered-model-name",
            names.model,
        )
    )
    assert second.version == first_training.version + 1
    assert second.run_id != first_training.run_id
    assert client.get_model_version(names.model, str(second.version)).run_id == second.run_id


def test_a_plain_client_on_the_host_lists_runs_and_downloads_a_model_without_s3_credentials(
    first_training: Training, names: Names, tmp_path: Path
) -> None:
    script = f"""
import mlflow, os
mlflow.set_tracking_uri({STACK_URL!r})
runs = mlflow.search_runs(experiment_names=[{names.experiment!r}], output_format="list")
print("runs", len(runs))
path = mlflow.artifacts.download_artifacts(artifact_uri="models:/{names.model}/{first_training.version}", dst_path={str(tmp_path)!r})
print("MLmodel", os.path.isfile(os.path.join(path, "MLmodel")))
"""
    clean_env = {key: value for key, value in os.environ.items() if key not in S3_CREDENTIAL_VARIABLES}
    clean_env["AWS_SHARED_CREDENTIALS_FILE"] = clean_env["AWS_CONFIG_FILE"] = "/nonexistent"
    result = subprocess.run([sys.executable, "-c", script], env=clean_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MLmodel True" in result.stdout
    assert int(result.stdout.split("runs ")[1].split()[0]) >= 1


def test_the_ui_is_served_and_foreign_host_headers_are_refused() -> None:
    page = requests.get(STACK_URL + "/", timeout=10)
    assert page.status_code == 200
    assert "<title>MLflow</title>" in page.text or "mlflow" in page.text.lower()
    api = STACK_URL + "/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(api, timeout=10).status_code == 200
    # DNS-rebinding guard: a name the stack does not serve is refused.
    assert requests.get(api, headers={"Host": "attacker.example:5000"}, timeout=10).status_code == 403


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--epochs", "0"], "--epochs: must be at least 1"), (["--data", "/nope.npz"], "/nope.npz: no such file")],
)
def test_bad_input_in_the_container_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    from tests.stack.conftest import compose

    result = compose("run", "--rm", "-T", "trainer", *args, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("trainer:")]
    assert len(lines) == 1 and message in lines[0], result.stderr[-2000:]


def test_clients_are_never_sent_to_the_internal_object_store() -> None:
    # MLflow 3.17 would advertise direct S3 transfers, whose presigned URLs name http://minio:9000.
    info = requests.get(STACK_URL + "/api/3.0/mlflow/server-info", timeout=10).json()
    assert info["multipart_downloads_enabled"] is False
    assert info["multipart_uploads_enabled"] is False
    presigned = requests.get(STACK_URL + "/api/2.0/mlflow-artifacts/presigned/1/models/x/MLmodel", timeout=10)
    assert presigned.status_code == 501
    assert "proxies all artifact transfers" in presigned.json()["message"]
