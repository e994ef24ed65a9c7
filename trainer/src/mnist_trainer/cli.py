"""`trainer`: train, sweep, list, promote and use versions of the MNIST model tracked in MLflow.

`trainer [train] OPTIONS` trains once; `sweep`, `models`, `promote` and `predict` are the other commands.
"""

from __future__ import annotations

import argparse
import getpass
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Literal, NoReturn, TypeVar

from mnist_trainer import accelerate, registry, tracking
from mnist_trainer import data as mnist_data
from mnist_trainer.predict import ImageError

EXIT_USAGE = 2
EXIT_FAILURE = 1
DEFAULT_EPOCHS = 5
# `auto`: 128 on the CPU, 512 with a GPU (accelerate.py says why).
DEFAULT_BATCH_SIZE: Literal["auto"] = accelerate.AUTO
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_SEED = 42
DEFAULT_VALIDATION_FRACTION = 0.1
DEFAULT_EXPERIMENT = "mnist"
DEFAULT_MODEL_NAME = "mnist"
# A version below this test accuracy is registered (for the record) but marked failed and never promoted.
DEFAULT_MIN_ACCURACY = 0.9
COMMANDS = ("train", "sweep", "models", "promote", "predict", "upload")
AUTO_BATCH_SIZE_HELP = f"'auto' ({accelerate.GPU_BATCH_SIZE} with a GPU, else {accelerate.CPU_BATCH_SIZE})"

T = TypeVar("T")


class UsageError(ValueError):
    """Options that parse but do not fit together or with the data."""


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage block before an error; users asked for one line they can read."""

    def error(self, message: str) -> NoReturn:
        # Always "trainer: error:", also from a subcommand's parser: one prefix to look for in logs.
        self.exit(EXIT_USAGE, f"trainer: error: {message} (see {self.prog} --help)\n")


def _whole(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(
            f"must be at least {minimum}, got {value}" if minimum else f"must not be negative, got {value}"
        )
    return value


def _positive_int(text: str) -> int:
    return _whole(text, 1)


def _non_negative_int(text: str) -> int:
    return _whole(text, 0)


def _batch_size(text: str) -> int | Literal["auto"]:
    if text.strip() == accelerate.AUTO:
        return accelerate.AUTO
    try:
        int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a whole number nor 'auto'") from None
    return _positive_int(text)


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _unit_interval(text: str) -> float:
    value = _non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text.strip()


def _list_of(parse: Callable[[str], T]) -> Callable[[str], list[T]]:
    def parse_list(text: str) -> list[T]:
        values = [parse(part.strip()) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError("give one or more comma-separated values")
        return list(dict.fromkeys(values))  # drop repeats, keep order

    return parse_list


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registered-model-name", type=_name, default=DEFAULT_MODEL_NAME)


def _add_registration(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--no-register", action="store_true", help="log the model to the run but create no version")
    parser.add_argument("--promotion-metric", default="test_accuracy",
                        help="run metric that decides @champion; names ending in 'loss' count lower as better")  # fmt: skip
    parser.add_argument("--promotion-margin", type=_non_negative_float, default=0.0,
                        help="how much better than the champion a new version must be to take the alias")  # fmt: skip
    parser.add_argument("--min-accuracy", type=_unit_interval, default=DEFAULT_MIN_ACCURACY,
                        help="versions below this test accuracy are marked failed and never promoted")  # fmt: skip


def _add_training(parser: argparse.ArgumentParser, *, sweep: bool) -> None:
    if sweep:
        parser.add_argument("--learning-rate", type=_list_of(_positive_float), default=[DEFAULT_LEARNING_RATE],
                            help="comma-separated values to try")  # fmt: skip
        parser.add_argument("--batch-size", type=_list_of(_batch_size), default=[DEFAULT_BATCH_SIZE],
                            help=f"comma-separated values to try: numbers or {AUTO_BATCH_SIZE_HELP}, "
                            "resolved by each child")  # fmt: skip
        parser.add_argument("--parallel", type=_positive_int, default=1, help="child runs at a time")
    else:
        parser.add_argument("--learning-rate", type=_positive_float, default=DEFAULT_LEARNING_RATE)
        parser.add_argument("--batch-size", type=_batch_size, default=DEFAULT_BATCH_SIZE,
                            help=f"images per step, or {AUTO_BATCH_SIZE_HELP}")  # fmt: skip
    parser.add_argument("--mixed-precision", choices=accelerate.TOGGLES, default=accelerate.AUTO,
                        help="compute in float16, keep weights and output in float32; 'auto': on with a GPU "
                        "of compute capability 7.0 or more (or unknown)")  # fmt: skip
    parser.add_argument("--xla", choices=accelerate.TOGGLES, default=accelerate.AUTO,
                        help="compile the training step with XLA; 'auto': on with a GPU")  # fmt: skip
    parser.add_argument("--epochs", type=_positive_int, default=DEFAULT_EPOCHS)
    parser.add_argument("--seed", type=_non_negative_int, default=DEFAULT_SEED)
    parser.add_argument("--validation-fraction", type=_fraction, default=DEFAULT_VALIDATION_FRACTION,
                        help="share of the training images held out for per-epoch validation")  # fmt: skip
    parser.add_argument("--max-train-samples", type=_positive_int, default=None,
                        help="train on a seeded subset of this many images (quick checks); default: all")  # fmt: skip
    parser.add_argument("--data", default=os.environ.get("TRAINER_DATA", mnist_data.TFDS_SOURCE),
                        help="'tfds' to download MNIST with TensorFlow Datasets (cached in TFDS_DATA_DIR), "
                        "or the path of a Keras-format mnist.npz")  # fmt: skip
    parser.add_argument("--run-name", type=_name, default=None, help="default: MLflow picks one")
    parser.add_argument("--experiment-name", type=_name, default=DEFAULT_EXPERIMENT)
    parser.add_argument("--no-create-experiment", action="store_true",
                        help="fail instead of creating --experiment-name when it does not exist")  # fmt: skip
    _add_registration(parser)
    if not sweep:
        # Set by `trainer sweep` for its child processes.
        parser.add_argument("--parent-run-id", default=None, help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="trainer",
        description="Train the MNIST convnet, track it in MLflow (MLFLOW_TRACKING_URI) and manage its versions. "
        "Without a command, `train` is meant.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=summary, formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    train = command("train", "train once, register and promote (the default)")
    _add_training(train, sweep=False)
    sweep = command("sweep", "grid over learning rates and batch sizes as nested runs")
    _add_training(sweep, sweep=True)
    models = command("models", "list the registered versions with aliases and metric")
    _add_common(models)
    models.add_argument("--metric", default="test_accuracy")
    promote = command("promote", "point an alias at a version by hand")
    _add_common(promote)
    promote.add_argument("--version", type=_positive_int, required=True)
    promote.add_argument("--alias", type=_name, default=registry.CHAMPION)
    promote.add_argument("--reason", default="promoted by hand")
    predict = command("predict", "classify digit images (PNG/JPEG/.npy) with a model")
    predict.add_argument("--model", default=f"models:/{DEFAULT_MODEL_NAME}@{registry.CHAMPION}")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    upload = command("upload", "store a model the trainer kept locally during a storage outage")
    upload.add_argument("path", help="the folder the trainer named, e.g. /data/pending/<run id>")
    _add_registration(upload)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    # `trainer --epochs 5` has always meant training: keep that working next to the subcommands.
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "train")
    return build_parser().parse_args(argv)


def fail(message: str, code: int) -> NoReturn:
    print(f"trainer: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def promotion_rule(args: argparse.Namespace) -> registry.PromotionRule:
    lower_is_better = args.promotion_metric.endswith("loss")
    return registry.PromotionRule(args.promotion_metric, not lower_is_better, args.promotion_margin)


def _load_training_data(args: argparse.Namespace) -> mnist_data.Mnist:
    dataset = mnist_data.load(args.data, os.environ.get("TFDS_DATA_DIR"))
    if args.max_train_samples is not None and args.max_train_samples > len(dataset.x_train):
        raise UsageError(
            f"--max-train-samples {args.max_train_samples} exceeds the {len(dataset.x_train)} training images"
        )
    return dataset


def _check_experiment(args: argparse.Namespace, uri: str) -> None:
    """With --no-create-experiment a misspelt name is an input error, reported before any run exists."""
    if not args.no_create_experiment:
        return
    from mlflow import MlflowClient

    if MlflowClient(tracking_uri=uri).get_experiment_by_name(args.experiment_name) is None:
        raise UsageError(f"experiment {args.experiment_name!r} does not exist (and --no-create-experiment is set)")


def command_train(args: argparse.Namespace, uri: str) -> None:
    from mnist_trainer.training import RegistryOptions, TrainOptions, register_and_promote, train_and_track

    dataset = _load_training_data(args)
    tracking.wait_for_server(uri)
    _check_experiment(args, uri)
    options = TrainOptions(
        args.epochs,
        args.batch_size,
        args.learning_rate,
        args.seed,
        args.validation_fraction,
        args.max_train_samples,
        args.mixed_precision,
        args.xla,
    )
    result = train_and_track(options, dataset, uri, args.experiment_name, args.run_name, args.parent_run_id)
    if not args.no_register:
        register_and_promote(
            result, uri, RegistryOptions(args.registered_model_name, promotion_rule(args), args.min_accuracy)
        )


def command_sweep(args: argparse.Namespace, uri: str) -> None:
    from mnist_trainer.sweep import grid, run_sweep
    from mnist_trainer.training import RegistryOptions

    _load_training_data(args)  # validate once here rather than fail in every child
    tracking.wait_for_server(uri)
    _check_experiment(args, uri)
    shared = ["--epochs", str(args.epochs), "--seed", str(args.seed), "--data", args.data,
              "--validation-fraction", repr(args.validation_fraction),
              "--promotion-metric", args.promotion_metric,
              "--mixed-precision", args.mixed_precision, "--xla", args.xla]  # fmt: skip
    if args.max_train_samples:
        shared += ["--max-train-samples", str(args.max_train_samples)]
    options = (
        None
        if args.no_register
        else RegistryOptions(args.registered_model_name, promotion_rule(args), args.min_accuracy)
    )
    run_sweep(
        grid(args.learning_rate, args.batch_size),
        shared,
        uri,
        args.experiment_name,
        args.run_name,
        args.parallel,
        options,
    )


def command_models(args: argparse.Namespace, uri: str) -> None:
    from mlflow import MlflowClient

    tracking.wait_for_server(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    print(registry.format_table(registry.versions_table(client, args.registered_model_name, args.metric)))


def command_promote(args: argparse.Namespace, uri: str) -> None:
    from mlflow import MlflowClient

    tracking.wait_for_server(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    who = os.environ.get("TRAINER_USER") or getpass.getuser()
    registry.promote_by_hand(client, args.registered_model_name, args.version, args.alias, who, args.reason)
    print(f"trainer: {args.registered_model_name} version {args.version} is now @{args.alias} (set by {who})")


def command_predict(args: argparse.Namespace, uri: str) -> None:
    from mnist_trainer.predict import load_digit, predict

    for path in args.images:
        load_digit(path)  # bad files are input errors: report them before loading any model
    tracking.wait_for_server(uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    for prediction in predict(args.model, args.images):
        print(f"{prediction.path}: {prediction.digit} (p={prediction.probability:.3f})")


def command_upload(args: argparse.Namespace, uri: str) -> None:
    from pathlib import Path

    from mnist_trainer.training import RegistryOptions, register_and_promote, upload_pending

    tracking.wait_for_server(uri)
    result = upload_pending(Path(args.path), uri)
    if not args.no_register:
        register_and_promote(
            result, uri, RegistryOptions(args.registered_model_name, promotion_rule(args), args.min_accuracy)
        )


HANDLERS: dict[str, Callable[[argparse.Namespace, str], None]] = {
    "train": command_train,
    "sweep": command_sweep,
    "models": command_models,
    "promote": command_promote,
    "predict": command_predict,
    "upload": command_upload,
}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # MLflow would print the run URL under the server's in-network name; the trainer prints the one to open.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    uri = tracking.tracking_uri()
    try:
        tracking.check_tracking_uri(uri)
        HANDLERS[args.command](args, uri)
    except (UsageError, tracking.ConfigError, mnist_data.DataError, ImageError) as error:
        fail(str(error), EXIT_USAGE)
    except tracking.TrackingError as error:
        fail(str(error), EXIT_FAILURE)
    except KeyboardInterrupt:
        fail("interrupted; the run is marked KILLED", 130)
    except Exception as error:
        from mlflow.exceptions import MlflowException

        if isinstance(error, MlflowException) and error.error_code == "RESOURCE_DOES_NOT_EXIST":
            fail(str(error).strip().splitlines()[0], EXIT_USAGE)  # e.g. `promote --version 99`
        if isinstance(error, (MlflowException, OSError, RuntimeError)):
            # MLflow has already retried; its message is long and multi-line, the first line says what failed.
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            fail(f"{type(error).__name__}: {first_line[:300]}", EXIT_FAILURE)
        raise


if __name__ == "__main__":
    main()
