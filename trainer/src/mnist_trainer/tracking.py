"""What the trainer tells the MLflow tracking server: params, per-epoch metrics, data set, model."""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import requests
import tenacity

if TYPE_CHECKING:
    import keras
    import numpy as np
    from mlflow import MlflowClient
    from mlflow.models.model import ModelInfo

    from mnist_trainer.config import Settings
    from mnist_trainer.data import Mnist

SUPPORTED_SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "postgresql+psycopg2", "mysql", "databricks")
# The preflight's pauses between attempts: 0.5 s, doubling up to 5 s, until the timeout would be passed.
PREFLIGHT_FIRST_PAUSE_SECONDS = 0.5
PREFLIGHT_LONGEST_PAUSE_SECONDS = 5.0
# A slow answer (a busy server checking a login) still counts while the deadline allows; never less than this.
PREFLIGHT_MIN_REQUEST_SECONDS = 5.0
MODEL_ARTIFACT_NAME = "model"
INPUT_EXAMPLE_SIZE = 5
# Keras' metric names, as the UI shows them: explicit train_ prefix next to Keras' own val_ prefix.
KERAS_TO_LOGGED_METRIC = {"loss": "train_loss", "accuracy": "train_accuracy"}


# Run tag through which a sweep's parent (and `trainer reproduce`) finds the model a run logged.
MODEL_URI_TAG = "model_uri"
PARENT_RUN_TAG = "mlflow.parentRunId"
# Set on a run that retrains another one with the same config: `trainer reproduce`.
REPRODUCES_TAG = "reproduces"


@dataclass(frozen=True)
class TrainResult:
    """What a finished training run hands on to the registry (and what a sweep child writes to its result file)."""

    run_id: str
    experiment_id: str
    model_uri: str
    metrics: dict[str, float]


class ConfigError(ValueError):
    """The environment names no usable tracking server."""


class TrackingError(RuntimeError):
    """The tracking server cannot be used; the message says why in one line."""


class ModelNotStoredError(TrackingError):
    """Training finished but the model could not be stored; it was kept locally instead."""


def first_line(error: BaseException, limit: int | None = None) -> str:
    """An error's first line (MLflow's messages are long and multi-line), or its type's name when it has none."""
    message = str(error).strip()
    return message.splitlines()[0][:limit] if message else type(error).__name__


def client(uri: str) -> MlflowClient:
    """A client of the tracking server and its model registry (the same server here)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def check_tracking_uri(uri: str) -> None:
    scheme = urlparse(uri).scheme
    if scheme not in SUPPORTED_SCHEMES and not (scheme == "" and uri.startswith(("/", "."))):
        raise ConfigError(
            f"MLFLOW_TRACKING_URI={uri!r} is not a tracking URI (expected http(s)://host:port or sqlite:///file.db)"
        )


class _NotAnsweredError(Exception):
    """The server gave no usable answer yet; worth another attempt while the preflight's time lasts."""


def _auth(settings: Settings) -> tuple[str, str] | None:
    user, password = settings.tracking_username, settings.tracking_password
    return (user, password) if user and password else None


def _verify(settings: Settings) -> bool | str:
    """What requests checks the server's certificate against: what MLflow's client uses too, so the preflight
    and the run agree (MLFLOW_TRACKING_SERVER_CERT_PATH, e.g. team mode's certs/ca.crt; else the system CAs)."""
    if settings.tracking_insecure_tls:
        return False
    return str(settings.tracking_server_cert_path) if settings.tracking_server_cert_path else True


def _ask_server(settings: Settings, deadline: float) -> None:
    """One attempt: returns when the server answers a real API call, raises _NotAnsweredError when it may still come
    up, TrackingError when waiting cannot help (an untrusted certificate, a refused login)."""
    uri = settings.tracking_uri
    url = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search"
    try:
        response = requests.get(
            url,
            params={"max_results": 1},
            auth=_auth(settings),
            timeout=max(PREFLIGHT_MIN_REQUEST_SECONDS, deadline - time.monotonic()),
            verify=_verify(settings),
        )
    except requests.exceptions.SSLError as error:
        # Waiting cannot fix an untrusted certificate; MLflow would retry it for minutes.
        ca = settings.tracking_server_cert_path
        hint = f"checked against {ca}" if ca else "set MLFLOW_TRACKING_SERVER_CERT_PATH to the stack's certs/ca.crt"
        reason = "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in str(error) else "TLS handshake failed"
        raise TrackingError(f"tracking server at {uri}: {reason} ({hint})") from error
    except requests.RequestException as error:
        raise _NotAnsweredError(type(error).__name__) from error
    if response.ok:
        return
    if response.status_code in (401, 403):
        reason = response.text.strip().splitlines()[0][:120] if response.text.strip() else response.reason
        raise TrackingError(f"tracking server at {uri} refused the trainer (HTTP {response.status_code}: {reason})")
    raise _NotAnsweredError(f"HTTP {response.status_code}")


def wait_for_server(settings: Settings) -> None:
    """Fail fast and clearly when an HTTP tracking server is absent, instead of after MLflow's ~4 min of retries.

    A real API call, not /health: /health is exempt from the Host-header check and from auth, so it would
    say "fine" to a client that every later call rejects.
    """
    uri, timeout = settings.tracking_uri, settings.preflight_timeout
    if urlparse(uri).scheme not in ("http", "https"):
        return
    ca_file = settings.tracking_server_cert_path
    if ca_file and not ca_file.is_file():
        raise TrackingError(f"MLFLOW_TRACKING_SERVER_CERT_PATH={ca_file} is not a file (the stack's certs/ca.crt)")

    def give_up(state: tenacity.RetryCallState) -> None:
        last = state.outcome.exception() if state.outcome else None
        raise TrackingError(f"tracking server at {uri} did not answer within {timeout:.0f} s ({last})")

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(_NotAnsweredError),
        wait=tenacity.wait_exponential(multiplier=PREFLIGHT_FIRST_PAUSE_SECONDS, max=PREFLIGHT_LONGEST_PAUSE_SECONDS),
        # Gives up rather than pause past the timeout, like the deadline of every attempt's request.
        stop=tenacity.stop_before_delay(timeout),
        retry_error_callback=give_up,
    )
    retrying(_ask_server, settings, time.monotonic() + timeout)


# MLflow 3.17's UI opens in its GenAI view unless the URL (or the browser's saved choice) says otherwise; it
# reads no server-side setting and ignores the experiment tag mlflow.experimentKind (see the README, "The UI").
UI_WORKFLOW_QUERY = "workflowType=machine_learning"


def ui_url(settings: Settings) -> str:
    """Where a person opens the run: TRAINER_UI_URL when the server is known by another name outside Docker.

    For a local store that is wherever `mlflow ui` serves it, by default http://localhost:5000.
    """
    uri = settings.tracking_uri
    default = uri if urlparse(uri).scheme in ("http", "https") else "http://localhost:5000"
    return (settings.ui_url or default).rstrip("/")


def run_link(settings: Settings, experiment_id: str, run_id: str) -> str:
    # The query picks the UI's model-training view (its default is GenAI; see the README, "The UI").
    return f"{ui_url(settings)}/#/experiments/{experiment_id}/runs/{run_id}?{UI_WORKFLOW_QUERY}"


def visible_devices() -> list[str]:
    """'GPU:0 (NVIDIA A100...)' for each GPU TensorFlow can use, else ['CPU']."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for index, gpu in enumerate(gpus):
        details = tf.config.experimental.get_device_details(gpu)
        names.append(f"GPU:{index} ({details.get('device_name', 'unknown')})")
    return names or ["CPU"]


def environment_tags(devices: list[str]) -> dict[str, str]:
    """Devices and library versions; lineage.current_environment() adds code digest, git commit, image, lock."""
    import mlflow
    import tensorflow as tf

    return {
        "devices": ", ".join(devices),
        "tensorflow_version": tf.__version__,
        "mlflow_version": mlflow.__version__,
    }


def _dataset(data: Mnist) -> Any:
    import mlflow
    from mlflow.data.http_dataset_source import HTTPDatasetSource

    from mnist_trainer.data import TFDS_CATALOG_URL

    source: Any = HTTPDatasetSource(TFDS_CATALOG_URL) if data.source == TFDS_CATALOG_URL else data.source
    with warnings.catch_warnings():
        # MLflow registers two equivalent local-file source classes and warns that it picked one of them.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        return mlflow.data.from_numpy(  # type: ignore[attr-defined]
            data.x_train, targets=data.y_train, source=source, name="mnist"
        )


def dataset_digest(data: Mnist) -> str:
    """MLflow's digest of the training arrays, computed without logging anything (`trainer reproduce`)."""
    return str(_dataset(data).digest)


# Attempts at logging the data set when concurrent runs of one experiment insert the same one (see below),
# 0.2 s apart, then 0.4 s.
DATASET_LOG_ATTEMPTS = 3
DATASET_LOG_PAUSE_SECONDS = 0.2


def _duplicate_insert(error: BaseException) -> bool:
    return "duplicate key" in str(error) or "UniqueViolation" in str(error)


def log_dataset(data: Mnist) -> str:
    """Record the training data as a run input; returns the digest MLflow computed for it.

    MLflow's SQL store looks the data set up and inserts it if absent, without a lock: two runs of one experiment
    logging the same data at the same instant (a sweep's children, a crowd of trainers) make the second insert
    fail on the unique key. The data set then exists, so logging again only links it to this run.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    dataset = _dataset(data)
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(
            lambda error: isinstance(error, MlflowException) and _duplicate_insert(error)
        ),
        wait=tenacity.wait_incrementing(start=DATASET_LOG_PAUSE_SECONDS, increment=DATASET_LOG_PAUSE_SECONDS),
        stop=tenacity.stop_after_attempt(DATASET_LOG_ATTEMPTS),
        reraise=True,
    )
    retrying(mlflow.log_input, dataset, context="training")
    return str(dataset.digest)


def quiet_progress_bars_off_a_terminal() -> None:
    """Keras draws progress bars with terminal escape codes even into a pipe or a log file (and MLflow's
    input-example check calls `predict` with them on): off a terminal, Keras prints nothing at all."""
    if not sys.stdout.isatty():
        import keras

        keras.config.disable_interactive_logging()


def epoch_logger(epochs: int) -> keras.callbacks.Callback:
    """A Keras callback logging every epoch's metrics in one batched call, at step = epoch number (1-based).

    It also prints one plain line per epoch (Keras' own progress output stays off: see above).

    The calls are asynchronous: the next epoch starts while MLflow's queue sends them (and retries them
    through a server restart); the end of training waits for all of them and raises if any failed.
    """
    import keras
    import mlflow

    class EpochMetricsLogger(keras.callbacks.Callback):
        def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
            self._pending: list[Any] = []

        def on_epoch_begin(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            self._started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            metrics = {KERAS_TO_LOGGED_METRIC.get(key, key): float(value) for key, value in (logs or {}).items()}
            metrics["epoch_seconds"] = time.perf_counter() - self._started
            self._pending.append(mlflow.log_metrics(metrics, step=epoch + 1, synchronous=False))
            shown = " - ".join(f"{key} {value:.4f}" for key, value in metrics.items() if key != "epoch_seconds")
            print(f"trainer: epoch {epoch + 1}/{epochs} - {metrics['epoch_seconds']:.0f} s - {shown}", flush=True)

        def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
            pending, self._pending = self._pending, []
            for operations in pending:
                operations.wait()

    return EpochMetricsLogger()


def log_model(model: keras.Model, example_images: np.ndarray) -> ModelInfo:
    """Log with the tensorflow flavor: mlflow.keras.log_model crashes with an input_example (mlflow#16183)."""
    import mlflow
    import numpy
    from mlflow.models import infer_signature

    quiet_progress_bars_off_a_terminal()
    example = example_images[:INPUT_EXAMPLE_SIZE]
    signature = infer_signature(example, model.predict(example, verbose=0))
    # The requirements stated, not inferred: inferring them starts a second Python that imports TensorFlow and
    # loads the model only to list its imports (~8 s a model on 2 cores). It finds these two pins, mlflow's
    # (which MLflow adds itself), cloudpickle (a dependency of mlflow's) and, on a CPU-only build,
    # tensorflow-cpu, which no GPU host should install. The run's whole package lock is in its lineage.
    return mlflow.tensorflow.log_model(
        model,
        name=MODEL_ARTIFACT_NAME,
        signature=signature,
        input_example=example,
        pip_requirements=[*mlflow.tensorflow.get_default_pip_requirements(), f"numpy=={numpy.__version__}"],
    )
