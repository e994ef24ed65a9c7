"""Faults survived: backends restarted under a running trainer, the whole stack restarted, the server absent.

This module restarts services; it runs after the others that share the session's trained model.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

from tests.stack.conftest import (
    NPZ_IN_CONTAINER,
    REPO,
    STACK_URL,
    TrainerProcess,
    compose,
    mnist_npz,
    object_store,
    parse_training,
    registry_snapshot,
    trainer_argv,
)
from tests.support.waiting import wait_until

# Restarts services or replaces the stack's data: after every other test (tests/stack/conftest.py).
pytestmark = pytest.mark.disruptive(order=2)

EPOCHS = 4
# Small enough for seconds per epoch, large enough that a restart lands mid-training.
TRAIN_SAMPLES = "12000"


def _finished(trainer: subprocess.Popen[str], output: str, result_file: Path | None) -> TrainerProcess:
    process = TrainerProcess(trainer.args, trainer.returncode, output, "")
    process.result_file = result_file
    return process


def _start_trainer(experiment: str, model: str) -> tuple[subprocess.Popen[str], Path | None]:
    argv, result_file = trainer_argv(
        "--epochs", str(EPOCHS), "--max-train-samples", TRAIN_SAMPLES, "--min-accuracy", "0.5",
        "--experiment-name", experiment, "--registered-model-name", model, "--run-name", "under-fire",
    )  # fmt: skip
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), result_file


def _wait_for_first_epoch(client: MlflowClient, experiment: str, trainer: subprocess.Popen[str]) -> str:
    def run_with_an_epoch() -> str | None:
        assert trainer.poll() is None, trainer.stdout.read() if trainer.stdout else ""
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            for run in client.search_runs([found.experiment_id]):
                if client.get_metric_history(run.info.run_id, "val_accuracy"):
                    return str(run.info.run_id)
        return None

    return wait_until(run_with_an_epoch, 300, "the trainer logged no epoch within 300 s", interval=1)


def _survives(client: MlflowClient, restart: Callable[[], object]) -> None:
    suffix = uuid.uuid4().hex[:8]
    experiment, model = f"fault-{suffix}", f"mnist-fault-{suffix}"
    trainer, result_file = _start_trainer(experiment, model)
    run_id = _wait_for_first_epoch(client, experiment, trainer)
    restart()
    output, _ = trainer.communicate(timeout=900)
    assert trainer.returncode == 0, output[-3000:]
    training = parse_training(_finished(trainer, output, result_file))
    assert training.run_id == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for metric in ("train_loss", "val_loss", "val_accuracy", "epoch_seconds"):
        steps = sorted({point.step for point in client.get_metric_history(run_id, metric)})
        assert steps == list(range(1, EPOCHS + 1)), (metric, steps)
    assert "test_accuracy" in run.data.metrics
    assert client.get_model_version(model, str(training.version)).run_id == run_id


def test_a_tracking_server_restart_mid_training_loses_nothing(client: MlflowClient) -> None:
    _survives(client, lambda: compose("restart", "tracking-server"))


def test_a_postgres_restart_mid_training_loses_nothing(client: MlflowClient) -> None:
    _survives(client, lambda: compose("restart", "postgres"))


def test_eight_trainers_at_once_lose_nothing(client: MlflowClient) -> None:
    suffix = uuid.uuid4().hex[:8]
    experiment, model = f"crowd-{suffix}", f"mnist-crowd-{suffix}"

    def crowd_member(seed: int) -> tuple[subprocess.Popen[str], Path | None]:
        argv, result_file = trainer_argv(
            "--epochs", "1", "--max-train-samples", "2000", "--seed", str(seed), "--min-accuracy", "0.5",
            "--experiment-name", experiment, "--registered-model-name", model, "--run-name", f"crowd-{seed}",
        )  # fmt: skip
        popen = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return popen, result_file

    trainers = [crowd_member(seed) for seed in range(8)]
    outputs = [trainer.communicate(timeout=900)[0] for trainer, _ in trainers]
    failures = [out[-2500:] for (trainer, _), out in zip(trainers, outputs, strict=True) if trainer.returncode != 0]
    assert not failures, failures
    trainings = [
        parse_training(_finished(trainer, out, result_file))
        for (trainer, result_file), out in zip(trainers, outputs, strict=True)
    ]
    assert sorted(t.version for t in trainings) == list(range(1, 9))
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 8
    assert all(run.info.status == "FINISHED" for run in runs)
    best = max(run.data.metrics["test_accuracy"] for run in runs)
    champion = client.get_model_version_by_alias(model, "champion")
    # Compared by value: two seeds can tie on 10,000 test images, and a tie does not move the alias.
    assert client.get_run(champion.run_id or "").data.metrics["test_accuracy"] == best


def test_a_missing_tracking_server_is_one_line_and_exit_1_within_the_preflight_timeout() -> None:
    compose("stop", "tracking-server")
    try:
        started = time.monotonic()
        result = compose(
            "run", "--rm", "-T", "--no-deps", "-e", "TRAINER_PREFLIGHT_TIMEOUT=10", "trainer", "--epochs", "1",
            "--data", "/nonexistent-is-checked-first.npz", check=False,
        )  # fmt: skip
        assert result.returncode == 2  # bad input is reported before the server is even looked for
        result = compose(
            "run", "--rm", "-T", "--no-deps", "-e", "TRAINER_PREFLIGHT_TIMEOUT=10",
            "-v", f"{mnist_npz()}:{NPZ_IN_CONTAINER}:ro", "trainer", "--data", NPZ_IN_CONTAINER,
            check=False,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        assert result.returncode == 1, result.stderr[-2000:]
        errors = [line for line in result.stderr.splitlines() if line.startswith("trainer: error")]
        assert errors == [
            "trainer: error: tracking server at http://tracking-server:5000 did not answer within 10 s (ConnectionError)"
        ], result.stderr[-2000:]
        assert elapsed < 90, elapsed
    finally:
        compose("up", "-d", "--wait", "tracking-server", "gateway")


# The gateway's healthcheck asks its loopback-only `ready` frontend (gateway/haproxy.cfg); the status line only.
GATEWAY_READY = "exec 3<>/dev/tcp/127.0.0.1/8405 && printf 'GET /ready HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3"


def _gateway_ready_status() -> int:
    line = compose("exec", "-T", "gateway", "bash", "-c", GATEWAY_READY).stdout.split()
    return int(line[1])


def test_the_gateway_is_healthy_only_with_a_tracking_server_in_service() -> None:
    assert _gateway_ready_status() == 200
    compose("stop", "tracking-server")
    try:
        # Out of service after two failed probes of a second each.
        wait_until(lambda: _gateway_ready_status() == 503, 30, "the gateway still reports a server in service")
    finally:
        compose("up", "-d", "--wait", "tracking-server", "gateway")
    # `up --wait` returned only once the gateway had a server in service: the first request passes at once.
    assert requests.get(f"{STACK_URL}/health", timeout=10).status_code == 200


def test_an_object_store_outage_keeps_the_model_and_upload_finishes_the_run(client: MlflowClient) -> None:
    suffix = uuid.uuid4().hex[:8]
    experiment, model = f"outage-{suffix}", f"mnist-outage-{suffix}"
    compose("stop", object_store())
    try:
        result = compose(
            # One retry instead of seven: the outage is certain here, the test need not wait out the backoff.
            # --no-deps: `run` would otherwise run tracking-server-prepare again, and start MinIO for it.
            "run", "--rm", "-T", "--no-deps", "-e", "MLFLOW_HTTP_REQUEST_MAX_RETRIES=1",
            "-v", f"{mnist_npz()}:{NPZ_IN_CONTAINER}:ro", "trainer", "--data", NPZ_IN_CONTAINER,
            "--epochs", "1", "--max-train-samples", "3000", "--min-accuracy", "0.5",
            "--experiment-name", experiment, "--registered-model-name", model,
            check=False,
        )  # fmt: skip
    finally:
        compose("start", object_store())
        compose("up", "-d", "--wait", "--wait-timeout", "180")
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("trainer: error")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "the model could not be stored" in errors[0]
    kept = errors[0].rsplit("trainer upload ", 1)[1].strip()
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    (run,) = client.search_runs([found.experiment_id])
    assert run.info.status == "FAILED"  # not left RUNNING
    assert kept.endswith(run.info.run_id)

    upload = compose(
        "run", "--rm", "-T", "trainer", "upload", kept, "--registered-model-name", model, "--min-accuracy", "0.5"
    )  # fmt: skip
    assert f"registered {model} version 1" in upload.stdout
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert client.get_model_version(model, "1").run_id == run.info.run_id
    # The run's lineage files waited with the model and went up with it.
    stored = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "lineage"} <= stored, stored
    # The kept copy is gone once the server holds the model: nothing is uploaded twice.
    again = compose("run", "--rm", "-T", "trainer", "upload", kept, check=False)
    assert again.returncode == 2


def test_an_object_store_restart_keeps_the_bucket_artifacts_and_models(client: MlflowClient) -> None:
    import mlflow

    suffix = uuid.uuid4().hex[:8]
    run = client.create_run(client.create_experiment(f"survives-{suffix}"))
    content = os.urandom(10 * 2**20).hex()  # 20 MiB: more than one part (16 MiB), a multipart upload
    client.log_text(run.info.run_id, content, "model/weights.hex")
    model = f"survives-{suffix}"
    client.create_registered_model(model)
    version = client.create_model_version(model, f"runs:/{run.info.run_id}/model", run.info.run_id).version
    compose("restart", object_store())
    mlflow.set_tracking_uri(client.tracking_uri)
    for uri in (f"runs:/{run.info.run_id}/model", f"models:/{model}/{version}"):
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri)
        assert Path(path, "weights.hex").read_text() == content, uri
    client.log_text(run.info.run_id, "after", "after.txt")  # the bucket is still there: new files go in


# What the down/up test below stored before `down`, for the artifacts test after it: (model URI, content).
KEPT_ACROSS_DOWN_AND_UP: list[tuple[str, str]] = []


def test_down_and_up_keeps_runs_metrics_versions_and_aliases(client: MlflowClient) -> None:
    # A file and a registered version of our own, so the artifacts test below has something to read back on any
    # stack (the SeaweedFS stage of scripts/test.sh trains nothing before it).
    suffix = uuid.uuid4().hex[:8]
    run = client.create_run(client.create_experiment(f"down-and-up-{suffix}"))
    content = os.urandom(10 * 2**20).hex()  # 20 MiB: a multipart upload
    client.log_text(run.info.run_id, content, "model/weights.hex")
    model = f"down-and-up-{suffix}"
    client.create_registered_model(model)
    version = client.create_model_version(model, f"runs:/{run.info.run_id}/model", run.info.run_id).version
    KEPT_ACROSS_DOWN_AND_UP.append((f"models:/{model}/{version}", content))
    before = registry_snapshot(client)
    assert before["runs"]
    assert before["aliases"]
    compose("down")  # keeps the volumes
    compose("up", "-d", "--wait", "--wait-timeout", "180")
    assert registry_snapshot(client) == before


def test_down_and_up_keeps_the_artifacts(client: MlflowClient) -> None:
    assert KEPT_ACROSS_DOWN_AND_UP, "runs after the down/up test above, which stores the file"
    import mlflow

    mlflow.set_tracking_uri(client.tracking_uri)
    for uri, content in KEPT_ACROSS_DOWN_AND_UP:
        path = mlflow.artifacts.download_artifacts(artifact_uri=uri)
        assert Path(path, "weights.hex").read_text() == content, uri
