"""`trainer lineage MODEL_URI` and `trainer reproduce MODEL_URI`: read a version's record, and train it again.

MODEL_URI is `models:/NAME/N`, `models:/NAME@ALIAS` or `runs:/RUN_ID[/model]`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from mnist_trainer import data as mnist_data
from mnist_trainer import lineage, tracking
from mnist_trainer.config import (
    CONFIG_ARTIFACT,
    MODEL_URI_FORMS,
    ConfigError,
    ReproduceOptions,
    RunConfig,
    Settings,
    TrainConfig,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

# Test metrics gate `reproduce`'s exit code; the last epoch's training and validation metrics are shown too.
GATED_METRICS = ("test_accuracy", "test_loss")
SHOWN_METRICS = (*GATED_METRICS, "val_accuracy", "val_loss", "train_accuracy", "train_loss")
EXIT_NOT_REPRODUCED = 3
# Compared between the original run and this process before a reproduction: code, image, installed packages.
ENVIRONMENT_TAGS = (lineage.CODE_DIGEST_TAG, "image", "package_lock_digest")


class RecordError(ValueError):
    """The URI names nothing reproducible, the record is incomplete, or the original cannot be trained again
    here as asked (other data, other code); the message says which, in one line."""


@dataclass(frozen=True)
class Origin:
    run_id: str
    model: str | None = None  # registered model and version, when the URI named one
    version: int | None = None
    aliases: tuple[str, ...] = ()


def resolve(client: MlflowClient, uri: str) -> Origin:
    from mlflow.exceptions import MlflowException

    runs = re.fullmatch(r"runs:/([0-9a-fA-F]{32})(/.*)?", uri)
    by_number = re.fullmatch(r"models:/([^/@]+)/(\d+)", uri)
    by_alias = re.fullmatch(r"models:/([^/@]+)@([\w-]+)", uri)
    try:
        if runs:
            return Origin(client.get_run(runs.group(1)).info.run_id)
        if by_number:
            version = client.get_model_version(by_number.group(1), by_number.group(2))
        elif by_alias:
            version = client.get_model_version_by_alias(by_alias.group(1), by_alias.group(2))
        else:
            raise RecordError(f"{uri!r} is not a model URI ({MODEL_URI_FORMS})")
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise RecordError(f"{uri}: not found ({tracking.first_line(error, 160)})") from None
        raise
    if not version.run_id:
        raise RecordError(f"{uri}: version {version.version} was not made by a run; nothing to reproduce")
    return Origin(version.run_id, version.name, int(version.version), tuple(sorted(version.aliases or ())))


@dataclass(frozen=True)
class Record:
    origin: Origin
    run: Run
    config: RunConfig
    config_text: str

    @property
    def tags(self) -> dict[str, str]:
        return dict(self.run.data.tags)


def read_record(client: MlflowClient, origin: Origin) -> Record:
    import mlflow.artifacts

    run = client.get_run(origin.run_id)
    try:
        text = mlflow.artifacts.load_text(f"runs:/{origin.run_id}/{CONFIG_ARTIFACT}")
    except Exception as error:  # MLflow raises several types for a missing artifact
        raise RecordError(
            f"run {origin.run_id} has no {CONFIG_ARTIFACT} (trained before runs recorded their config?): "
            f"{type(error).__name__}"
        ) from None
    try:
        config = RunConfig.from_json(text, f"{CONFIG_ARTIFACT} of run {origin.run_id}")
    except ConfigError as error:
        raise RecordError(str(error)) from None
    return Record(origin, run, config, text)


def environment_changes(record: Record, here: lineage.Environment) -> list[str]:
    """What differs between the original's code/image/packages and this process's, one phrase each."""
    now = {**here.tags(), "image": here.image or ""}
    changes = []
    for tag in ENVIRONMENT_TAGS:
        original, current = record.tags.get(tag, ""), now.get(tag, "")
        if original != current:
            changes.append(f"{tag} {original or 'none'} in the original, {current or 'none'} here")
    return changes


def comparison(original: dict[str, float], reproduced: dict[str, float], tolerance: float) -> tuple[str, bool]:
    """The side-by-side table and whether every test metric is within the tolerance."""
    from mnist_trainer.registry import format_table

    rows: list[dict[str, Any]] = []
    within = True
    for metric in SHOWN_METRICS:
        before, after = original.get(metric), reproduced.get(metric)
        delta = None if before is None or after is None else after - before
        if metric in GATED_METRICS:
            ok = delta is not None and abs(delta) <= tolerance
            within = within and ok
            check = "ok" if ok else "DIFFERS"
        else:
            check = "(shown)"
        rows.append(
            {
                "metric": metric,
                "original": before,
                "reproduced": after,
                "delta": "-" if delta is None else f"{delta:+.6f}",
                "check": check,
            }
        )
    return format_table(rows), within


def final_metrics(run: Run) -> dict[str, float]:
    """Test metrics and the last epoch's training/validation metrics (the run's latest values)."""
    return {key: float(value) for key, value in run.data.metrics.items() if key in SHOWN_METRICS}


def chain(client: MlflowClient, record: Record, ui_link: str) -> str:
    """version -> run -> config -> data digest -> code digest -> image -> package lock, one link a line."""
    import mlflow.artifacts

    tags, origin, run = record.tags, record.origin, record.run
    if origin.model is not None:
        aliases = f" @{', @'.join(origin.aliases)}" if origin.aliases else ""
        version = f"models:/{origin.model}/{origin.version}{aliases}"
    else:
        version = "(the URI named a run, not a version)"
    train = record.config.train
    config = ", ".join(f"{key}={value}" for key, value in json.loads(record.config_text)["train"].items())
    try:
        lock = mlflow.artifacts.load_text(f"runs:/{origin.run_id}/{lineage.PACKAGE_LOCK_ARTIFACT}")
        lock_line = f"{lineage.PACKAGE_LOCK_ARTIFACT}: {len(lock.splitlines())} packages, {lineage.digest_text(lock)}"
    except Exception:
        lock_line = f"{lineage.PACKAGE_LOCK_ARTIFACT}: missing (digest tag {tags.get('package_lock_digest', 'none')})"
    git = tags.get("git_sha", "not recorded (image built without GIT_SHA)")
    lines = [
        ("version", version),
        ("run", f"{origin.run_id} ({run.info.status}, {ui_link})"),
        ("config", f"{CONFIG_ARTIFACT}: {config}"),
        ("data digest", f"{tags.get('data_digest', 'not recorded')} ({tags.get('data_source', train.data)})"),
        (
            "code digest",
            f"{tags.get(lineage.CODE_DIGEST_TAG, 'not recorded')} ({tags.get('code_digest_source', '?')}); git {git}",
        ),
        ("image", tags.get("image", "none (ran outside Docker)")),
        ("package lock", lock_line),
        (
            "determinism",
            f"TF op determinism {tags.get('tf_op_determinism', 'not recorded')}, seed {train.seed}, "
            f"devices {tags.get('devices', '?')}",
        ),
    ]
    width = max(len(label) for label, _ in lines)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in lines)


# ---- `trainer reproduce`: refuse first, then train ----


@dataclass(frozen=True)
class Plan:
    """A reproduction that passed every check: the original's record, the config to train, what differs."""

    record: Record
    config: RunConfig
    dataset: mnist_data.Mnist
    changes: list[str]  # code, image or packages that differ from the original's, one phrase each
    tolerance: float


@dataclass(frozen=True)
class Reproduction:
    original_run_id: str
    run_id: str
    table: str  # the original's and the reproduction's metrics side by side
    within: bool  # every test metric within the tolerance


def prepare(options: ReproduceOptions, settings: Settings) -> Plan:
    """Everything that can refuse does so here, before the new run exists: URI, record, data digest, code."""
    import mlflow

    uri = settings.tracking_uri
    client = tracking.client(uri)
    mlflow.set_tracking_uri(uri)  # artifact downloads (config.json) go through the same server
    record = read_record(client, resolve(client, options.model_uri))
    original_id = record.origin.run_id
    train = replace(record.config.train, data=options.data or record.config.train.data)
    dataset = mnist_data.load_for_training(train, settings.tfds_data_dir)
    digest, recorded = tracking.dataset_digest(dataset), record.tags.get("data_digest", "")
    if digest != recorded:
        raise RecordError(
            f"data digest {digest} of {train.data} differs from the original's {recorded or '(none recorded)'} "
            f"(run {original_id}); nothing was logged"
        )
    changes = environment_changes(record, lineage.current_environment(settings))
    if changes and not options.allow_code_change:
        raise RecordError(
            f"the original ran elsewhere: {'; '.join(changes)}; pass --allow-code-change to reproduce anyway"
        )
    experiment_name = client.get_experiment(record.run.info.experiment_id).name
    config = _reproduction_config(record, train, experiment_name, options.register)
    return Plan(record, config, dataset, changes, options.tolerance)


def _reproduction_config(record: Record, train: TrainConfig, experiment_name: str, register: bool) -> RunConfig:
    """The original's config, trained as a top-level run next to the original, registered only if asked."""
    return replace(
        record.config,
        train=train,
        tracking=replace(
            record.config.tracking,
            experiment_name=experiment_name,
            run_name=f"reproduce {record.run.info.run_name or record.origin.run_id}",
            parent_run_id=None,
            no_create_experiment=False,
        ),
        registry=replace(record.config.registry, no_register=not register),
    )


def reproduce(plan: Plan, settings: Settings) -> Reproduction:
    """Train the plan's config in a new run tagged as a reproduction, register it if asked, compare metrics."""
    from mnist_trainer.registry import register_and_promote
    from mnist_trainer.training import train_and_track

    original_id = plan.record.origin.run_id
    extra_tags = {tracking.REPRODUCES_TAG: original_id}
    if plan.changes:
        extra_tags["reproduced_across"] = ", ".join(change.split()[0] for change in plan.changes)
    result = train_and_track(plan.config, plan.dataset, settings, extra_tags)
    if not plan.config.registry.no_register:
        register_and_promote(result, settings, plan.config.registry)
    reproduced = tracking.client(settings.tracking_uri).get_run(result.run_id)
    table, within = comparison(final_metrics(plan.record.run), final_metrics(reproduced), plan.tolerance)
    return Reproduction(original_id, result.run_id, table, within)


def lineage_of(model_uri: str, settings: Settings) -> str:
    """`trainer lineage MODEL_URI`: the chain of records behind a version or run."""
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    client = tracking.client(settings.tracking_uri)
    record = read_record(client, resolve(client, model_uri))
    link = tracking.run_link(settings, record.run.info.experiment_id, record.origin.run_id)
    return chain(client, record, link)
