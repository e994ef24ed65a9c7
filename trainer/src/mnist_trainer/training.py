"""One training run, end to end: fit, evaluate, log everything and its lineage. The registry is registry.py's."""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mnist_trainer import accelerate, lineage, plots, tracking
from mnist_trainer import data as mnist_data
from mnist_trainer.config import CONFIG_ARTIFACT, RunConfig, Settings, TrackingConfig, TrainConfig
from mnist_trainer.tracking import MODEL_URI_TAG, PARENT_RUN_TAG, TrainResult

if TYPE_CHECKING:
    from mlflow import ActiveRun
    from mlflow.models.model import ModelInfo


@dataclass(frozen=True)
class PendingRun:
    """A trained run whose model is still to be stored: run.json of a model kept during a storage outage."""

    run_id: str
    experiment_id: str
    metrics: dict[str, float]
    files: dict[str, str]  # artifact path -> text: config.json and the package lock


def train_and_track(
    config: RunConfig, dataset: mnist_data.Mnist, settings: Settings, extra_tags: Mapping[str, str] | None = None
) -> TrainResult:
    """Train once inside an MLflow run; the run ends FAILED if anything here raises."""
    from mnist_trainer.model import build_model

    options = config.train
    devices, acceleration = _prepare_devices(options, settings.tracking_uri)
    resolved = _resolved(config, acceleration)
    splits = mnist_data.make_splits(
        dataset,
        batch_size=acceleration.batch_size,
        seed=options.seed,
        validation_fraction=options.validation_fraction,
        max_train_samples=options.max_train_samples,
    )
    environment = lineage.current_environment(settings)
    with _start_run(config.tracking, settings.tracking_uri) as run:
        experiment_id, run_id = run.info.experiment_id, run.info.run_id
        _log_inputs(resolved, splits, dataset, devices, environment, extra_tags)
        model = build_model(
            options.learning_rate,
            options.seed,
            mixed_precision=acceleration.mixed_precision,
            xla=acceleration.xla,
            dropout=options.dropout,
        )
        metrics = _fit_and_evaluate(model, splits, options.epochs)
        files = {CONFIG_ARTIFACT: resolved.to_json(), lineage.PACKAGE_LOCK_ARTIFACT: environment.lock}
        model_info = _store(model, dataset, splits, PendingRun(run_id, experiment_id, metrics, files), settings)
        print(f"trainer: run {run_id}: {tracking.run_link(settings, experiment_id, run_id)}")
        return TrainResult(run_id, experiment_id, model_info.model_uri, metrics)


def _prepare_devices(options: TrainConfig, uri: str) -> tuple[list[str], accelerate.Acceleration]:
    """The devices at hand and what `auto` means on them; op determinism on, when it is, before anything runs."""
    devices = tracking.visible_devices()
    gpu_count, capability = accelerate.probe_gpus()
    acceleration = accelerate.resolve(
        gpu_count, options.mixed_precision, options.xla, options.batch_size, capability, options.deterministic
    )
    if acceleration.deterministic:
        lineage.enable_determinism(options.seed)
    print(f"trainer: training on {', '.join(devices)}; tracking at {uri}", flush=True)
    if acceleration.warning:
        print(f"trainer: warning: {acceleration.warning}", file=sys.stderr, flush=True)
    return devices, acceleration


def _resolved(config: RunConfig, acceleration: accelerate.Acceleration) -> RunConfig:
    """What ran, `auto` resolved: the record a reproduction trains from, on whatever devices it has."""
    return replace(
        config,
        train=replace(
            config.train,
            batch_size=acceleration.batch_size,
            mixed_precision="on" if acceleration.mixed_precision else "off",
            xla="on" if acceleration.xla else "off",
            deterministic="on" if acceleration.deterministic else "off",
        ),
    )


@contextmanager
def _start_run(options: TrackingConfig, uri: str) -> Iterator[ActiveRun]:
    import mlflow

    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(options.experiment_name)
    parent_tags = {PARENT_RUN_TAG: options.parent_run_id} if options.parent_run_id else None
    # experiment_id named explicitly: when trainers create the experiment at the same instant, the one that
    # loses the race gets it back from set_experiment without it being made active, and its run would land
    # in "Default" (MLflow 3.17 fluent.set_experiment; seen with eight trainers starting together).
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=options.run_name, tags=parent_tags) as run:
        yield run


def _log_inputs(
    resolved: RunConfig,
    splits: mnist_data.Splits,
    dataset: mnist_data.Mnist,
    devices: list[str],
    environment: lineage.Environment,
    extra_tags: Mapping[str, str] | None,
) -> None:
    """Params, lineage tags and the data set: everything known before the first step."""
    import mlflow

    mlflow.log_params(
        {
            **resolved.params(),
            "train_samples": splits.train_size,
            "validation_samples": splits.validation_size,
            "test_samples": splits.test_size,
            "optimizer": "adam",
        }
    )
    mlflow.set_tags(
        {
            **tracking.environment_tags(devices),
            **environment.tags(),
            **lineage.tensorflow_tags(),
            "data_source": dataset.source,
            **(extra_tags or {}),
        }
    )
    mlflow.set_tag("data_digest", tracking.log_dataset(dataset))


def _fit_and_evaluate(model: Any, splits: mnist_data.Splits, epochs: int) -> dict[str, float]:
    import mlflow

    tracking.quiet_progress_bars_off_a_terminal()
    started = time.perf_counter()
    model.fit(
        splits.train,
        validation_data=splits.validation,
        epochs=epochs,
        callbacks=[tracking.epoch_logger(epochs)],
        # The pipeline reshuffles itself with the seed; Keras warns if asked to shuffle a tf.data input.
        shuffle=False,
        verbose=0,  # the epoch logger prints one plain line per epoch
    )
    test_loss, test_accuracy = model.evaluate(splits.test, verbose=0)
    metrics = {
        "test_loss": float(test_loss),
        "test_accuracy": float(test_accuracy),
        "train_seconds": time.perf_counter() - started,
    }
    mlflow.log_metrics(metrics)
    print(f"trainer: test accuracy {test_accuracy:.4f}, loss {test_loss:.4f}", flush=True)
    return metrics


def _store(
    model: Any, dataset: mnist_data.Mnist, splits: mnist_data.Splits, run: PendingRun, settings: Settings
) -> ModelInfo:
    """Every file goes to the artifact store here, after training: an outage of the store then costs no
    training, and what could not be stored is kept together (config and lock with the model)."""
    import mlflow

    example = mnist_data.to_model_input(dataset.x_test[: tracking.INPUT_EXAMPLE_SIZE])
    try:
        for name, text in run.files.items():
            mlflow.log_text(text, name)
        log_evaluation_pictures(model, splits, dataset)
        model_info = tracking.log_model(model, example)
    except Exception as error:
        # Minutes of training must not be lost to a storage outage: keep the model and say how to finish.
        kept = keep_pending(model, example, run, settings.pending_dir)
        reason = tracking.first_line(error, 160)
        raise tracking.ModelNotStoredError(
            f"the model could not be stored ({reason}); it is kept in {kept}, upload it when the store is "
            f"back: trainer upload {kept}"
        ) from error
    mlflow.set_tag(MODEL_URI_TAG, model_info.model_uri)
    return model_info


def log_evaluation_pictures(model: object, splits: mnist_data.Splits, dataset: mnist_data.Mnist) -> None:
    import mlflow

    probabilities = model.predict(splits.test, verbose=0)  # type: ignore[attr-defined]
    predictions = probabilities.argmax(axis=1)
    mlflow.log_figure(
        plots.confusion_matrix_figure(plots.confusion_matrix(dataset.y_test, predictions)),
        "evaluation/confusion_matrix.png",
    )
    mlflow.log_figure(
        plots.misclassified_figure(dataset.x_test, dataset.y_test, probabilities), "evaluation/misclassified.png"
    )


def keep_pending(model: Any, example: np.ndarray, run: PendingRun, pending_dir: Path) -> Path:
    """Save the model, its input example and the run's record into pending_dir/<run id>."""
    target = pending_dir / run.run_id
    target.mkdir(parents=True, exist_ok=True)
    model.save(target / "model.keras")
    np.save(target / "input_example.npy", example)
    (target / "run.json").write_text(json.dumps(asdict(run)))
    return target


def upload_pending(path: Path, uri: str) -> TrainResult:
    """Log a kept model to the run that trained it; the run, FAILED until now, ends FINISHED."""
    import keras
    import mlflow

    try:
        meta = json.loads((path / "run.json").read_text())
        example = np.load(path / "input_example.npy")
    except (OSError, ValueError) as error:
        raise mnist_data.DataError(f"{path}: not a model kept by the trainer ({error})") from error
    model = keras.models.load_model(path / "model.keras")
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=meta["run_id"]):
        for name, text in meta.get("files", {}).items():  # config.json and the package lock
            mlflow.log_text(text, name)
        model_info = tracking.log_model(model, example)
        mlflow.set_tags({MODEL_URI_TAG: model_info.model_uri, "model_uploaded_later": "true"})
    print(f"trainer: uploaded {path} to run {meta['run_id']}", flush=True)
    result = TrainResult(meta["run_id"], meta["experiment_id"], model_info.model_uri, meta["metrics"])
    shutil.rmtree(path)  # only once the server holds the model
    return result
