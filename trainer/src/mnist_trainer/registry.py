"""Registering a trained model as a new version, described well enough to choose between versions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from mnist_trainer.config import RegistryConfig, Settings
    from mnist_trainer.tracking import TrainResult

CHAMPION = "champion"
CHALLENGER = "challenger"
# Bound on read-write rounds of one promotion. Each round that writes moves the aliases to what some complete
# read called for; rounds repeat only while other trainers keep registering, so this bounds the wait, not
# correctness.
PROMOTION_ATTEMPTS = 50

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
    # The run's lineage tags (lineage.LINEAGE_TAGS): code digest, git commit, image, package lock, determinism.
    lineage: Mapping[str, str] = field(default_factory=dict)


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
            *([lineage_block(facts.lineage)] if facts.lineage else []),
        ]
    )


def _short(digest: str) -> str:
    """'sha256:0123456789ab': enough to tell versions apart at a glance; the tags hold the whole digest."""
    algorithm, _, value = digest.partition(":")
    return f"{algorithm}:{value[:12]}" if value else digest[:19]


def lineage_block(tags: Mapping[str, str]) -> str:
    """Where the version came from, in a few lines: `trainer lineage models:/NAME/N` prints the whole chain."""
    code = f"`{_short(tags['code_digest'])}`" if tags.get("code_digest") else "unknown"
    if tags.get("git_sha"):
        code += f" (git `{tags['git_sha'][:12]}`)"
    lines = [
        f"- code: {code}",
        f"- image: `{tags['image']}`" if tags.get("image") else "- image: none (ran outside Docker)",
        f"- packages: `{_short(tags.get('package_lock_digest', ''))}` (artifact `packages.lock.txt`)",
        f"- config: artifact `config.json`; TF op determinism {tags.get('tf_op_determinism', 'unknown')}",
    ]
    return "**Lineage**\n\n" + "\n".join(lines)


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
    alias: str | None  # CHAMPION, CHALLENGER, or None when later versions took both
    reason: str


def _set_alias(client: MlflowClient, name: str, alias: str, version: int) -> bool:
    """False when a concurrent trainer created the same alias at the same instant.

    MLflow inserts a new alias row without locking; on Postgres the loser of two simultaneous first sets
    gets a unique-key violation (HTTP 400), which only means: someone else just wrote, read again.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.set_registered_model_alias(name, alias, str(version))
    except MlflowException as error:
        if "duplicate key" in str(error) or "UniqueViolation" in str(error):
            return False
        raise
    return True


def version_metric(client: MlflowClient, version: ModelVersion, metric: str) -> float | None:
    """The metric as its run logged it (the tag is a rounded copy for people)."""
    if not version.run_id:
        return None
    value = client.get_run(version.run_id).data.metrics.get(metric)
    return None if value is None else float(value)


@dataclass(frozen=True)
class Candidate:
    version: int
    score: float


@dataclass(frozen=True)
class Decision:
    """The aliases a set of versions calls for, and each version's reason."""

    champion: int | None
    challenger: int | None
    reasons: Mapping[int, tuple[str, str]]  # version -> (alias it earned, why)


def decide(candidates: Sequence[Candidate], rule: PromotionRule, base: Candidate | None = None) -> Decision:
    """Replay the rule over the versions in version-number order, starting from `base` (a champion a person set).

    A function of the set of versions only, never of who read or wrote first: every trainer that has seen the
    same versions wants the same aliases. Version by version it is exactly the sequential rule (the new one
    takes @champion if it beats the champion by the margin, else @challenger), so one trainer at a time gets
    the behaviour it always had.
    """
    champion, challenger = base, None
    reasons: dict[int, tuple[str, str]] = {}
    for candidate in sorted(candidates, key=lambda c: c.version):
        if champion is None:
            champion = candidate
            reasons[candidate.version] = (CHAMPION, "first version with a champion")
        elif rule.beats(candidate.score, champion.score):
            reasons[candidate.version] = (
                CHAMPION,
                f"{rule.metric} {candidate.score:.4f} beats v{champion.version} ({champion.score:.4f})",
            )
            champion = candidate
        else:
            challenger = candidate
            reasons[candidate.version] = (
                CHALLENGER,
                f"{rule.metric} {candidate.score:.4f} does not beat champion v{champion.version} "
                f"({champion.score:.4f}) by the margin {rule.margin:g}",
            )
    return Decision(champion.version if champion else None, challenger.version if challenger else None, reasons)


# A person's `trainer promote --alias champion` pins the champion: automatic promotion then starts from that
# version and considers only versions registered after it (registered-model tags).
PINNED_VERSION_TAG = "champion_pinned_version"
PINNED_AFTER_TAG = "champion_pinned_after"


class _Scores:
    """Each version's metric, fetched once per promotion (a finished run's metrics do not change)."""

    def __init__(self, client: MlflowClient, metric: str) -> None:
        self.client, self.metric = client, metric
        self.known: dict[str, float | None] = {}

    def of(self, versions: Sequence[ModelVersion]) -> dict[str, float | None]:
        from concurrent.futures import ThreadPoolExecutor

        missing = [v for v in versions if str(v.version) not in self.known]
        if missing:
            # In parallel: under load each call takes the server's latency, and a model may have many versions.
            with ThreadPoolExecutor(max_workers=8) as pool:
                scores = pool.map(lambda v: version_metric(self.client, v, self.metric), missing)
                self.known.update({str(v.version): score for v, score in zip(missing, scores, strict=True)})
        return {str(v.version): self.known[str(v.version)] for v in versions}


def _state(
    client: MlflowClient, name: str, rule: PromotionRule, scores: _Scores
) -> tuple[dict[str, int], Decision, list[int]]:
    """One read: the aliases now, then every version and what they call for."""
    model = client.get_registered_model(name)
    aliases = {alias: int(number) for alias, number in model.aliases.items()}
    pinned = model.tags.get(PINNED_VERSION_TAG)
    pinned_after = int(model.tags.get(PINNED_AFTER_TAG, "0"))
    versions = list(client.search_model_versions(f"name = '{name}'"))
    known = scores.of(versions)
    candidates, base = [], None
    for version in versions:
        number, score = int(version.version), known[str(version.version)]
        if score is None or version.tags.get("validation_status") == "failed":
            continue
        if pinned is not None and number == int(pinned):
            base = Candidate(number, score)
        elif pinned is None or number > pinned_after:
            candidates.append(Candidate(number, score))
    return aliases, decide(candidates, rule, base), [int(v.version) for v in versions]


def promote(client: MlflowClient, name: str, version: int, rule: PromotionRule) -> Promotion:
    """Make the aliases what the set of registered versions calls for; returns what `version` earned.

    Correct whatever the latency, with no pause to tune: read everything, write the aliases that differ from
    what `decide` wants, and read again, until a read made after this trainer's last write shows the aliases
    already right for every version that read returned. Every trainer does this after its version exists.
    Why the end state is right: take the last alias write the server applied. Its writer read again after it
    (each write is answered before the next read is sent) and stopped only when the aliases were right for all
    versions it saw; a version registered after that read has a trainer that reads later still and would have
    written, contradicting "last". So the final aliases are `decide(all versions)`, in any interleaving.
    """
    scores = _Scores(client, rule.metric)
    candidate = client.get_model_version(name, str(version))
    if scores.of([candidate])[str(version)] is None:
        raise ValueError(f"version {version} has no metric {rule.metric!r} to compare on")
    for _ in range(PROMOTION_ATTEMPTS):
        aliases, decision, seen = _state(client, name, rule, scores)
        wanted = {CHAMPION: decision.champion, CHALLENGER: decision.challenger}
        stale = {
            alias: number for alias, number in wanted.items() if number is not None and aliases.get(alias) != number
        }
        if stale:
            for alias, number in stale.items():
                _set_alias(client, name, alias, number)
            continue
        if version not in seen:
            continue  # not yet visible to this read (cannot happen on one database; cheap to be sure)
        _, reason = decision.reasons.get(version, ("", "registered before the champion was set by hand"))
        held = [alias for alias, number in wanted.items() if number == version]
        if not held and version in decision.reasons:
            reason += "; a later version has since taken its place"
        client.set_model_version_tag(name, str(version), "promotion", reason)
        return Promotion(version, held[0] if held else None, reason)
    raise RuntimeError(f"the aliases of {name} kept changing; version {version} left as it is")


def promote_by_hand(client: MlflowClient, name: str, version: int, alias: str, who: str, reason: str) -> None:
    """A person's choice: set the alias and record who and why on the version.

    For @champion the choice is also pinned (registered-model tags): automatic promotion starts from it and
    weighs only versions registered later, so a rollback is not undone by the next trainer's replay.
    """
    client.get_model_version(name, str(version))  # raises for a version that does not exist
    if alias == CHAMPION:
        newest = max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        client.set_registered_model_tag(name, PINNED_VERSION_TAG, str(version))
        client.set_registered_model_tag(name, PINNED_AFTER_TAG, str(newest))
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


def promotion_rule(options: RegistryConfig) -> PromotionRule:
    lower_is_better = options.promotion_metric.endswith("loss")
    return PromotionRule(options.promotion_metric, not lower_is_better, options.promotion_margin)


def register_and_promote(result: TrainResult, settings: Settings, options: RegistryConfig) -> int:
    """Register the run's model as a new version, describe it, gate it on accuracy and promote it."""
    from mnist_trainer import tracking
    from mnist_trainer.lineage import LINEAGE_TAGS

    client = tracking.client(settings.tracking_uri)
    name = options.registered_model_name
    run = client.get_run(result.run_id)
    accuracy = result.metrics["test_accuracy"]
    validation = "passed" if accuracy >= options.min_accuracy else "failed"
    lineage = {key: run.data.tags[key] for key in LINEAGE_TAGS if key in run.data.tags}
    facts = VersionFacts(
        params=run.data.params,
        metrics=result.metrics,
        data_source=run.data.tags.get("data_source", ""),
        data_digest=run.data.tags.get("data_digest", ""),
        run_url=tracking.run_link(settings, result.experiment_id, result.run_id),
        devices=run.data.tags.get("devices", ""),
        lineage=lineage,
    )
    # Created with the version in one request, so a concurrent trainer's promotion never sees it untagged.
    tags: dict[str, str] = {**lineage, "test_accuracy": f"{accuracy:.4f}", "validation_status": validation}
    version = register(result.model_uri, name, facts, tags)
    print(f"trainer: registered {name} version {version} (models:/{name}/{version})", flush=True)
    if validation == "failed":
        print(
            f"trainer: version {version} failed validation (test_accuracy {accuracy:.4f} < {options.min_accuracy});"
            " aliases unchanged",
            flush=True,
        )
        return version
    promotion = promote(client, name, version, promotion_rule(options))
    where = f"is @{promotion.alias}" if promotion.alias else "holds no alias"
    print(f"trainer: version {version} {where}: {promotion.reason}", flush=True)
    return version
