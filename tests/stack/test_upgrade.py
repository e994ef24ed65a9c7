"""Upgrade the stack from the previous MLflow pin (3.16.1) to the current one with the README's commands.

A stack of its own (project mlflow-stack-upgrade, from a copy of this repository as a clone would have it) starts
on a tracking-server image built with MLFLOW_VERSION=3.16.1 and is filled: a training run of the current trainer
image (runs, per-epoch metrics, params, system metrics, a registered version with @champion, artifacts) and an
sklearn model logged and registered by MLflow 3.16.1's own client. Everything is read through the API, then the
stack is upgraded exactly as README, Upgrades says (`make backup`, the new image, `docker compose up -d --wait`),
and then: the schema is at the new MLflow's alembic head, everything reads back equal (artifacts by checksum),
the champion predicts the same digits as before, and the 3.16.1 client's model loads with the current client
and gives the same probabilities. The object store (MinIO, or its stand-in in CI) and Postgres must not
be restarted by the upgrade: only the services on the tracking-server image are recreated. Last, the rollback
the README documents (the previous image, `make clean`, `make restore` of the backup taken before the upgrade)
brings back a 3.16.1 server at the old schema with everything equal to before the upgrade.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from mlflow import MlflowClient

from tests.stack.conftest import TRACKING_SERVER_IMAGE, TrainerProcess, mnist_npz, parse_training, trainer_argv
from tests.stack.fresh_stack import FreshStack, copy_repository
from tests.support.waiting import wait_until

PREVIOUS_MLFLOW = "3.16.1"
PREVIOUS_IMAGE = os.environ.get("UPGRADE_FROM_IMAGE", f"mlflow-stack/tracking-server:{PREVIOUS_MLFLOW}")
# CI clears this project name (.ci/run); ports 5022-5029 are this test's.
PROJECT = "mlflow-stack-upgrade"
PORT = int(os.environ.get("UPGRADE_STACK_MLFLOW_PORT", "5022"))
CONSOLE_PORT = int(os.environ.get("UPGRADE_STACK_CONSOLE_PORT", "5023"))
SERVING_PORT = int(os.environ.get("UPGRADE_STACK_SERVING_PORT", "5024"))
EXPERIMENT = "upgrade-test"
LEGACY_EXPERIMENT = "upgrade-test-previous-client"
MODEL = "mnist-upgrade"
LEGACY_MODEL = "digits-logged-by-3-16-1"


@dataclass
class UpgradeStack(FreshStack):
    """A FreshStack on this test's ports, whose tracking-server image (and MLflow version) can be switched."""

    image: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://localhost:{PORT}"

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        environment = super().environment(extra)
        environment.pop("MLFLOW_VERSION", None)
        environment.update(MLFLOW_PORT=str(PORT), MINIO_CONSOLE_PORT=str(CONSOLE_PORT), SERVING_PORT=str(SERVING_PORT))
        # One uvicorn worker: the server starts three times here, and what is tested is the data, not throughput.
        environment.update(MLFLOW_WORKERS="1")
        environment.update(self.image)
        environment.update(extra or {})
        return environment

    def train(self, *args: str) -> TrainerProcess:
        """1 epoch on 3000 images with the session's trainer image; `--no-deps`: the stack is up, and running
        its one-shot services again would only cost time."""
        argv, result_file = trainer_argv(
            "--epochs", "1", "--max-train-samples", "3000", "--min-accuracy", "0.5", *args, options=["--no-deps"]
        )  # fmt: skip
        done = self.compose(*argv[2:])
        process = TrainerProcess(done.args, done.returncode, done.stdout, done.stderr)
        process.result_file = result_file
        return process

    def container(self, service: str) -> dict[str, Any]:
        name = self.compose("ps", "-a", "-q", service).stdout.split()
        assert len(name) == 1, f"{service}: {name}"
        inspected = json.loads(self.run("docker", "inspect", name[0]).stdout)[0]
        return {"id": inspected["Id"], "started": inspected["State"]["StartedAt"], "image": inspected["Image"]}

    def psql(self, query: str) -> str:
        command = f'psql -U "$POSTGRES_USER" -d "$POSTGRES_DB" -Atc "{query}"'
        return self.compose("exec", "-T", "postgres", "sh", "-c", command).stdout.strip()


def schema_head(image: str) -> str:
    """The alembic revision the image's MLflow migrates to."""
    code = "from mlflow.store.db.utils import _get_latest_schema_revision as h; print(h())"
    result = subprocess.run(
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", code],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    return result.stdout.strip()


def image_id(image: str) -> str:
    inspected = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", image], capture_output=True, text=True)
    assert inspected.returncode == 0, f"{image}: {inspected.stderr}"
    return inspected.stdout.strip()


# Logged by MLflow 3.16.1's client, from a container of the 3.16.1 image on the stack's client network (no
# storage credentials there: it talks HTTP to the tracking server like any client). It writes what it saw.
LEGACY_CLIENT = f"""
import json, mlflow, numpy as np
from mlflow import MlflowClient
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
x, y = load_digits(return_X_y=True)
model = LogisticRegression(max_iter=300).fit(x[:1000], y[:1000])
mlflow.set_experiment("{LEGACY_EXPERIMENT}")
with mlflow.start_run(run_name="logged-by-3.16.1") as run:
    mlflow.log_params({{"client": mlflow.__version__, "max_iter": 300}})
    for step, size in enumerate((250, 500, 1000)):
        mlflow.log_metric("train_accuracy", model.score(x[:size], y[:size]), step=step)
    mlflow.set_tag("logged_by", "mlflow " + mlflow.__version__)
    info = mlflow.sklearn.log_model(model, name="model", registered_model_name="{LEGACY_MODEL}", input_example=x[:2])
client = MlflowClient()
client.set_registered_model_alias("{LEGACY_MODEL}", "legacy", "1")
client.update_model_version("{LEGACY_MODEL}", "1", description="logged by the previous MLflow client")
client.set_model_version_tag("{LEGACY_MODEL}", "1", "client", mlflow.__version__)
with open("/out/legacy.json", "w") as out:
    json.dump({{"client": mlflow.__version__, "run_id": run.info.run_id,
               "probabilities": model.predict_proba(x[1000:1200]).tolist()}}, out)
"""


def log_with_previous_client(stack: UpgradeStack, folder: Path) -> dict[str, Any]:
    folder.mkdir()
    folder.chmod(0o777)  # the image's user, uid 10001, writes the result
    stack.run(
        "docker", "run", "--rm", "--network", f"{stack.project}_frontend", "-v", f"{folder}:/out",
        "-e", "MLFLOW_TRACKING_URI=http://tracking-server:5000", "--entrypoint", "python", PREVIOUS_IMAGE,
        "-c", LEGACY_CLIENT, timeout=300,
    )  # fmt: skip
    result = folder / "legacy.json"
    assert result.is_file(), "the 3.16.1 client wrote no result"
    outcome: dict[str, Any] = json.loads(result.read_text())
    assert outcome["client"] == PREVIOUS_MLFLOW
    return outcome


def served_version(url: str, wait_seconds: float = 60) -> str:
    """The MLflow version the gateway's server answers with. Right after `up --wait` a newly created gateway may
    not have probed the server yet (it waits for a passing /health before sending it anything: README, Team
    mode) and closes connections until it has; that is seconds, so retry for up to a minute."""

    def version() -> str:
        response = requests.get(f"{url}/version", timeout=10)
        response.raise_for_status()
        return response.text.strip()

    return wait_until(
        version, wait_seconds, f"{url}/version did not answer within {wait_seconds:.0f} s", interval=1,
        ignoring=(requests.RequestException,),
    )  # fmt: skip


def run_steps(stack: UpgradeStack, *commands: list[str]) -> list[str]:
    """Run README commands in the stack's folder, in order; each must succeed. Returns how long each took."""
    timings = []
    for command in commands:
        started = time.monotonic()
        done = stack.run(*command, timeout=900)
        assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}"
        timings.append(f"{' '.join(command)} {time.monotonic() - started:.0f} s")
    return timings


def checksums(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def snapshot(url: str, scratch: Path) -> dict[str, Any]:
    """Everything the stack holds, read through the API: experiments, runs (info, params, tags, every metric's
    full history), logged models, registered models and versions (tags, descriptions, aliases), and the files
    of every run and every registered version, by SHA-256."""
    import mlflow

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    mlflow.set_tracking_uri(url)
    experiments = client.search_experiments()
    experiment_ids = [e.experiment_id for e in experiments]
    runs = client.search_runs(experiment_ids, max_results=1000)
    state: dict[str, Any] = {
        "experiments": sorted(
            (e.experiment_id, e.name, e.lifecycle_stage, e.artifact_location, sorted(e.tags.items()))
            for e in experiments
        ),
        "runs": {},
        "logged_models": sorted(
            (m.model_id, m.name, m.source_run_id, str(m.status), sorted(m.tags.items()), sorted(m.params.items()))
            for m in client.search_logged_models(experiment_ids)
        ),
        "registered": {},
    }
    for run in runs:
        info = run.info
        histories = {
            key: sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(info.run_id, key))
            for key in run.data.metrics
        }
        downloaded = scratch / "runs" / info.run_id
        downloaded.mkdir(parents=True)
        client.download_artifacts(info.run_id, "", str(downloaded))
        state["runs"][info.run_id] = {
            "info": (info.run_name, info.experiment_id, info.status, info.start_time, info.end_time,
                     info.lifecycle_stage, info.artifact_uri, info.user_id),
            "params": sorted(run.data.params.items()),
            "tags": sorted(run.data.tags.items()),
            "metrics": sorted(run.data.metrics.items()),
            "histories": histories,
            "artifacts": checksums(downloaded),
        }  # fmt: skip
    for model in client.search_registered_models():
        versions = {}
        for version in client.search_model_versions(f"name = '{model.name}'"):
            downloaded = scratch / "models" / model.name / str(version.version)
            mlflow.artifacts.download_artifacts(f"models:/{model.name}/{version.version}", dst_path=str(downloaded))
            versions[str(version.version)] = {
                "info": (version.source, version.run_id, version.status, version.description, version.model_id,
                         version.creation_timestamp),
                "tags": sorted(version.tags.items()),
                "aliases": sorted(version.aliases),
                "files": checksums(downloaded),
            }  # fmt: skip
        state["registered"][model.name] = {
            "description": model.description,
            "tags": sorted(model.tags.items()),
            "aliases": sorted(model.aliases.items()),
            "versions": versions,
        }
    return state


def champion_predictions(url: str) -> np.ndarray[Any, Any]:
    import mlflow

    mlflow.set_tracking_uri(url)
    champion = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    with np.load(mnist_npz()) as archive:
        images = archive["x_test"][:1000]
    return np.asarray(champion.predict((images.astype(np.float32) / 255.0)[..., np.newaxis])).argmax(axis=1)


@pytest.fixture(scope="module")
def stack() -> Iterator[UpgradeStack]:
    with tempfile.TemporaryDirectory(prefix="mlflow-stack-upgrade-") as directory:
        upgraded = UpgradeStack(copy_repository(Path(directory)), PROJECT)
        upgraded.destroy()
        yield upgraded
        upgraded.destroy()


def test_upgrade_from_the_previous_mlflow_keeps_everything(stack: UpgradeStack, tmp_path: Path) -> None:
    started = time.monotonic()
    # The previous version's image, built as README, Upgrades says (its pip layers shared with the current one).
    stack.image = {"MLFLOW_VERSION": PREVIOUS_MLFLOW, "TRACKING_SERVER_IMAGE": PREVIOUS_IMAGE}
    stack.compose("build", "tracking-server", timeout=900)
    print(f"[upgrade] {PREVIOUS_IMAGE} built in {time.monotonic() - started:.0f} s")
    stack.compose("up", "-d", "--wait", "--wait-timeout", "240")
    old_version = served_version(stack.url)
    assert old_version == PREVIOUS_MLFLOW

    print(f"[upgrade] {PREVIOUS_MLFLOW} stack up after {time.monotonic() - started:.0f} s")
    # The trainer and the 3.16.1 client at once (separate experiments): mostly each one's start-up.
    with ThreadPoolExecutor(max_workers=2) as pool:
        trained_later = pool.submit(
            stack.train, "--experiment-name", EXPERIMENT, "--registered-model-name", MODEL,
            "--run-name", "before-upgrade", "--batch-size", "32",
        )  # fmt: skip
        legacy = log_with_previous_client(stack, tmp_path / "legacy")
        training = parse_training(trained_later.result())
    print(f"[upgrade] trained and logged with the {PREVIOUS_MLFLOW} client after {time.monotonic() - started:.0f} s")
    before = snapshot(stack.url, tmp_path / "before")
    assert before["registered"][MODEL]["aliases"] == [("champion", str(training.version))]
    assert before["registered"][LEGACY_MODEL]["aliases"] == [("legacy", "1")]
    trained = before["runs"][training.run_id]
    assert len(trained["histories"]["epoch_seconds"]) == 1 and trained["artifacts"], trained  # 1 epoch, and files
    assert before["registered"][MODEL]["versions"][str(training.version)]["files"]
    predicted_before = champion_predictions(stack.url)
    old_revision = stack.psql("SELECT version_num FROM alembic_version")
    assert old_revision == schema_head(PREVIOUS_IMAGE)
    print(f"[upgrade] filled the {PREVIOUS_MLFLOW} stack after {time.monotonic() - started:.0f} s")

    kept = {service: stack.container(service) for service in ("minio", "postgres")}
    old_server = stack.container("tracking-server")
    upgrade_started = time.monotonic()
    # README, Upgrades, step by step: back up, then the new version (here: MLFLOW_VERSION unset, the current pin
    # in the session's image), build, up.
    timings = run_steps(stack, ["make", "backup"])
    backups = sorted((stack.directory / "backups").iterdir())
    assert len(backups) == 1 and (backups[0] / "postgres.dump").stat().st_size > 10_000
    assert (backups[0] / "artifacts.tar").stat().st_size > 10_000
    stack.image = {"TRACKING_SERVER_IMAGE": TRACKING_SERVER_IMAGE}
    timings += run_steps(stack, ["docker", "compose", "build"], ["docker", "compose", "up", "-d", "--wait"])
    print(f"[upgrade] upgraded in {time.monotonic() - upgrade_started:.0f} s: {'; '.join(timings)}")

    # Only the tracking server's services were recreated: the object store and Postgres kept running.
    assert {service: stack.container(service) for service in kept} == kept
    new_server = stack.container("tracking-server")
    assert new_server["id"] != old_server["id"]
    assert new_server["image"] == image_id(TRACKING_SERVER_IMAGE) != old_server["image"]
    new_version = served_version(stack.url)
    assert new_version != PREVIOUS_MLFLOW and new_version

    new_revision = stack.psql("SELECT version_num FROM alembic_version")
    assert new_revision == schema_head(TRACKING_SERVER_IMAGE) != old_revision
    print(f"[upgrade] schema {old_revision} ({PREVIOUS_MLFLOW}) -> {new_revision} ({new_version})")

    assert snapshot(stack.url, tmp_path / "after") == before

    predicted_after = champion_predictions(stack.url)
    np.testing.assert_array_equal(predicted_after, predicted_before)
    with np.load(mnist_npz()) as archive:
        labels = archive["y_test"][:1000]
    assert float((predicted_after == labels).mean()) >= 0.8  # 1 epoch on 3000 images, batches of 32

    import mlflow
    from sklearn.datasets import load_digits

    assert mlflow.__version__ == new_version  # the current client reads the previous client's model
    mlflow.set_tracking_uri(stack.url)
    legacy_model = mlflow.sklearn.load_model(f"models:/{LEGACY_MODEL}@legacy")
    digits, _ = load_digits(return_X_y=True)
    np.testing.assert_allclose(legacy_model.predict_proba(digits[1000:1200]), legacy["probabilities"], rtol=1e-12)
    as_pyfunc = mlflow.pyfunc.load_model(f"models:/{LEGACY_MODEL}/1")
    expected_labels = np.asarray(legacy["probabilities"]).argmax(axis=1)
    np.testing.assert_array_equal(np.asarray(as_pyfunc.predict(digits[1000:1200])), expected_labels)
    print(f"[upgrade] checked after {time.monotonic() - started:.0f} s")

    # README, Upgrades, rollback: the previous image, an emptied stack, the backup taken before the upgrade.
    rollback_started = time.monotonic()
    stack.image = {"MLFLOW_VERSION": PREVIOUS_MLFLOW, "TRACKING_SERVER_IMAGE": PREVIOUS_IMAGE}
    timings = run_steps(stack, ["docker", "compose", "build"])
    # Why the rollback needs the backup: the previous MLflow's prepare stops at the migrated schema.
    refused = stack.compose("run", "--rm", "--no-deps", "-T", "tracking-server-prepare", check=False)
    assert refused.returncode != 0 and new_revision in refused.stdout + refused.stderr, refused.stderr[-2000:]
    timings += run_steps(
        stack,
        ["make", "clean"],
        ["make", "restore", f"BACKUP={backups[0]}"],
        ["docker", "compose", "up", "-d", "--wait"],
    )
    print(f"[upgrade] rolled back in {time.monotonic() - rollback_started:.0f} s: {'; '.join(timings)}")
    assert served_version(stack.url) == PREVIOUS_MLFLOW
    assert stack.psql("SELECT version_num FROM alembic_version") == old_revision
    assert snapshot(stack.url, tmp_path / "rolled-back") == before
    np.testing.assert_array_equal(champion_predictions(stack.url), predicted_before)
    print(f"[upgrade] test took {time.monotonic() - started:.0f} s")
