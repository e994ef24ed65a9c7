"""`make gc`: deleted runs, their logged models and a deleted version's files leave the bucket; nothing else does.

Works on its own experiment and model (small files, no training) except for the one test that runs gc
next to a real trainer.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import LifecycleStage

from tests.stack.conftest import REPO, Names, TrainerProcess, parse_training, registry_snapshot, run_trainer, s3_keys
from tests.support.waiting import wait_until


def make_gc(*older_than: str, check: bool = True) -> tuple[subprocess.CompletedProcess[str], float]:
    args = ["make", "--no-print-directory", "gc", *(f"OLDER_THAN={value}" for value in older_than)]
    started = time.monotonic()
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    took = time.monotonic() - started
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    print(f"make gc {' '.join(older_than)}: {took:.1f} s")  # the gc timing the README quotes (pytest -s)
    return result, took


@dataclass(frozen=True)
class Logged:
    run_id: str
    model_id: str


def log_run(client: MlflowClient, experiment_id: str, tmp_path: Path, tag: str) -> Logged:
    """A run with a plain artifact and a logged model (files under <exp>/models/<id>/), like the trainer's."""
    run = client.create_run(experiment_id, run_name=f"gc-{tag}")
    folder = tmp_path / tag
    folder.mkdir()
    (folder / "notes.txt").write_text(f"artifact of {tag}\n")
    client.log_artifacts(run.info.run_id, str(folder), "files")
    model = client.create_logged_model(experiment_id, source_run_id=run.info.run_id, name=f"gc-{tag}")
    (folder / "MLmodel").write_text(f"model of {tag}\n")
    client.log_model_artifacts(model.model_id, str(folder))
    client.set_terminated(run.info.run_id)
    return Logged(run.info.run_id, model.model_id)


def keys_of(logged: Logged, bucket: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(the run's own objects, its logged model's objects)."""
    keys = s3_keys("") if bucket is None else bucket
    return (
        sorted(key for key in keys if f"/{logged.run_id}/" in key),
        sorted(key for key in keys if f"/models/{logged.model_id}/" in key),
    )


def test_gc_removes_deleted_runs_models_and_versions_only(client: MlflowClient, names: Names, tmp_path: Path) -> None:
    experiment_id = client.create_experiment(f"{names.experiment}-gc")
    model_name = f"{names.model}-gc"
    client.create_registered_model(model_name)
    kept, dropped, registered_elsewhere, recent = (
        log_run(client, experiment_id, tmp_path, tag) for tag in ("kept", "dropped", "registered", "recent")
    )
    champion = client.create_model_version(model_name, f"models:/{kept.model_id}", kept.run_id, model_id=kept.model_id)
    client.set_registered_model_alias(model_name, "champion", champion.version)
    dropped_version = client.create_model_version(
        model_name, f"models:/{dropped.model_id}", dropped.run_id, model_id=dropped.model_id
    )
    # A live version whose run is deleted: the run's own files go, the version's model stays.
    client.create_model_version(
        model_name, f"models:/{registered_elsewhere.model_id}", registered_elsewhere.run_id,
        model_id=registered_elsewhere.model_id,
    )  # fmt: skip
    bucket = s3_keys("")
    for logged in (kept, dropped, registered_elsewhere, recent):
        run_keys, model_keys = keys_of(logged, bucket)
        assert run_keys and model_keys, f"nothing of {logged} in the bucket"

    client.delete_model_version(model_name, dropped_version.version)
    client.delete_run(dropped.run_id)
    client.delete_run(registered_elsewhere.run_id)
    client.delete_run(recent.run_id)
    before = registry_snapshot(client)
    gone = (dropped.run_id, dropped.model_id, registered_elsewhere.run_id, recent.run_id, recent.model_id)
    other_keys = {key for key in bucket if not any(f"/{name}/" in key for name in gone)}

    # Deletions younger than OLDER_THAN stay.
    make_gc("30d")
    assert s3_keys("") == bucket, "gc OLDER_THAN=30d removed objects of runs deleted seconds ago"
    assert client.get_run(recent.run_id).info.lifecycle_stage == LifecycleStage.DELETED

    make_gc()
    after = s3_keys("")
    assert keys_of(dropped, after) == ([], []), "a deleted run's files (or its logged model's) are still there"
    assert keys_of(recent, after) == ([], [])
    run_keys, model_keys = keys_of(registered_elsewhere, after)
    assert run_keys == [], "a deleted run's own files are still in the bucket"
    assert model_keys, "gc removed the files of a model that a live registered version points at"
    assert other_keys <= set(after), "gc removed objects nobody deleted"
    assert registry_snapshot(client) == before
    with pytest.raises(Exception, match=r"RESOURCE_DOES_NOT_EXIST|not found"):
        client.get_run(dropped.run_id)
    assert client.get_model_version_by_alias(model_name, "champion").version == champion.version
    downloaded = Path(client.download_artifacts(kept.run_id, "files/notes.txt", str(tmp_path / "down")))
    assert downloaded.read_text() == "artifact of kept\n"
    assert client.get_logged_model(registered_elsewhere.model_id).model_id == registered_elsewhere.model_id

    # Twice is harmless: nothing left to do, nothing else touched.
    result, _ = make_gc()
    assert "permanently deleted" not in result.stdout
    assert sorted(s3_keys("")) == sorted(after)
    assert registry_snapshot(client) == before


def test_gc_rejects_a_bad_duration_in_one_line() -> None:
    result, _ = make_gc("soon", check=False)
    assert result.returncode != 0
    assert "stack-gc: --older-than 'soon': expected a duration like 30d" in result.stderr


def test_gc_while_a_trainer_runs(client: MlflowClient, names: Names) -> None:
    experiment = client.get_experiment_by_name(names.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(names.experiment)
    # Something for gc to do meanwhile: a deleted run with files.
    doomed = client.create_run(experiment_id, run_name="gc-doomed")
    client.log_text(doomed.info.run_id, "x", "doomed.txt")
    client.delete_run(doomed.info.run_id)
    started = time.monotonic()
    outcome: dict[str, TrainerProcess] = {}

    def train() -> None:
        outcome["result"] = run_trainer(
            "--epochs", "1", "--max-train-samples", "2000", "--min-accuracy", "0", "--run-name", "during-gc",
            "--experiment-name", names.experiment, "--registered-model-name", names.model,
        )  # fmt: skip

    trainer = threading.Thread(target=train)
    trainer.start()
    # gc while the trainer's run is open: wait until it exists, then collect.
    wait_until(
        lambda: client.search_runs([experiment_id], "attributes.run_name = 'during-gc'"), 240,
        "the trainer's run did not appear within 240 s", interval=2,
    )  # fmt: skip
    make_gc()
    trainer.join(timeout=600)
    training = parse_training(outcome["result"])
    run = client.get_run(training.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_model_version(names.model, str(training.version)).status == "READY"
    assert s3_keys(f"/{training.run_id}/"), "the trainer's run lost its files"
    assert s3_keys(f"/{doomed.info.run_id}/") == []
    assert client.get_registered_model(names.model).aliases, "the registry lost its aliases"
    print(f"trainer next to gc: {time.monotonic() - started:.0f} s")
