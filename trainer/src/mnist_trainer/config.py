"""The configuration of a training run, declared once: type, bounds, default and help of every option.

Everything else is derived from these dataclasses, in the spirit of Hugging Face's `HfArgumentParser`: the
command-line flags (`add_options`), the object built from parsed flags (`from_namespace`), the run's params
and its `config.json` artifact (`to_dict`), the config file a sweep hands each child and `trainer reproduce`
reads back (`from_dict`). Adding a training option is one field in `TrainConfig` plus the code that uses it.

Values read from a file go through the same parsers as flags, so a hand-edited config.json with
`"epochs": 0` gets the same one-line error as `--epochs 0`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

from mnist_trainer import accelerate

T = TypeVar("T")
C = TypeVar("C")
CONFIG_ARTIFACT = "config.json"


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
    # Environment variable that replaces the default on the command line.
    env: str | None = None


def option(default: Any, help: str, **how: Any) -> Any:
    return field(default=default, metadata={"option": Option(help, **how)})


def _option(spec: dataclasses.Field[Any]) -> Option:
    found = spec.metadata.get("option")
    assert isinstance(found, Option), f"{spec.name} is declared without option()"
    return found


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

    registered_model_name: str = option("mnist", "the registered model that gets the new version", parse=name)
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


# ---- the command line, generated ----


def flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, cls: type[Any], *, sweep: bool = False) -> None:
    """One flag per field of `cls`. With `sweep`, fields marked sweepable take comma-separated lists."""
    for spec in fields(cls):
        how = _option(spec)
        if how.hidden:
            parser.add_argument(flag(spec.name), dest=spec.name, default=spec.default, help=argparse.SUPPRESS)
        elif isinstance(spec.default, bool):
            parser.add_argument(flag(spec.name), dest=spec.name, action="store_true", help=how.help)
        elif sweep and how.sweep:
            parser.add_argument(
                flag(spec.name), dest=spec.name, type=list_of(how.parse), default=[spec.default],
                help=f"comma-separated values to try: {how.help}",
            )  # fmt: skip
        else:
            default = os.environ.get(how.env, spec.default) if how.env else spec.default
            parser.add_argument(
                flag(spec.name), dest=spec.name, type=how.parse, choices=how.choices, default=default, help=how.help
            )


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


def defaults_from_file(parser: argparse.ArgumentParser, path: str) -> None:
    """`trainer train --config FILE`: the file's values become the defaults, so explicit flags still win."""
    config = RunConfig.from_file(path)
    parser.set_defaults(**{key: value for section in config.to_dict().values() for key, value in section.items()})
