"""The trainer's configuration, declared once: type, bounds, default and help of every option and setting.

Everything else is derived from these dataclasses, in the spirit of Hugging Face's `HfArgumentParser`: the
command-line flags (`add_options`), the object built from parsed flags (`from_namespace`), the run's params
and its `config.json` artifact (`to_dict`), the config file a sweep hands each child and `trainer reproduce`
reads back (`from_dict`), the environment settings read once at start (`Settings.from_environ`), and the
reference the docs are generated from (`reference`). Adding a training option is one field in `TrainConfig`
plus the code that uses it.

Values read from a file or the environment go through the same parsers as flags, so a hand-edited config.json
with `"epochs": 0` gets the same one-line error as `--epochs 0`.

Cheap to import (no TensorFlow, no MLflow): the docs build imports it from the host's venv.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from mnist_trainer import accelerate
from mnist_trainer.registry import CHAMPION

T = TypeVar("T")
C = TypeVar("C")
CONFIG_ARTIFACT = "config.json"
# Outside Docker, with no server configured, runs land in a local SQLite store (MLflow's own default since 3.7).
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# Long enough for a server that is still booting, short enough that a wrong URI is reported promptly.
PREFLIGHT_TIMEOUT_SECONDS = 30.0
# Written by the image build (Dockerfile: python -m mnist_trainer.lineage code-digest).
CODE_DIGEST_FILE = Path("/opt/trainer/code-digest")
# The trainer-data volume in Docker: where a trained model waits when the artifact store cannot take it.
DATA_VOLUME = Path("/data")
MODEL_URI_FORMS = "models:/NAME/N, models:/NAME@ALIAS or runs:/RUN_ID"
DEFAULT_TOLERANCE = 1e-4
DEFAULT_MODEL_NAME = "mnist"


class ConfigError(ValueError):
    """A value in a config file that the matching flag would refuse; the message names the field."""


# ---- parsers: text in, typed value out, argparse.ArgumentTypeError with a readable reason otherwise ----


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


def positive_int(text: str) -> int:
    return _whole(text, 1)


def non_negative_int(text: str) -> int:
    return _whole(text, 0)


def batch_size(text: str) -> int | Literal["auto"]:
    if text.strip() == accelerate.AUTO:
        return accelerate.AUTO
    try:
        int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a whole number nor 'auto'") from None
    return positive_int(text)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_float(text: str) -> float:
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def fraction(text: str) -> float:
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def unit_interval(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def rate(text: str) -> float:
    """A share that may be 0 but not 1 (a dropout rate of 1 would drop every unit)."""
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text.strip()


def text(value: str) -> str:
    return value


def path(value: str) -> Path:
    return Path(value)


def true_or_false(value: str) -> bool:
    """What MLflow accepts for its boolean variables: true/false or 1/0, in any case."""
    lowered = value.strip().lower()
    if lowered not in ("true", "false", "1", "0"):
        raise argparse.ArgumentTypeError(f"must be true or false, got {value!r}")
    return lowered in ("true", "1")


def list_of(parse: Callable[[str], T]) -> Callable[[str], list[T]]:
    def parse_list(text: str) -> list[T]:
        values = [parse(part.strip()) for part in text.split(",") if part.strip()]
        if not values:
            raise argparse.ArgumentTypeError("give one or more comma-separated values")
        return list(dict.fromkeys(values))  # drop repeats, keep order

    return parse_list


# ---- the declaration ----


@dataclass(frozen=True)
class Option:
    """How one field meets the user: the parser behind its flag, help text, and whether a sweep varies it."""

    help: str
    parse: Callable[[str], Any] = text
    choices: tuple[str, ...] | None = None
    # A sweep takes a comma-separated list for this field and trains one child per combination.
    sweep: bool = False
    # Short name in a sweep child's run name ("lr=0.001 bs=64").
    short: str = ""
    # Not offered as a flag (set by the program itself, e.g. a sweep child's parent run).
    hidden: bool = False
    # Environment variable that replaces the default (on the command line, or of a setting).
    env: str | None = None
    # A positional argument shown as this name (MODEL_URI) instead of a --flag.
    positional: str | None = None
    nargs: str | None = None
    # The default as the reference shows it, when it is decided at start (e.g. by what the machine has).
    shown_default: str | None = None


def option(default: Any, help: str, **how: Any) -> Any:
    return field(default=default, metadata={"option": Option(help, **how)})


def required(help: str, **how: Any) -> Any:
    """An option without a default: the user must give it (`promote --version`, a positional argument)."""
    return field(metadata={"option": Option(help, **how)})


def setting(default: Any, help: str, env: str, **how: Any) -> Any:
    """An environment setting: read from `env` once at start (Settings.from_environ), never from a flag."""
    if callable(default):
        return field(default_factory=default, metadata={"option": Option(help, env=env, **how)})
    return field(default=default, metadata={"option": Option(help, env=env, **how)})


def _option(spec: dataclasses.Field[Any]) -> Option:
    found = spec.metadata.get("option")
    assert isinstance(found, Option), f"{spec.name} is declared without option()"
    return found


def _is_required(spec: dataclasses.Field[Any]) -> bool:
    return spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING


AUTO_BATCH_HELP = f"'auto' ({accelerate.GPU_BATCH_SIZE} with a GPU, else {accelerate.CPU_BATCH_SIZE})"


@dataclass(frozen=True)
class TrainConfig:
    """What decides the trained weights. `auto` values are resolved on the devices at hand when training starts,
    and the run records the resolved ones, so that a reproduction trains exactly the same way."""

    epochs: int = option(5, "training epochs", parse=positive_int)
    # A sweep's grid and its children's run names follow this order: learning rate, then batch size.
    learning_rate: float = option(1e-3, "Adam learning rate", parse=positive_float, sweep=True, short="lr")
    batch_size: int | Literal["auto"] = option(
        accelerate.AUTO, f"images per step, or {AUTO_BATCH_HELP}", parse=batch_size, sweep=True, short="bs"
    )
    seed: int = option(42, "seeds the split, the shuffle order, the weights and dropout", parse=non_negative_int)
    validation_fraction: float = option(
        0.1, "share of the training images held out for per-epoch validation", parse=fraction
    )
    max_train_samples: int | None = option(
        None, "train on a seeded subset of this many images (quick checks); default: all", parse=positive_int
    )
    dropout: float = option(0.5, "dropout rate before the classifier layer", parse=rate)
    mixed_precision: accelerate.Toggle = option(
        accelerate.AUTO,
        "compute in float16, keep weights and output in float32; 'auto': on with a GPU of compute capability "
        "7.0 or more (or unknown)",
        choices=accelerate.TOGGLES,
    )
    xla: accelerate.Toggle = option(
        accelerate.AUTO, "compile the training step with XLA; 'auto': on with a GPU", choices=accelerate.TOGGLES
    )
    deterministic: accelerate.Toggle = option(
        accelerate.AUTO,
        "TensorFlow op determinism, so that the same config, data and image train the same weights; 'auto': on "
        "without a GPU (where it costs little), off with one (where it would also turn XLA off)",
        choices=accelerate.TOGGLES,
    )
    data: str = option(
        "tfds",
        "'tfds' to download MNIST with TensorFlow Datasets (cached in TFDS_DATA_DIR), or the path of a "
        "Keras-format mnist.npz",
        env="TRAINER_DATA",
    )


@dataclass(frozen=True)
class TrackingConfig:
    """Where the run is recorded; nothing here changes the weights."""

    experiment_name: str = option("mnist", "MLflow experiment, created if missing", parse=name)
    run_name: str | None = option(None, "the run's name in the UI; default: MLflow picks one", parse=name)
    no_create_experiment: bool = option(False, "fail instead of creating --experiment-name when it does not exist")
    parent_run_id: str | None = option(None, "set by `trainer sweep` for its children", hidden=True)


@dataclass(frozen=True)
class RegistryConfig:
    """What happens to the trained model in the model registry."""

    registered_model_name: str = option(
        DEFAULT_MODEL_NAME, "the registered model that gets the new version", parse=name
    )
    no_register: bool = option(False, "log the model to the run but create no version")
    promotion_metric: str = option(
        "test_accuracy", "run metric that decides @champion; names ending in 'loss' count lower as better", parse=name
    )
    promotion_margin: float = option(
        0.0, "how much better than the champion a new version must be to take the alias", parse=non_negative_float
    )
    min_accuracy: float = option(
        0.9, "versions below this test accuracy are marked failed and never promoted", parse=unit_interval
    )


@dataclass(frozen=True)
class RunConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {section.name: dataclasses.asdict(getattr(self, section.name)) for section in fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str = "config") -> RunConfig:
        unknown = set(data) - {section.name for section in fields(cls)}
        if unknown:
            raise ConfigError(f"{origin}: unknown section {sorted(unknown)[0]!r}")
        sections = {
            section.name: section_from_dict(
                _section_types()[section.name], data.get(section.name, {}), f"{origin}: {section.name}"
            )
            for section in fields(cls)
        }
        return cls(**sections)

    @classmethod
    def from_json(cls, text: str, origin: str = "config") -> RunConfig:
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ConfigError(f"{origin}: not JSON ({error})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{origin}: expected a JSON object")
        return cls.from_dict(data, origin)

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        try:
            content = Path(path).read_text()
        except OSError as error:
            raise ConfigError(f"{path}: cannot read ({error.strerror or error})") from None
        return cls.from_json(content, str(path))

    def params(self) -> dict[str, str]:
        """The run's params: training fields by their own names (as the UI has always shown them), the other
        sections prefixed; None as 'none' because MLflow params are strings."""
        flat: dict[str, str] = {}
        for section, values in self.to_dict().items():
            for key, value in values.items():
                flat[key if section == "train" else f"{section}.{key}"] = "none" if value is None else str(value)
        return flat


def _section_types() -> dict[str, type[Any]]:
    return {"train": TrainConfig, "tracking": TrackingConfig, "registry": RegistryConfig}


def section_from_dict(cls: type[C], data: Any, origin: str) -> C:
    """Build a section from JSON values, checking each one with its flag's parser."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected an object")
    specs = {spec.name: spec for spec in fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - set(specs)
    if unknown:
        raise ConfigError(f"{origin}.{sorted(unknown)[0]}: unknown option")
    values: dict[str, Any] = {}
    for key, value in data.items():
        spec, how = specs[key], _option(specs[key])
        try:
            values[key] = _checked(value, spec, how)
        except argparse.ArgumentTypeError as error:
            raise ConfigError(f"{origin}.{key}: {error}") from None
    return cls(**values)


def _checked(value: Any, spec: dataclasses.Field[Any], how: Option) -> Any:
    if value is None:
        if spec.default is None:
            return None
        raise argparse.ArgumentTypeError("must not be null")
    if isinstance(spec.default, bool):
        if not isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise argparse.ArgumentTypeError(f"must be a string or a number, got {value!r}")
    if how.choices is not None and value not in how.choices:
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(how.choices)})")
    # repr() of a float reads back to the same float, so the round trip through text is exact.
    return how.parse(repr(value) if isinstance(value, float) else str(value))


# ---- the other commands' options ----


@dataclass(frozen=True)
class TrainOptions:
    """`trainer train` beyond the run's configuration."""

    config: str | None = option(None, "a config.json (a run's artifact); flags given here win")
    result_file: str | None = option(None, "write the outcome as JSON here (used by sweeps)")


@dataclass(frozen=True)
class SweepOptions:
    parallel: int = option(1, "child runs at a time", parse=positive_int)


@dataclass(frozen=True)
class ReproduceOptions:
    model_uri: str = required(MODEL_URI_FORMS, positional="MODEL_URI")
    data: str | None = option(None, "the data to train on; default: the original's source")
    allow_code_change: bool = option(
        False, "reproduce even when the code digest, image or package lock differ from the original's"
    )
    tolerance: float = option(
        DEFAULT_TOLERANCE,
        "largest difference of a test metric that still counts as reproduced",
        parse=non_negative_float,
    )
    register: bool = option(False, "also register the reproduction as a version")


@dataclass(frozen=True)
class LineageOptions:
    model_uri: str = required(MODEL_URI_FORMS, positional="MODEL_URI")


@dataclass(frozen=True)
class ModelsOptions:
    registered_model_name: str = option(DEFAULT_MODEL_NAME, "the registered model", parse=name)
    metric: str = option("test_accuracy", "the run metric shown for each version")


@dataclass(frozen=True)
class PromoteOptions:
    version: int = required("the version the alias moves to", parse=positive_int)
    registered_model_name: str = option(DEFAULT_MODEL_NAME, "the registered model", parse=name)
    alias: str = option(CHAMPION, "the alias to set", parse=name)
    reason: str = option("promoted by hand", "recorded on the version with who set the alias")


@dataclass(frozen=True)
class PredictOptions:
    images: list[str] = required("PNG/JPEG/.npy files of one digit each", positional="IMAGE", nargs="+")
    model: str = option(
        f"models:/{DEFAULT_MODEL_NAME}@{CHAMPION}", "the model to classify with (models:/ or runs:/ URI)"
    )


@dataclass(frozen=True)
class UploadOptions:
    path: Path = required("the folder the trainer named, e.g. /data/pending/<run id>", parse=path, positional="PATH")


# ---- the environment, read once when a command starts ----


def _pending_dir() -> Path:
    return DATA_VOLUME / "pending" if DATA_VOLUME.is_dir() else Path("pending")


@dataclass(frozen=True)
class Settings:
    """What the trainer takes from its environment, read once by `from_environ` when a command starts and
    passed down; nothing reads the environment anywhere else. An empty variable counts as unset.

    The MLFLOW_TRACKING_* variables are MLflow's own, and its client reads them too; the trainer reads them
    for its preflight check and its links, so that both use the same server, login and certificate.
    """

    tracking_uri: str = setting(
        DEFAULT_TRACKING_URI, "the tracking server (http(s)://host:port) or a local store", "MLFLOW_TRACKING_URI"
    )
    tracking_username: str | None = setting(
        None, "the trainer's MLflow user, with MLFLOW_AUTH=basic on the server", "MLFLOW_TRACKING_USERNAME"
    )
    # repr=False: a settings object printed in a traceback or a log must not show the password.
    tracking_password: str | None = field(
        default=None,
        repr=False,
        metadata={"option": Option("the password of MLFLOW_TRACKING_USERNAME", env="MLFLOW_TRACKING_PASSWORD")},
    )
    tracking_server_cert_path: Path | None = setting(
        None,
        "CA certificate the server's TLS certificate is checked against (team mode: certs/ca.crt); default: the "
        "system CAs",
        "MLFLOW_TRACKING_SERVER_CERT_PATH",
        parse=path,
    )
    tracking_insecure_tls: bool = setting(
        False, "skip the TLS certificate check (never in production)", "MLFLOW_TRACKING_INSECURE_TLS",
        parse=true_or_false,
    )  # fmt: skip
    preflight_timeout: float = setting(
        PREFLIGHT_TIMEOUT_SECONDS,
        "seconds to wait for the tracking server before giving up with one line",
        "TRAINER_PREFLIGHT_TIMEOUT",
        parse=positive_float,
    )
    ui_url: str | None = setting(
        None,
        "the UI's address in printed and recorded run links, when the server is known by another name outside "
        "Docker; default: the tracking URI (http://localhost:5000 for a local store)",
        "TRAINER_UI_URL",
    )
    pending_dir: Path = setting(
        _pending_dir,
        "where a trained model is kept when the artifact store cannot take it (`trainer upload` sends it later)",
        "TRAINER_PENDING_DIR",
        parse=path,
        shown_default="/data/pending where /data exists (the image's volume), else ./pending",
    )
    tfds_data_dir: str | None = setting(
        None,
        "TensorFlow Datasets' download cache for --data tfds",
        "TFDS_DATA_DIR",
        shown_default="/data/tfds in the image",
    )
    user: str | None = setting(
        None, "who `trainer promote` records as having set the alias", "TRAINER_USER", shown_default="the login name"
    )
    code_digest_file: Path = setting(
        CODE_DIGEST_FILE,
        "the image build's record of the code digest; where it is missing the digest is computed at run time",
        "TRAINER_CODE_DIGEST_FILE",
        parse=path,
    )
    git_sha: str | None = setting(
        None,
        "the commit recorded as the runs' git_sha (the image's GIT_SHA build argument); default: the checkout's",
        "TRAINER_GIT_SHA",
    )
    image: str | None = setting(
        None, "the trainer image recorded on each run (compose and the chart set it)", "TRAINER_IMAGE"
    )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Raises ConfigError naming the variable when a value does not parse."""
        values: dict[str, Any] = {}
        for spec in fields(cls):
            how = _option(spec)
            assert how.env is not None, f"setting {spec.name} names no variable"
            raw = environ.get(how.env, "")
            if raw == "":
                continue
            try:
                values[spec.name] = how.parse(raw)
            except argparse.ArgumentTypeError as error:
                raise ConfigError(f"{how.env}: {error}") from None
        return cls(**values)


# ---- the command line, generated ----


def flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_options(
    parser: argparse.ArgumentParser, cls: type[Any], *, sweep: bool = False, environ: Mapping[str, str] | None = None
) -> None:
    """One flag per field of `cls`. With `sweep`, fields marked sweepable take comma-separated lists. A field
    with an `env` variable takes its default from `environ` (the environment the command started with)."""
    for spec in fields(cls):
        how = _option(spec)
        if how.positional:
            parser.add_argument(spec.name, metavar=how.positional, type=how.parse, nargs=how.nargs, help=how.help)
        elif how.hidden:
            parser.add_argument(flag(spec.name), dest=spec.name, default=spec.default, help=argparse.SUPPRESS)
        elif isinstance(spec.default, bool):
            parser.add_argument(flag(spec.name), dest=spec.name, action="store_true", help=how.help)
        elif sweep and how.sweep:
            parser.add_argument(
                flag(spec.name), dest=spec.name, type=list_of(how.parse), default=[spec.default],
                help=f"comma-separated values to try: {how.help}",
            )  # fmt: skip
        elif _is_required(spec):
            parser.add_argument(flag(spec.name), dest=spec.name, type=how.parse, required=True, help=how.help)
        else:
            # argparse runs a text default through `type`, so a bad TRAINER_DATA gets the flag's own error.
            from_env = (environ or {}).get(how.env, "") if how.env else ""
            parser.add_argument(
                flag(spec.name), dest=spec.name, type=how.parse, choices=how.choices, default=from_env or spec.default,
                help=how.help,
            )  # fmt: skip


def section_from_namespace(cls: type[C], namespace: argparse.Namespace, **overrides: Any) -> C:
    values = {spec.name: getattr(namespace, spec.name) for spec in fields(cls)}  # type: ignore[arg-type]
    return cls(**{**values, **overrides})


def from_namespace(namespace: argparse.Namespace, **train_overrides: Any) -> RunConfig:
    return RunConfig(
        train=section_from_namespace(TrainConfig, namespace, **train_overrides),
        tracking=section_from_namespace(TrackingConfig, namespace),
        registry=section_from_namespace(RegistryConfig, namespace),
    )


def sweep_grid(namespace: argparse.Namespace) -> dict[str, list[Any]]:
    """The values a sweep's flags asked for, per sweepable training field."""
    return {spec.name: getattr(namespace, spec.name) for spec in fields(TrainConfig) if _option(spec).sweep}


def short_label(values: Mapping[str, Any]) -> str:
    """'lr=0.001 bs=64': a sweep child's run name."""
    specs = {spec.name: _option(spec) for spec in fields(TrainConfig)}
    return " ".join(
        f"{specs[key].short or key}={value:g}" if isinstance(value, float) else f"{specs[key].short or key}={value}"
        for key, value in values.items()
    )


def flag_defaults(config: RunConfig) -> dict[str, Any]:
    """`trainer train --config FILE`: the file's values as the defaults of the flags, so explicit flags still win."""
    return {key: value for section in config.to_dict().values() for key, value in section.items()}


# ---- the reference the docs are generated from ----

# Which option groups each command takes, in the order its --help lists them (cli.build_parser follows it).
COMMAND_OPTIONS: dict[str, tuple[type[Any], ...]] = {
    "train": (TrainConfig, TrackingConfig, RegistryConfig, TrainOptions),
    "sweep": (TrainConfig, TrackingConfig, RegistryConfig, SweepOptions),
    "reproduce": (ReproduceOptions,),
    "lineage": (LineageOptions,),
    "models": (ModelsOptions,),
    "promote": (PromoteOptions,),
    "predict": (PredictOptions,),
    "upload": (UploadOptions, RegistryConfig),
}
# The reference's sections: the run's configuration by its config.json sections, the commands' own options
# by command, the environment last.
REFERENCE_SECTIONS: tuple[tuple[str, type[Any]], ...] = (
    ("train", TrainConfig),
    ("train", TrainOptions),
    ("tracking", TrackingConfig),
    ("registry", RegistryConfig),
    ("sweep", SweepOptions),
    ("reproduce", ReproduceOptions),
    ("lineage", LineageOptions),
    ("models", ModelsOptions),
    ("promote", PromoteOptions),
    ("predict", PredictOptions),
    ("upload", UploadOptions),
    ("environment", Settings),
)


def _shown(spec: dataclasses.Field[Any], how: Option) -> str:
    if how.shown_default is not None:
        return how.shown_default
    if _is_required(spec):
        return "(required)"
    if spec.default is None:
        return ""
    if isinstance(spec.default, bool):
        return "true" if spec.default else "false"
    if isinstance(spec.default, float):
        return f"{spec.default:g}"
    return str(spec.default)


def reference() -> list[dict[str, str]]:
    """Every option and environment setting, for the configuration reference page: name (the flag or the
    positional argument; "" for a setting only the environment gives), env, default, description, section
    (config section, command or "environment") and commands (those that take it, comma-separated)."""
    rows = []
    for section, cls in REFERENCE_SECTIONS:
        takers = [command for command, groups in COMMAND_OPTIONS.items() if cls in groups]
        for spec in fields(cls):
            how = _option(spec)
            if how.hidden:
                continue
            shown_name = "" if cls is Settings else how.positional or flag(spec.name)
            description = how.help
            if how.env and how.env.startswith("MLFLOW_"):
                description += " (MLflow's own variable: its client reads it too)"
            if cls is TrainConfig and how.sweep:
                description += " (`trainer sweep` takes a comma-separated list)"
            rows.append(
                {
                    "name": shown_name,
                    "env": how.env or "",
                    "default": _shown(spec, how),
                    "description": description,
                    "section": section,
                    "commands": ", ".join(takers),
                }
            )
    return rows
