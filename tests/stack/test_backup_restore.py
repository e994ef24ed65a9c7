"""Backup, wipe, restore: runs, versions, aliases and artifacts come back, and the champion still predicts."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from tests.stack.conftest import (
    REPO,
    STACK_URL,
    compose,
    mnist_npz,
    parse_training,
    registry_snapshot,
    run_trainer,
)

# Restarts services or replaces the stack's data: after every other test (tests/stack/conftest.py).
pytestmark = pytest.mark.disruptive(order=3)


def test_backup_wipe_restore_brings_everything_back(client: MlflowClient, tmp_path: Path) -> None:
    import mlflow

    model = f"mnist-backup-{uuid.uuid4().hex[:8]}"
    trained = run_trainer(
        "--epochs", "1", "--batch-size", "64", "--max-train-samples", "6000", "--min-accuracy", "0.5",
        "--registered-model-name", model, "--run-name", "backed-up",
    )  # fmt: skip
    training = parse_training(trained)
    before = registry_snapshot(client)
    assert (model, "champion", str(training.version)) in before["aliases"]

    backup_dir = tmp_path / "backup"
    backup = subprocess.run(
        ["scripts/backup.sh", str(backup_dir)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert backup.returncode == 0, backup.stderr[-2000:]
    assert (backup_dir / "postgres.dump").stat().st_size > 10_000
    assert (backup_dir / "artifacts.tar").stat().st_size > 10_000

    compose("down", "-v")  # every volume gone: an empty stack
    compose("up", "-d", "--wait", "--wait-timeout", "180")
    assert client.search_registered_models(filter_string=f"name = '{model}'") == []

    restore = subprocess.run(
        ["scripts/restore.sh", str(backup_dir)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert restore.returncode == 0, restore.stderr[-2000:]
    assert registry_snapshot(client) == before

    mlflow.set_tracking_uri(STACK_URL)
    champion = mlflow.pyfunc.load_model(f"models:/{model}@champion")
    with np.load(mnist_npz()) as archive:
        images, labels = archive["x_test"][:500], archive["y_test"][:500]
    predictions = np.asarray(champion.predict((images.astype(np.float32) / 255.0)[..., np.newaxis])).argmax(axis=1)
    # A seeded 6000-image subset: about 0.91 on test; an untrained or wrong model would be near 0.1.
    assert float((predictions == labels).mean()) >= 0.85


def test_restore_refuses_an_incomplete_backup(tmp_path: Path) -> None:
    (tmp_path / "postgres.dump").write_bytes(b"x" * 100)
    result = subprocess.run(["scripts/restore.sh", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "artifacts.tar is missing or empty" in result.stderr
