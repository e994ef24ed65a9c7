"""`trainer`: train the MNIST convnet, track it in MLflow and register a new model version."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import NoReturn

from mnist_trainer import data as mnist_data
from mnist_trainer import registry, tracking

EXIT_USAGE = 2
EXIT_FAILURE = 1
DEFAULT_EPOCHS = 5
DEFAULT_BATCH_SIZE = 128
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_SEED = 42
DEFAULT_VALIDATION_FRACTION = 0.1
DEFAULT_EXPERIMENT = "mnist"
DEFAULT_MODEL_NAME = "mnist"


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage block before an error; users asked for one line they can read."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="trainer",
        description="Train the MNIST convnet, log it to MLflow (MLFLOW_TRACKING_URI) and register a new model version.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--epochs", type=_positive_int, default=DEFAULT_EPOCHS)
    parser.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--learning-rate", type=_positive_float, default=DEFAULT_LEARNING_RATE)
    parser.add_argument("--seed", type=_non_negative_int, default=DEFAULT_SEED)
    parser.add_argument(
        "--validation-fraction",
        type=_fraction,
        default=DEFAULT_VALIDATION_FRACTION,
        help="share of the training images held out for per-epoch validation",
    )
    parser.add_argument(
        "--max-train-samples",
        type=_positive_int,
        default=None,
        help="train on a seeded subset of this many images (quick checks); default: all",
    )
    parser.add_argument(
        "--data",
        default=os.environ.get("TRAINER_DATA", mnist_data.TFDS_SOURCE),
        help="'tfds' to download MNIST with TensorFlow Datasets (cached in TFDS_DATA_DIR), "
        "or the path of a Keras-format mnist.npz",
    )
    parser.add_argument("--run-name", type=_name, default=None, help="default: MLflow picks one")
    parser.add_argument("--experiment-name", type=_name, default=DEFAULT_EXPERIMENT)
    parser.add_argument("--registered-model-name", type=_name, default=DEFAULT_MODEL_NAME)
    parser.add_argument("--no-register", action="store_true", help="log the model to the run but create no version")
    return parser


def fail(message: str, code: int) -> NoReturn:
    print(f"trainer: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def train_and_track(args: argparse.Namespace, dataset: mnist_data.Mnist, uri: str) -> None:
    import mlflow

    from mnist_trainer.model import build_model

    devices = tracking.visible_devices()
    print(f"trainer: training on {', '.join(devices)}; tracking at {uri}", flush=True)
    splits = mnist_data.make_splits(
        dataset,
        batch_size=args.batch_size,
        seed=args.seed,
        validation_fraction=args.validation_fraction,
        max_train_samples=args.max_train_samples,
    )
    params = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "seed": args.seed,
        "validation_fraction": args.validation_fraction,
        "train_samples": splits.train_size,
        "validation_samples": splits.validation_size,
        "test_samples": splits.test_size,
        "optimizer": "adam",
    }
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment(args.experiment_name)
    with mlflow.start_run(run_name=args.run_name) as run:
        tags = tracking.environment_tags(devices)
        mlflow.log_params(params)
        mlflow.set_tags({**tags, "data_source": dataset.source})
        data_digest = tracking.log_dataset(dataset)

        model = build_model(args.learning_rate, args.seed)
        started = time.perf_counter()
        model.fit(
            splits.train,
            validation_data=splits.validation,
            epochs=args.epochs,
            callbacks=[tracking.epoch_logger()],
            # The pipeline reshuffles itself with the seed; Keras warns if asked to shuffle a tf.data input.
            shuffle=False,
            verbose=2,
        )
        test_loss, test_accuracy = model.evaluate(splits.test, verbose=0)
        metrics = {
            "test_loss": float(test_loss),
            "test_accuracy": float(test_accuracy),
            "train_seconds": time.perf_counter() - started,
        }
        mlflow.log_metrics(metrics)
        print(f"trainer: test accuracy {test_accuracy:.4f}, loss {test_loss:.4f}", flush=True)

        model_info = tracking.log_model(model, mnist_data.to_model_input(dataset.x_test[: tracking.INPUT_EXAMPLE_SIZE]))
        run_url = tracking.run_link(uri, experiment.experiment_id, run.info.run_id)
        print(f"trainer: run {run.info.run_id}: {run_url}", flush=True)
        if args.no_register:
            return
        facts = registry.VersionFacts(
            params=params,
            metrics=metrics,
            data_source=dataset.source,
            data_digest=data_digest,
            run_url=run_url,
            devices=tags["devices"],
        )
        version_tags = {"test_accuracy": f"{test_accuracy:.4f}", "data_digest": data_digest}
        version = registry.register(model_info.model_uri, args.registered_model_name, facts, version_tags)
        print(
            f"trainer: registered {args.registered_model_name} version {version} "
            f"(models:/{args.registered_model_name}/{version})",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # MLflow would print the run URL under the server's in-network name; the trainer prints the one to open.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    uri = tracking.tracking_uri()
    try:
        tracking.check_tracking_uri(uri)
        dataset = mnist_data.load(args.data, os.environ.get("TFDS_DATA_DIR"))
        if args.max_train_samples is not None and args.max_train_samples > len(dataset.x_train):
            raise ValueError(
                f"--max-train-samples {args.max_train_samples} exceeds the {len(dataset.x_train)} training images"
            )
    except ValueError as error:  # DataError included: bad input, nothing was created
        fail(str(error), EXIT_USAGE)
    try:
        tracking.wait_for_server(uri)
        train_and_track(args, dataset, uri)
    except tracking.TrackingError as error:
        fail(str(error), EXIT_FAILURE)
    except KeyboardInterrupt:
        fail("interrupted; the run is marked KILLED", 130)
    except Exception as error:
        from mlflow.exceptions import MlflowException

        if isinstance(error, (MlflowException, OSError)):
            # MLflow has already retried; its message is long and multi-line, the first line says what failed.
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            fail(f"{type(error).__name__}: {first_line[:300]}", EXIT_FAILURE)
        raise


if __name__ == "__main__":
    main()
