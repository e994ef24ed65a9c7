"""`trainer`: train, sweep, reproduce, list, promote and use versions of the MNIST model tracked in MLflow.

`trainer [train] OPTIONS` trains once; the other commands are listed in COMMANDS. No option is declared
here: config.py declares every command's options and the environment settings once, and the flags are
generated from them. A command parses, calls the module that does the work and prints.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from mnist_trainer import config as run_config
from mnist_trainer import data as mnist_data
from mnist_trainer import registry, tracking
from mnist_trainer.config import (
    LineageOptions,
    ModelsOptions,
    PredictOptions,
    PromoteOptions,
    RegistryConfig,
    ReproduceOptions,
    RunConfig,
    Settings,
    SweepOptions,
    TrackingConfig,
    TrainOptions,
    UploadOptions,
)
from mnist_trainer.predict import ImageError
from mnist_trainer.replay import EXIT_NOT_REPRODUCED, RecordError

EXIT_USAGE = 2
EXIT_FAILURE = 1
COMMANDS = {
    "train": "train once, register and promote (the default)",
    "sweep": "grid over learning rates and batch sizes as nested runs",
    "reproduce": "train a version again from its record and compare the test metrics",
    "lineage": "print where a version came from: run, config, data, code, image, packages",
    "models": "list the registered versions with aliases and metric",
    "promote": "point an alias at a version by hand",
    "predict": "classify digit images (PNG/JPEG/.npy) with a model",
    "upload": "store a model the trainer kept locally during a storage outage",
}


class UsageError(ValueError):
    """Options that parse but do not fit together or with the data."""


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage block before an error; users asked for one line they can read."""

    def error(self, message: str) -> NoReturn:
        # Always "trainer: error:", also from a subcommand's parser: one prefix to look for in logs.
        self.exit(EXIT_USAGE, f"trainer: error: {message} (see {self.prog} --help)\n")


def build_parser(
    train_defaults: dict[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> argparse.ArgumentParser:
    """Every command's flags, generated from its option groups (config.COMMAND_OPTIONS)."""
    parser = OneLineParser(
        prog="trainer",
        description="Train the MNIST convnet, track it in MLflow (MLFLOW_TRACKING_URI) and manage its versions. "
        "Without a command, `train` is meant.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, summary in COMMANDS.items():
        command = commands.add_parser(name, help=summary, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        for group in run_config.COMMAND_OPTIONS[name]:
            run_config.add_options(command, group, sweep=name == "sweep", environ=environ)
        if name == "train" and train_defaults:
            command.set_defaults(**train_defaults)
    return parser


def parse_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> argparse.Namespace:
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
                train_defaults = run_config.flag_defaults(RunConfig.from_file(known.config))
            except run_config.ConfigError as error:
                fail(str(error), EXIT_USAGE)
    return build_parser(train_defaults, environ).parse_args(argv)


def fail(message: str, code: int, result_file: str | None = None) -> NoReturn:
    print(f"trainer: error: {message}", file=sys.stderr)
    if result_file:
        write_result(result_file, {"error": message, "exit_code": code})
    raise SystemExit(code)


def write_result(path: str, outcome: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(outcome, indent=2) + "\n")


def _check_experiment(options: TrackingConfig, uri: str) -> None:
    """With --no-create-experiment a misspelt name is an input error, reported before any run exists."""
    if not options.no_create_experiment:
        return
    if tracking.client(uri).get_experiment_by_name(options.experiment_name) is None:
        raise UsageError(f"experiment {options.experiment_name!r} does not exist (and --no-create-experiment is set)")


def command_train(args: argparse.Namespace, settings: Settings) -> None:
    from mnist_trainer.training import train_and_track

    config, options = run_config.from_namespace(args), run_config.section_from_namespace(TrainOptions, args)
    dataset = mnist_data.load_for_training(config.train, settings.tfds_data_dir)
    tracking.wait_for_server(settings)
    _check_experiment(config.tracking, settings.tracking_uri)
    result = train_and_track(config, dataset, settings)
    version = None
    if not config.registry.no_register:
        version = registry.register_and_promote(result, settings, config.registry)
    if options.result_file:
        write_result(
            options.result_file,
            {
                "run_id": result.run_id,
                "experiment_id": result.experiment_id,
                "model_uri": result.model_uri,
                "metrics": result.metrics,
                "registered_model_name": None if version is None else config.registry.registered_model_name,
                "version": version,
            },
        )


def command_sweep(args: argparse.Namespace, settings: Settings) -> None:
    from mnist_trainer.sweep import grid, run_sweep

    values = run_config.sweep_grid(args)
    base = run_config.from_namespace(args, **{key: choices[0] for key, choices in values.items()})
    options = run_config.section_from_namespace(SweepOptions, args)
    mnist_data.load_for_training(base.train, settings.tfds_data_dir)  # validate once here, not in every child
    tracking.wait_for_server(settings)
    _check_experiment(base.tracking, settings.tracking_uri)
    run_sweep(base, grid(values), settings, options.parallel)


def command_reproduce(args: argparse.Namespace, settings: Settings) -> None:
    """Everything that can refuse does so before the new run exists (replay.prepare); then train and compare."""
    from mnist_trainer import replay

    options = run_config.section_from_namespace(ReproduceOptions, args)
    tracking.wait_for_server(settings)
    plan = replay.prepare(options, settings)
    for change in plan.changes:
        print(f"trainer: note: reproducing across a change: {change}", file=sys.stderr, flush=True)
    outcome = replay.reproduce(plan, settings)
    print(
        f"trainer: reproduction of run {outcome.original_run_id} in run {outcome.run_id}\n{outcome.table}", flush=True
    )
    if not outcome.within:
        print(f"trainer: a test metric differs by more than {options.tolerance:g}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_NOT_REPRODUCED)
    print(f"trainer: reproduced: every test metric within {options.tolerance:g}", flush=True)


def command_lineage(args: argparse.Namespace, settings: Settings) -> None:
    from mnist_trainer import replay

    options = run_config.section_from_namespace(LineageOptions, args)
    tracking.wait_for_server(settings)
    print(replay.lineage_of(options.model_uri, settings))


def command_models(args: argparse.Namespace, settings: Settings) -> None:
    options = run_config.section_from_namespace(ModelsOptions, args)
    tracking.wait_for_server(settings)
    client = tracking.client(settings.tracking_uri)
    print(registry.format_table(registry.versions_table(client, options.registered_model_name, options.metric)))


def command_promote(args: argparse.Namespace, settings: Settings) -> None:
    options = run_config.section_from_namespace(PromoteOptions, args)
    tracking.wait_for_server(settings)
    who = settings.user or getpass.getuser()
    name, version, alias = options.registered_model_name, options.version, options.alias
    registry.promote_by_hand(tracking.client(settings.tracking_uri), name, version, alias, who, options.reason)
    print(f"trainer: {name} version {version} is now @{alias} (set by {who})")


def command_predict(args: argparse.Namespace, settings: Settings) -> None:
    from mnist_trainer.predict import load_digit, predict

    options = run_config.section_from_namespace(PredictOptions, args)
    for path in options.images:
        load_digit(path)  # bad files are input errors: report them before loading any model
    tracking.wait_for_server(settings)
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    for prediction in predict(options.model, options.images):
        print(f"{prediction.path}: {prediction.digit} (p={prediction.probability:.3f})")


def command_upload(args: argparse.Namespace, settings: Settings) -> None:
    from mnist_trainer.training import upload_pending

    options = run_config.section_from_namespace(UploadOptions, args)
    registry_options = run_config.section_from_namespace(RegistryConfig, args)
    tracking.wait_for_server(settings)
    result = upload_pending(options.path, settings.tracking_uri)
    if not registry_options.no_register:
        registry.register_and_promote(result, settings, registry_options)


HANDLERS: dict[str, Callable[[argparse.Namespace, Settings], None]] = {
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
    # The one read of the environment: flag defaults (TRAINER_DATA) and the settings come from this copy.
    environ = dict(os.environ)
    args = parse_args(sys.argv[1:] if argv is None else argv, environ)
    # MLflow would print the run URL under the server's in-network name; the trainer prints the one to open.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # A sweep child reports failures in its result file too: the parent reads that, not this process's output.
    result_file = getattr(args, "result_file", None)
    try:
        settings = Settings.from_environ(environ)
        tracking.check_tracking_uri(settings.tracking_uri)
        HANDLERS[args.command](args, settings)
    except (
        UsageError, run_config.ConfigError, tracking.ConfigError, mnist_data.DataError, ImageError, RecordError,
    ) as error:  # fmt: skip
        fail(str(error), EXIT_USAGE, result_file)
    except tracking.TrackingError as error:
        fail(str(error), EXIT_FAILURE, result_file)
    except KeyboardInterrupt:
        fail("interrupted; the run is marked KILLED", 130, result_file)
    except Exception as error:
        from mlflow.exceptions import MlflowException

        if isinstance(error, MlflowException) and error.error_code == "RESOURCE_DOES_NOT_EXIST":
            fail(tracking.first_line(error), EXIT_USAGE, result_file)  # e.g. `promote --version 99`
        if isinstance(error, (MlflowException, OSError, RuntimeError)):
            # MLflow has already retried; its message is long and multi-line, the first line says what failed.
            fail(f"{type(error).__name__}: {tracking.first_line(error, 300)}", EXIT_FAILURE, result_file)
        raise


if __name__ == "__main__":
    main()
