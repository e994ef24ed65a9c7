"""`trainer`: train, sweep, reproduce, list, promote and use versions of the MNIST model tracked in MLflow.

`trainer [train] OPTIONS` trains once; the other commands are listed in COMMANDS. The training options are
not declared here: config.py declares them once and generates their flags.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from mnist_trainer import config as run_config
from mnist_trainer import data as mnist_data
from mnist_trainer import registry, tracking
from mnist_trainer.config import RegistryConfig, RunConfig, TrackingConfig, TrainConfig
from mnist_trainer.predict import ImageError
from mnist_trainer.replay import DEFAULT_TOLERANCE, EXIT_NOT_REPRODUCED, MODEL_URI_FORMS, RecordError

EXIT_USAGE = 2
EXIT_FAILURE = 1
COMMANDS = ("train", "sweep", "reproduce", "lineage", "models", "promote", "predict", "upload")


class UsageError(ValueError):
    """Options that parse but do not fit together or with the data."""


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage block before an error; users asked for one line they can read."""

    def error(self, message: str) -> NoReturn:
        # Always "trainer: error:", also from a subcommand's parser: one prefix to look for in logs.
        self.exit(EXIT_USAGE, f"trainer: error: {message} (see {self.prog} --help)\n")


def _add_model_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registered-model-name", type=run_config.name, default=RegistryConfig.registered_model_name,
        help="the registered model",
    )  # fmt: skip


def build_parser(train_defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
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
    for section in (TrainConfig, TrackingConfig, RegistryConfig):
        run_config.add_options(train, section)
    train.add_argument("--config", metavar="FILE", help="a config.json (a run's artifact); flags given here win")
    train.add_argument("--result-file", metavar="FILE", help="write the outcome as JSON here (used by sweeps)")
    if train_defaults:
        train.set_defaults(**train_defaults)
    sweep = command("sweep", "grid over learning rates and batch sizes as nested runs")
    run_config.add_options(sweep, TrainConfig, sweep=True)
    run_config.add_options(sweep, TrackingConfig)
    run_config.add_options(sweep, RegistryConfig)
    sweep.add_argument("--parallel", type=run_config.positive_int, default=1, help="child runs at a time")
    reproduce = command("reproduce", "train a version again from its record and compare the test metrics")
    reproduce.add_argument("model_uri", metavar="MODEL_URI", help=MODEL_URI_FORMS)
    reproduce.add_argument("--data", default=None, help="the data to train on; default: the original's source")
    reproduce.add_argument("--allow-code-change", action="store_true",
                           help="reproduce even when the code digest, image or package lock differ from the original's")  # fmt: skip
    reproduce.add_argument("--tolerance", type=run_config.non_negative_float, default=DEFAULT_TOLERANCE,
                           help="largest difference of a test metric that still counts as reproduced")  # fmt: skip
    reproduce.add_argument("--register", action="store_true", help="also register the reproduction as a version")
    lineage = command("lineage", "print where a version came from: run, config, data, code, image, packages")
    lineage.add_argument("model_uri", metavar="MODEL_URI", help=MODEL_URI_FORMS)
    models = command("models", "list the registered versions with aliases and metric")
    _add_model_name(models)
    models.add_argument("--metric", default="test_accuracy")
    promote = command("promote", "point an alias at a version by hand")
    _add_model_name(promote)
    promote.add_argument("--version", type=run_config.positive_int, required=True)
    promote.add_argument("--alias", type=run_config.name, default=registry.CHAMPION)
    promote.add_argument("--reason", default="promoted by hand")
    predict = command("predict", "classify digit images (PNG/JPEG/.npy) with a model")
    predict.add_argument("--model", default=f"models:/{RegistryConfig.registered_model_name}@{registry.CHAMPION}")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    upload = command("upload", "store a model the trainer kept locally during a storage outage")
    upload.add_argument("path", help="the folder the trainer named, e.g. /data/pending/<run id>")
    run_config.add_options(upload, RegistryConfig)
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    argv = list(argv)
    # `trainer --epochs 5` has always meant training: keep that working next to the subcommands.
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "train")
    train_defaults = None
    if argv[0] == "train":
        # A config file sets the defaults of the flags, so that flags given next to it still win.
        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--config")
        known, _ = pre.parse_known_args(argv[1:])
        if known.config:
            try:
                loaded = RunConfig.from_file(known.config)
            except run_config.ConfigError as error:
                fail(str(error), EXIT_USAGE)
            train_defaults = {key: value for section in loaded.to_dict().values() for key, value in section.items()}
    return build_parser(train_defaults).parse_args(argv)


def fail(message: str, code: int, result_file: str | None = None) -> NoReturn:
    print(f"trainer: error: {message}", file=sys.stderr)
    if result_file:
        write_result(result_file, {"error": message, "exit_code": code})
    raise SystemExit(code)


def write_result(path: str, outcome: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(outcome, indent=2) + "\n")


def _load_training_data(options: TrainConfig) -> mnist_data.Mnist:
    dataset = mnist_data.load(options.data, os.environ.get("TFDS_DATA_DIR"))
    if options.max_train_samples is not None and options.max_train_samples > len(dataset.x_train):
        raise UsageError(
            f"--max-train-samples {options.max_train_samples} exceeds the {len(dataset.x_train)} training images"
        )
    return dataset


def _check_experiment(options: TrackingConfig, uri: str) -> None:
    """With --no-create-experiment a misspelt name is an input error, reported before any run exists."""
    if not options.no_create_experiment:
        return
    from mlflow import MlflowClient

    if MlflowClient(tracking_uri=uri).get_experiment_by_name(options.experiment_name) is None:
        raise UsageError(f"experiment {options.experiment_name!r} does not exist (and --no-create-experiment is set)")


def command_train(args: argparse.Namespace, uri: str) -> None:
    from mnist_trainer.training import train_and_track

    config = run_config.from_namespace(args)
    dataset = _load_training_data(config.train)
    tracking.wait_for_server(uri)
    _check_experiment(config.tracking, uri)
    result = train_and_track(config, dataset, uri)
    version = None
    if not config.registry.no_register:
        version = registry.register_and_promote(result, uri, config.registry)
    if args.result_file:
        write_result(
            args.result_file,
            {
                "run_id": result.run_id,
                "experiment_id": result.experiment_id,
                "model_uri": result.model_uri,
                "metrics": result.metrics,
                "registered_model_name": None if version is None else config.registry.registered_model_name,
                "version": version,
            },
        )


def command_sweep(args: argparse.Namespace, uri: str) -> None:
    from mnist_trainer.sweep import grid, run_sweep

    values = run_config.sweep_grid(args)
    base = run_config.from_namespace(args, **{key: choices[0] for key, choices in values.items()})
    _load_training_data(base.train)  # validate once here rather than fail in every child
    tracking.wait_for_server(uri)
    _check_experiment(base.tracking, uri)
    run_sweep(base, grid(values), uri, args.parallel)


def command_reproduce(args: argparse.Namespace, uri: str) -> None:
    """Everything that can refuse does so before the new run exists: URI, record, data digest, environment."""
    from dataclasses import replace

    import mlflow
    from mlflow import MlflowClient

    from mnist_trainer import lineage, replay
    from mnist_trainer.training import train_and_track

    tracking.wait_for_server(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow.set_tracking_uri(uri)  # artifact downloads (config.json) go through the same server
    record = replay.read_record(client, replay.resolve(client, args.model_uri))
    original_id = record.origin.run_id
    train = replace(record.config.train, data=args.data or record.config.train.data)
    dataset = _load_training_data(train)
    digest, recorded = tracking.dataset_digest(dataset), record.tags.get("data_digest", "")
    if digest != recorded:
        raise UsageError(
            f"data digest {digest} of {train.data} differs from the original's {recorded or '(none recorded)'} "
            f"(run {original_id}); nothing was logged"
        )
    changes = replay.environment_changes(record, lineage.current_environment())
    if changes and not args.allow_code_change:
        raise UsageError(
            f"the original ran elsewhere: {'; '.join(changes)}; pass --allow-code-change to reproduce anyway"
        )
    for change in changes:
        print(f"trainer: note: reproducing across a change: {change}", file=sys.stderr, flush=True)
    experiment = client.get_experiment(record.run.info.experiment_id)
    config = replace(
        record.config,
        train=train,
        tracking=replace(
            record.config.tracking,
            experiment_name=experiment.name,
            run_name=f"reproduce {record.run.info.run_name or original_id}",
            parent_run_id=None,
            no_create_experiment=False,
        ),
        registry=replace(record.config.registry, no_register=not args.register),
    )
    extra_tags = {tracking.REPRODUCES_TAG: original_id}
    if changes:
        extra_tags["reproduced_across"] = ", ".join(change.split()[0] for change in changes)
    result = train_and_track(config, dataset, uri, extra_tags)
    if args.register:
        registry.register_and_promote(result, uri, config.registry)
    reproduced = client.get_run(result.run_id)
    table, within = replay.comparison(
        replay.final_metrics(record.run), replay.final_metrics(reproduced), args.tolerance
    )
    print(f"trainer: reproduction of run {original_id} in run {result.run_id}\n{table}", flush=True)
    if not within:
        print(f"trainer: a test metric differs by more than {args.tolerance:g}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_NOT_REPRODUCED)
    print(f"trainer: reproduced: every test metric within {args.tolerance:g}", flush=True)


def command_lineage(args: argparse.Namespace, uri: str) -> None:
    import mlflow
    from mlflow import MlflowClient

    from mnist_trainer import replay

    tracking.wait_for_server(uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    record = replay.read_record(client, replay.resolve(client, args.model_uri))
    link = tracking.run_link(uri, record.run.info.experiment_id, record.origin.run_id)
    print(replay.chain(client, record, link))


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
    from mnist_trainer.training import upload_pending

    tracking.wait_for_server(uri)
    result = upload_pending(Path(args.path), uri)
    options = run_config.section_from_namespace(RegistryConfig, args)
    if not options.no_register:
        registry.register_and_promote(result, uri, options)


HANDLERS: dict[str, Callable[[argparse.Namespace, str], None]] = {
    "train": command_train,
    "sweep": command_sweep,
    "reproduce": command_reproduce,
    "lineage": command_lineage,
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
    # A sweep child reports failures in its result file too: the parent reads that, not this process's output.
    result_file = getattr(args, "result_file", None)
    try:
        tracking.check_tracking_uri(uri)
        HANDLERS[args.command](args, uri)
    except (UsageError, tracking.ConfigError, mnist_data.DataError, ImageError, RecordError) as error:
        fail(str(error), EXIT_USAGE, result_file)
    except tracking.TrackingError as error:
        fail(str(error), EXIT_FAILURE, result_file)
    except KeyboardInterrupt:
        fail("interrupted; the run is marked KILLED", 130, result_file)
    except Exception as error:
        from mlflow.exceptions import MlflowException

        if isinstance(error, MlflowException) and error.error_code == "RESOURCE_DOES_NOT_EXIST":
            fail(str(error).strip().splitlines()[0], EXIT_USAGE, result_file)  # e.g. `promote --version 99`
        if isinstance(error, (MlflowException, OSError, RuntimeError)):
            # MLflow has already retried; its message is long and multi-line, the first line says what failed.
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            fail(f"{type(error).__name__}: {first_line[:300]}", EXIT_FAILURE, result_file)
        raise


if __name__ == "__main__":
    main()
