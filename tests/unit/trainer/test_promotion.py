"""The promotion rule and its use of the registry, against a local SQLite store (no server)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mnist_trainer import registry
from mnist_trainer.registry import CHALLENGER, CHAMPION, PromotionRule


def test_higher_is_better_with_a_margin() -> None:
    rule = PromotionRule("test_accuracy", greater_is_better=True, margin=0.002)
    assert rule.beats(0.990, 0.985)
    assert not rule.beats(0.986, 0.985)  # better, but by less than the margin
    assert not rule.beats(0.985, 0.985)
    assert not rule.beats(0.980, 0.985)


def test_lower_is_better_for_losses() -> None:
    rule = PromotionRule("test_loss", greater_is_better=False, margin=0.0)
    assert rule.beats(0.03, 0.05)
    assert not rule.beats(0.05, 0.05)
    assert not rule.beats(0.06, 0.05)


@pytest.fixture
def make_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[float], int]:
    """A registered version whose run logged the given test accuracy."""
    import mlflow
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    # The active experiment is process-wide in MLflow: name one that exists in this store.
    mlflow.set_experiment("promotion")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("digits")

    def make(accuracy: float) -> int:
        with mlflow.start_run() as run:
            mlflow.log_metric("test_accuracy", accuracy)
        version = client.create_model_version("digits", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
        return int(version.version)

    return make


def _alias(name: str, alias: str) -> int:
    from mlflow import MlflowClient

    return int(MlflowClient().get_model_version_by_alias(name, alias).version)


def test_first_version_is_champion_a_worse_one_challenger_a_better_one_takes_over(
    make_version: Callable[[float], int],
) -> None:
    from mlflow import MlflowClient

    client, rule = MlflowClient(), PromotionRule(margin=0.001)
    first = make_version(0.980)
    assert registry.promote(client, "digits", first, rule).alias == CHAMPION
    worse = make_version(0.975)
    outcome = registry.promote(client, "digits", worse, rule)
    assert outcome.alias == CHALLENGER
    assert "does not beat champion v1" in outcome.reason
    assert (_alias("digits", CHAMPION), _alias("digits", CHALLENGER)) == (first, worse)
    barely = make_version(0.9805)  # better, but within the margin
    assert registry.promote(client, "digits", barely, rule).alias == CHALLENGER
    better = make_version(0.990)
    assert registry.promote(client, "digits", better, rule).alias == CHAMPION
    assert _alias("digits", CHAMPION) == better
    assert "beats v1" in client.get_model_version("digits", str(better)).tags["promotion"]


def test_promotion_by_hand_overrides_and_is_recorded(make_version: Callable[[float], int]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    best, other = make_version(0.99), make_version(0.95)
    registry.promote(client, "digits", best, PromotionRule())
    registry.promote_by_hand(client, "digits", other, CHAMPION, "alice", "rollback test")
    assert _alias("digits", CHAMPION) == other
    assert client.get_model_version("digits", str(other)).tags["champion_set_by"].startswith("alice at ")


def test_versions_table_lists_newest_first_with_aliases(make_version: Callable[[float], int]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    first, second = make_version(0.97), make_version(0.98)
    registry.promote(client, "digits", first, PromotionRule())
    registry.promote(client, "digits", second, PromotionRule())
    rows = registry.versions_table(client, "digits", "test_accuracy")
    assert [row["version"] for row in rows] == [second, first]
    assert rows[0]["aliases"] == "champion"
    assert rows[0]["test_accuracy"] == pytest.approx(0.98)
    text = registry.format_table(rows)
    header, newest = text.splitlines()[:2]
    assert header.split()[:3] == ["version", "aliases", "test_accuracy"]
    assert newest.split()[:3] == [str(second), "champion", "0.9800"]


def test_format_table_aligns_columns_and_marks_missing_values() -> None:
    text = registry.format_table([{"a": 1, "b": None}, {"a": 100, "b": 0.5}])
    assert text.splitlines() == ["a    b", "1    -", "100  0.5000"]
    assert registry.format_table([]) == "(none)"


def test_the_decision_depends_on_the_set_of_versions_not_on_the_order_they_are_seen() -> None:
    import itertools

    from mnist_trainer.registry import Candidate, decide

    versions = [
        Candidate(1, 0.980),
        Candidate(2, 0.975),
        Candidate(3, 0.9805),
        Candidate(4, 0.990),
        Candidate(5, 0.985),
    ]
    rule = PromotionRule(margin=0.001)
    decisions = [decide(list(order), rule) for order in itertools.permutations(versions)]
    decision = decisions[0]
    assert all(other == decision for other in decisions)
    # The sequential rule, version by version: 1 first; 2 worse; 3 within the margin; 4 better; 5 worse than 4.
    assert (decision.champion, decision.challenger) == (4, 5)
    assert decision.reasons[1] == (CHAMPION, "first version with a champion")
    assert decision.reasons[3][0] == CHALLENGER and "does not beat champion v1" in decision.reasons[3][1]
    assert decision.reasons[4] == (CHAMPION, "test_accuracy 0.9900 beats v1 (0.9800)")


def test_a_champion_set_by_hand_is_where_automatic_promotion_starts(make_version: Callable[[float], int]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    best, rollback = make_version(0.99), make_version(0.95)
    registry.promote(client, "digits", best, PromotionRule())
    registry.promote_by_hand(client, "digits", rollback, CHAMPION, "alice", "v1 misbehaves in production")
    # A later version better than the rollback but worse than v1 takes over; v1 is not brought back.
    later = make_version(0.97)
    assert registry.promote(client, "digits", later, PromotionRule()).alias == CHAMPION
    assert _alias("digits", CHAMPION) == later
    assert "beats v2" in client.get_model_version("digits", str(later)).tags["promotion"]


def test_a_failed_version_is_never_a_candidate(make_version: Callable[[float], int]) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    first = make_version(0.95)
    registry.promote(client, "digits", first, PromotionRule())
    failed = make_version(0.99)
    client.set_model_version_tag("digits", str(failed), "validation_status", "failed")
    nxt = make_version(0.96)
    assert registry.promote(client, "digits", nxt, PromotionRule()).alias == CHAMPION
    assert _alias("digits", CHAMPION) == nxt
