"""`trainer reproduce` and `trainer lineage` against a local SQLite store: the record, the refusals, the table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mnist_trainer import lineage, replay
from tests.unit.trainer.conftest import write_npz
from tests.unit.trainer.test_cli import run_trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """One registered 1-epoch run on a small synthetic set: (store folder, data file, run id)."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("replay")
    npz = write_npz(folder / "m.npz", train=400, test=100)
    result_file = folder / "result.json"
    args = ["--data", str(npz), "--epochs", "1", "--batch-size", "32", "--min-accuracy", "0", "--run-name", "orig"]
    first = run_trainer([*args, "--result-file", str(result_file)], folder)
    assert first.returncode == 0, first.stderr[-2000:]
    result = json.loads(result_file.read_text())
    assert result["version"] == 1 and result["registered_model_name"] == "mnist"
    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    assert client.get_run(result["run_id"]).data.metrics["test_accuracy"] == result["metrics"]["test_accuracy"]
    return folder, npz, result["run_id"]


def _runs(folder: Path) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    return list(client.search_runs([e.experiment_id for e in client.search_experiments()]))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_a_run_records_its_config_lineage_and_package_lock(trained: tuple[Path, Path, str]) -> None:
    from mlflow import MlflowClient

    folder, _, run_id = trained
    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    run = client.get_run(run_id)
    tags = run.data.tags
    assert tags["code_digest"] == lineage.code_digest_of() and tags["code_digest_source"] == "computed at run time"
    assert tags["tf_op_determinism"] == "on"  # `auto` on a CPU
    assert run.data.params["deterministic"] == "on" and run.data.params["batch_size"] == "32"
    lock = Path(client.download_artifacts(run_id, lineage.PACKAGE_LOCK_ARTIFACT, str(folder))).read_text()
    assert tags["package_lock_digest"] == lineage.digest_text(lock) and "mlflow==3.17.2" in lock.splitlines()
    config = json.loads(Path(client.download_artifacts(run_id, "config.json", str(folder))).read_text())
    assert config["train"]["epochs"] == 1 and config["train"]["deterministic"] == "on"
    version = client.get_model_version("mnist", "1")
    assert version.tags["code_digest"] == tags["code_digest"]
    assert "**Lineage**" in (version.description or "") and tags["code_digest"][:19] in (version.description or "")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_reproduce_from_a_run_gives_the_same_test_metrics_and_registers_nothing(
    trained: tuple[Path, Path, str],
) -> None:
    from mlflow import MlflowClient

    folder, _, run_id = trained
    result = run_trainer(["reproduce", f"runs:/{run_id}"], folder)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    header = next(line for line in result.stdout.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "original", "reproduced", "delta", "check"]
    client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
    (copy,) = [run for run in _runs(folder) if run.data.tags.get("reproduces") == run_id]
    original = client.get_run(run_id)
    assert copy.data.metrics["test_accuracy"] == pytest.approx(original.data.metrics["test_accuracy"], abs=1e-4)
    assert copy.data.metrics["test_loss"] == pytest.approx(original.data.metrics["test_loss"], abs=1e-4)
    assert len(client.search_model_versions("name = 'mnist'")) == 1


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_reproduce_refuses_other_data_with_exit_2_and_logs_nothing(trained: tuple[Path, Path, str]) -> None:
    folder, _, _ = trained
    other = write_npz(folder / "other.npz", train=400, test=100, seed=5)
    before = len(_runs(folder))
    result = run_trainer(["reproduce", "models:/mnist/1", "--data", str(other)], folder)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("trainer:")]
    assert len(errors) == 1 and "data digest" in errors[0] and "differs from the original's" in errors[0]
    assert len(_runs(folder)) == before


@pytest.mark.slow
def test_reproduce_refuses_a_uri_it_cannot_read(tmp_path: Path) -> None:
    result = run_trainer(["reproduce", "mnist-3"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("trainer: error: 'mnist-3' is not a model URI")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_lineage_names_every_link(trained: tuple[Path, Path, str]) -> None:
    folder, npz, run_id = trained
    result = run_trainer(["lineage", "models:/mnist@champion"], folder)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = dict(line.split("  ", 1) for line in result.stdout.strip().splitlines())
    labels = [label.strip() for label in lines]
    assert labels == ["version", "run", "config", "data digest", "code digest", "image", "package lock", "determinism"]
    text = result.stdout
    assert "models:/mnist/1 @champion" in text and run_id in text and "epochs=1" in text
    assert lineage.code_digest_of() in text and str(npz.resolve()) in text and "packages, sha256:" in text


def test_the_comparison_gates_on_test_metrics_only() -> None:
    table, within = replay.comparison(
        {"test_accuracy": 0.9, "test_loss": 0.3, "val_loss": 0.2},
        {"test_accuracy": 0.9, "test_loss": 0.3, "val_loss": 0.5},
        1e-4,
    )
    assert within and "(shown)" in table
    _, within = replay.comparison(
        {"test_accuracy": 0.9, "test_loss": 0.3}, {"test_accuracy": 0.8999, "test_loss": 0.3}, 5e-5
    )
    assert not within


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")
def test_other_code_is_refused_unless_allowed_and_then_recorded(trained: tuple[Path, Path, str]) -> None:
    folder, _, run_id = trained
    # What an image built from other code would report (lineage.CODE_DIGEST_FILE is the image build's record).
    other_code = folder / "code-digest"
    other_code.write_text("sha256:" + "0" * 64 + "\n")
    env = {"TRAINER_CODE_DIGEST_FILE": str(other_code)}
    before = len(_runs(folder))
    refused = run_trainer(["reproduce", f"runs:/{run_id}"], folder, env)
    assert refused.returncode == 2
    errors = [line for line in refused.stderr.splitlines() if line.startswith("trainer:")]
    assert len(errors) == 1 and "code_digest" in errors[0] and "pass --allow-code-change" in errors[0]
    assert len(_runs(folder)) == before

    allowed = run_trainer(["reproduce", f"runs:/{run_id}", "--allow-code-change"], folder, env)
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "trainer: note: reproducing across a change: code_digest" in allowed.stderr
    copies = [run for run in _runs(folder) if run.data.tags.get("reproduces") == run_id]
    assert any(run.data.tags.get("reproduced_across") == "code_digest" for run in copies)
