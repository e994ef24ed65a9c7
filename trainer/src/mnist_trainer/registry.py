"""Registering a trained model as a new version, described well enough to choose between versions."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"
CHALLENGER = "challenger"
# How often a trainer re-compares after finding the alias moved under it by a concurrent trainer; each
# lost race means some other version won, so this bounds the wait, not correctness.
PROMOTION_ATTEMPTS = 25
# Pause between setting the alias and reading it back: long against one HTTP round trip, so a concurrent
# writer that read the old champion has written by then and the loser of the race sees it and re-compares.
# Jittered so that trainers finishing together do not keep colliding in lockstep.
PROMOTION_SETTLE_SECONDS = 0.3

REGISTERED_MODEL_DESCRIPTION = """\
Handwritten-digit classifier (MNIST, 10 classes), a Keras convnet trained by the stack's trainer.

Input: float32 images of shape (n, 28, 28, 1), pixel values scaled to [0, 1]. \
Output: (n, 10) class probabilities.

Load the current best with `mlflow.pyfunc.load_model("models:/{name}@champion")`, a given version with \
`models:/{name}/<version>`. The trainer moves `@champion` only to a version that beats it on its promotion \
metric; a version that does not gets `@challenger`. `trainer promote --version N` overrides by hand.

Each version's description lists its parameters, metrics, data and the run that made it.
"""


@dataclass(frozen=True)
class VersionFacts:
    """What a version's description shows: enough to compare versions without opening their runs."""

    params: Mapping[str, object]
    metrics: Mapping[str, float]
    data_source: str
    data_digest: str
    run_url: str
    devices: str


def _table(header: tuple[str, str], rows: Mapping[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {key} | {value} |" for key, value in sorted(rows.items())]
    return "\n".join(lines)


def version_description(facts: VersionFacts) -> str:
    metrics = {name: f"{value:.4f}" for name, value in facts.metrics.items()}
    params = {name: str(value) for name, value in facts.params.items()}
    # Runs from before the --mixed-precision option have no such param: say nothing rather than guess.
    precision = {"on": " in mixed precision (float16 compute, float32 output)", "off": " in float32"}.get(
        params.get("mixed_precision", ""), ""
    )
    return "\n\n".join(
        [
            f"Trained by run [{facts.run_url.rsplit('/', 1)[-1]}]({facts.run_url}) on {facts.devices}{precision}.",
            "**Metrics**\n\n" + _table(("metric", "value"), metrics),
            "**Parameters**\n\n" + _table(("parameter", "value"), params),
            f"**Data**: `{facts.data_source}` (digest `{facts.data_digest}`)",
        ]
    )


def register(model_uri: str, name: str, facts: VersionFacts, tags: Mapping[str, str]) -> int:
    """Create a new version of `name` from `model_uri`; returns its number."""
    import mlflow
    from mlflow import MlflowClient

    version = mlflow.register_model(model_uri, name, tags=dict(tags))
    client = MlflowClient()
    client.update_model_version(name, version.version, description=version_description(facts))
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=REGISTERED_MODEL_DESCRIPTION.format(name=name))
    return int(version.version)


@dataclass(frozen=True)
class PromotionRule:
    """Move the champion alias only to a version better by at least `margin` on `metric`."""

    metric: str = "test_accuracy"
    greater_is_better: bool = True
    margin: float = 0.0

    def improvement(self, candidate: float, incumbent: float) -> float:
        return candidate - incumbent if self.greater_is_better else incumbent - candidate

    def beats(self, candidate: float, incumbent: float) -> bool:
        gain = self.improvement(candidate, incumbent)
        return gain > 0 and gain >= self.margin


@dataclass(frozen=True)
class Promotion:
    version: int
    alias: str  # CHAMPION or CHALLENGER
    reason: str


def _alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _set_alias(client: MlflowClient, name: str, alias: str, version: int) -> bool:
    """False when a concurrent trainer created the same alias at the same instant.

    MLflow inserts a new alias row without locking; on Postgres the loser of two simultaneous first sets
    gets a unique-key violation (HTTP 400), which only means: someone else just wrote, compare again.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.set_registered_model_alias(name, alias, str(version))
    except MlflowException as error:
        if "duplicate key" in str(error) or "UniqueViolation" in str(error):
            return False
        raise
    return True


def _number(version: ModelVersion | None) -> int | None:
    return None if version is None else int(version.version)


def version_metric(client: MlflowClient, version: ModelVersion, metric: str) -> float | None:
    """The metric as its run logged it (the tag is a rounded copy for people)."""
    if not version.run_id:
        return None
    value = client.get_run(version.run_id).data.metrics.get(metric)
    return None if value is None else float(value)


def promote(client: MlflowClient, name: str, version: int, rule: PromotionRule) -> Promotion:
    """Give `version` the champion alias if it beats the champion, else the challenger alias.

    Several trainers may finish at once. Each re-reads the champion right before setting it and reads it
    back after a pause; one that finds a racing trainer's version there compares again, so the alias ends
    on the better version instead of the last writer's.
    """
    candidate = client.get_model_version(name, str(version))
    score = version_metric(client, candidate, rule.metric)
    if score is None:
        raise ValueError(f"version {version} has no metric {rule.metric!r} to compare on")
    for _ in range(PROMOTION_ATTEMPTS):
        incumbent = _alias_version(client, name, CHAMPION)
        if _number(incumbent) == version:
            return Promotion(version, CHAMPION, "already champion")
        incumbent_score = None if incumbent is None else version_metric(client, incumbent, rule.metric)
        if incumbent is not None and incumbent_score is not None and not rule.beats(score, incumbent_score):
            reason = (
                f"{rule.metric} {score:.4f} does not beat champion v{incumbent.version} "
                f"({incumbent_score:.4f}) by the margin {rule.margin:g}"
            )
            if not _set_alias(client, name, CHALLENGER, version):
                continue
            client.set_model_version_tag(name, str(version), "promotion", reason)
            return Promotion(version, CHALLENGER, reason)
        if _number(_alias_version(client, name, CHAMPION)) != _number(incumbent):
            continue  # moved between our read and now: compare with the new champion
        if not _set_alias(client, name, CHAMPION, version):
            continue
        time.sleep(PROMOTION_SETTLE_SECONDS * random.uniform(1.0, 2.0))
        settled = _alias_version(client, name, CHAMPION)
        if _number(settled) == version:
            reason = (
                "first version with a champion"
                if incumbent is None
                else f"{rule.metric} {score:.4f} beats v{incumbent.version} "
                + ("(which has no such metric)" if incumbent_score is None else f"({incumbent_score:.4f})")
            )
            client.set_model_version_tag(name, str(version), "promotion", reason)
            return Promotion(version, CHAMPION, reason)
    raise RuntimeError(f"the {CHAMPION} alias of {name} kept moving; version {version} left without an alias")


def promote_by_hand(client: MlflowClient, name: str, version: int, alias: str, who: str, reason: str) -> None:
    """A person's choice: set the alias and record who and why on the version."""
    client.get_model_version(name, str(version))  # raises for a version that does not exist
    client.set_registered_model_alias(name, alias, str(version))
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    client.set_model_version_tag(name, str(version), f"{alias}_set_by", f"{who} at {stamp}: {reason}")


def versions_table(client: MlflowClient, name: str, metric: str) -> list[dict[str, Any]]:
    """One row per version, newest first: what `trainer models` prints."""
    aliases: dict[str, list[str]] = {}
    for alias, number in client.get_registered_model(name).aliases.items():
        aliases.setdefault(str(number), []).append(alias)
    rows = []
    for version in client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"]):
        rows.append(
            {
                "version": int(version.version),
                "aliases": ",".join(sorted(aliases.get(str(version.version), []))),
                metric: version_metric(client, version, metric),
                "validation": version.tags.get("validation_status", ""),
                "created": datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).strftime("%Y-%m-%d %H:%M"),
                "run_id": version.run_id or "",
            }
        )
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain aligned text table; floats to 4 decimals, missing values as '-'."""
    if not rows:
        return "(none)"
    columns = list(rows[0])

    def cell(value: Any) -> str:
        if value is None or value == "":
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = ["  ".join(column.ljust(widths[i]) for i, column in enumerate(columns))]
    lines += ["  ".join(value.ljust(widths[i]) for i, value in enumerate(line)) for line in cells]
    return "\n".join(line.rstrip() for line in lines)
