from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest

from mnist_trainer import tracking
from mnist_trainer.config import Settings


@pytest.mark.parametrize(
    "uri", ["http://tracking-server:5000", "https://mlflow.example.com", "sqlite:///mlflow.db", "./mlruns"]
)
def test_tracking_uris_that_are_accepted(uri: str) -> None:
    tracking.check_tracking_uri(uri)


@pytest.mark.parametrize("uri", ["ftp://host/x", "tracking-server:5000", "localhost"])
def test_tracking_uris_that_are_refused(uri: str) -> None:
    with pytest.raises(ValueError, match="is not a tracking URI"):
        tracking.check_tracking_uri(uri)


@contextlib.contextmanager
def _server_answering(status: int, body: bytes, requests_seen: list[str] | None = None) -> Iterator[str]:
    """A local HTTP server that answers every GET with this status and body; yields its URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if requests_seen is not None:
                requests_seen.append(self.path)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


@pytest.fixture
def forbidding_server() -> Iterator[str]:
    """Answers like MLflow does to a Host header it does not allow."""
    with _server_answering(403, b"Invalid Host header - possible DNS rebinding attack detected") as url:
        yield url


def test_a_server_that_is_not_ready_is_asked_again_until_the_timeout() -> None:
    seen: list[str] = []
    with _server_answering(503, b"starting", seen) as url, pytest.raises(tracking.TrackingError) as raised:
        tracking.wait_for_server(Settings(tracking_uri=url, preflight_timeout=2))
    assert str(raised.value) == f"tracking server at {url} did not answer within 2 s (HTTP 503)"
    # Pauses of 0.5 s and 1 s fit in 2 s (three requests when they answer at once); a pause past it is not taken.
    assert 2 <= len(seen) <= 3 and seen[0].startswith("/api/2.0/mlflow/experiments/search")


def test_a_server_that_refuses_the_trainer_is_reported_at_once(forbidding_server: str) -> None:
    with pytest.raises(tracking.TrackingError, match=r"refused the trainer \(HTTP 403: Invalid Host header"):
        tracking.wait_for_server(Settings(tracking_uri=forbidding_server, preflight_timeout=30))


def test_run_link_prefers_the_ui_url() -> None:
    settings = Settings(tracking_uri="http://tracking-server:5000", ui_url="http://localhost:5000/")
    assert (
        tracking.run_link(settings, "3", "abc")
        == "http://localhost:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )


def _fit_two_epochs_with_epoch_logger(tmp_path: Path, delete_run_first: bool) -> tuple[str, Exception | None]:
    """The run's id, and what fit raised (not what ending a deleted run raises afterwards)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from mnist_trainer import data
    from mnist_trainer.model import build_model
    from tests.unit.trainer.conftest import write_npz

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    splits = data.make_splits(
        data.load_npz(write_npz(tmp_path / "m.npz", 200, 20)), batch_size=50, seed=0, validation_fraction=0.2
    )
    # An experiment of this store, named explicitly: an earlier test may have left another one active.
    experiment_id = mlflow.MlflowClient().create_experiment("epoch-logger")
    run = mlflow.start_run(experiment_id=experiment_id)
    fit_error: Exception | None = None
    try:
        if delete_run_first:
            mlflow.MlflowClient().delete_run(run.info.run_id)
        try:
            build_model(1e-3, 0).fit(
                splits.train,
                validation_data=splits.validation,
                epochs=2,
                callbacks=[tracking.epoch_logger(2)],
                verbose=0,
            )
        except MlflowException as error:
            fit_error = error
    finally:
        with contextlib.suppress(MlflowException):  # ending a deleted run raises too
            mlflow.end_run()
    return run.info.run_id, fit_error


@pytest.mark.slow
def test_epoch_metrics_are_all_stored_when_training_ends(tmp_path: Path) -> None:
    import mlflow

    run_id, fit_error = _fit_two_epochs_with_epoch_logger(tmp_path, delete_run_first=False)
    assert fit_error is None
    history = mlflow.MlflowClient().get_metric_history(run_id, "val_accuracy")
    assert sorted(point.step for point in history) == [1, 2]
    assert {"train_loss", "epoch_seconds"} <= set(mlflow.get_run(run_id).data.metrics)


@pytest.mark.slow
def test_a_failed_asynchronous_metric_write_fails_the_training(tmp_path: Path) -> None:
    """Async logging must not swallow errors: a run that cannot take metrics fails fit at the end."""
    _, fit_error = _fit_two_epochs_with_epoch_logger(tmp_path, delete_run_first=True)
    assert fit_error is not None
    assert "must be in the 'active' state" in str(fit_error)


def test_a_data_set_inserted_by_a_concurrent_run_is_logged_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sweep children logging the same data at once: the loser of MLflow's unlocked insert tries again."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from mnist_trainer.data import Mnist

    calls: list[str] = []

    def log_input(dataset: object, context: str) -> None:
        calls.append(context)
        if len(calls) == 1:
            raise MlflowException('(psycopg2.errors.UniqueViolation) duplicate key value violates "dataset_pk"')

    monkeypatch.setattr(mlflow, "log_input", log_input)
    images, labels = np.zeros((4, 28, 28), np.uint8), np.arange(4, dtype=np.uint8)
    digest = tracking.log_dataset(Mnist(images, labels, images, labels, "/data/mnist.npz"))
    assert calls == ["training", "training"] and digest == tracking.dataset_digest(
        Mnist(images, labels, images, labels, "/data/mnist.npz")
    )

    def always_refused(dataset: object, context: str) -> None:
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: run gone")

    monkeypatch.setattr(mlflow, "log_input", always_refused)
    with pytest.raises(MlflowException, match="run gone"):
        tracking.log_dataset(Mnist(images, labels, images, labels, "/data/mnist.npz"))
