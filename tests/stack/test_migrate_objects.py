"""`make migrate-objects TARGET=seaweedfs`: a stack on MinIO, filled, moved to SeaweedFS; every artifact reads
back byte for byte, the registry is unchanged and the champion predicts the same digits.

On a fresh copy of the repository (tests/stack/fresh_stack.py: its own project, ports and .env), since the
migration rewrites .env and switches the stack; the session's stack is left alone.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from tests.stack.conftest import mnist_npz, parse_training, registry_snapshot, seaweedfs_standin_overlay
from tests.stack.fresh_stack import FreshStack, copy_repository


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[FreshStack]:
    project = os.environ.get("COMPOSE_PROJECT_NAME", "mlflow-stack") + "-migrate"
    stack = FreshStack(copy_repository(tmp_path / "repo"), project)
    try:
        yield stack
    finally:
        stack.compose(
            "--profile", "minio", "--profile", "train", "down", "-v", "--remove-orphans", "--timeout", "5", check=False
        )


def hashes(local: Path) -> dict[str, str]:
    return {
        str(path.relative_to(local)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(local.rglob("*"))
        if path.is_file()
    }


def artifact_hashes(url: str, run_id: str, model_uri: str, folder: Path) -> dict[str, str]:
    """SHA-256 of every file of the run and of the registered model (a logged model of its own in MLflow 3),
    downloaded through the tracking server."""
    import mlflow

    mlflow.set_tracking_uri(url)
    run_files = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(folder / "run")))
    model_files = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(folder / "model")))
    return {
        **{f"run/{k}": v for k, v in hashes(run_files).items()},
        **{f"model/{k}": v for k, v in hashes(model_files).items()},
    }


def champion_predictions(url: str, model: str) -> np.ndarray:
    import mlflow

    mlflow.set_tracking_uri(url)
    champion = mlflow.pyfunc.load_model(f"models:/{model}@champion")
    with np.load(mnist_npz()) as archive:
        images = archive["x_test"][:300]
    return np.asarray(champion.predict((images.astype(np.float32) / 255.0)[..., np.newaxis]))


def test_migrating_from_minio_to_seaweedfs_keeps_every_artifact_and_model(fresh: FreshStack, tmp_path: Path) -> None:
    fresh.compose("up", "-d", "--wait", "--wait-timeout", "300")
    assert "minio" in fresh.compose("ps", "--services", "--status", "running").stdout.split()
    model = f"mnist-migrate-{uuid.uuid4().hex[:8]}"
    training = parse_training(fresh.train("--registered-model-name", model, "--run-name", "migrated"))
    client = MlflowClient(fresh.url)
    before_registry = registry_snapshot(client)
    model_uri = f"models:/{model}/{training.version}"
    before_files = artifact_hashes(fresh.url, training.run_id, model_uri, tmp_path / "before")
    before_predictions = champion_predictions(fresh.url, model)
    assert "model/MLmodel" in before_files and "run/evaluation/confusion_matrix.png" in before_files, before_files

    # CI's stand-in healthcheck for the migration's own `up --wait`s (scripts/migrate-objects.sh); not kept in .env.
    standin = {
        "MIGRATE_EXTRA_COMPOSE_FILES": os.environ.get("MIGRATE_EXTRA_COMPOSE_FILES") or seaweedfs_standin_overlay()
    }
    migrated = fresh.run("scripts/migrate-objects.sh", "seaweedfs", timeout=900, extra=standin)
    assert migrated.returncode == 0, migrated.stdout[-3000:] + migrated.stderr[-3000:]
    output = migrated.stdout + migrated.stderr
    assert "every SHA-256 read back equal" in output, output[-3000:]
    assert "the stack now runs on SeaweedFS" in output, output[-3000:]

    # Switched: .env names SeaweedFS's compose file, MinIO is stopped, the server's endpoint is SeaweedFS.
    assert "docker-compose.seaweedfs.yml" in (fresh.directory / ".env").read_text()
    running = fresh.compose("ps", "--services", "--status", "running").stdout.split()
    assert "seaweedfs" in running and "minio" not in running, running
    endpoint = fresh.compose("exec", "-T", "tracking-server", "printenv", "MLFLOW_S3_ENDPOINT_URL").stdout.strip()
    assert endpoint == "http://seaweedfs:8333"

    assert registry_snapshot(client) == before_registry
    assert artifact_hashes(fresh.url, training.run_id, model_uri, tmp_path / "after") == before_files
    np.testing.assert_array_equal(champion_predictions(fresh.url, model), before_predictions)

    # A second migration is refused in one line: the stack is already there.
    again = fresh.run("scripts/migrate-objects.sh", "seaweedfs", timeout=120, extra=standin)
    assert again.returncode == 2
    assert "already runs on SeaweedFS" in again.stderr


def test_bucket_copy_refuses_bad_arguments_in_one_line(tmp_path: Path) -> None:
    from tests.stack.conftest import compose

    bad_url = compose("exec", "-T", "tracking-server", "bucket-copy", "--to", "seaweedfs:8333", check=False)
    assert bad_url.returncode == 2
    assert bad_url.stderr.strip() == "bucket-copy: error: --to must be an http:// or https:// URL, not 'seaweedfs:8333'"
    no_file = compose(
        "exec", "-T", "tracking-server", "bucket-copy", "--to", "http://example.invalid:9000", "--credentials", "/nonexistent",
        check=False,
    )  # fmt: skip
    assert no_file.returncode == 2
    assert no_file.stderr.strip().startswith("bucket-copy: error: cannot read the credentials file /nonexistent")
