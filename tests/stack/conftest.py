"""Fixtures for tests against the running compose stack (scripts/test.sh brings it up).

Each session trains under its own experiment and model name, so the tests can run again and again on a
stack that keeps its volumes.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from mlflow import MlflowClient

if TYPE_CHECKING:
    from tests.stack.oidc_stack import OidcStack

REPO = Path(__file__).resolve().parents[2]
# The same variables compose reads, so a second stack (COMPOSE_PROJECT_NAME, other ports) can be tested too.
MLFLOW_PORT = int(os.environ.get("MLFLOW_PORT", "5000"))
SERVING_PORT = int(os.environ.get("SERVING_PORT", "5001"))
MINIO_CONSOLE_PORT = int(os.environ.get("MINIO_CONSOLE_PORT", "9001"))
STACK_URL = os.environ.get("STACK_URL", f"http://localhost:{MLFLOW_PORT}")
TRACKING_SERVER_IMAGE = os.environ.get("TRACKING_SERVER_IMAGE", "mlflow-stack/tracking-server:3.17.2")
TRAINER_IMAGE = os.environ.get("TRAINER_IMAGE", "mlflow-stack/trainer:0.1.0")
NPZ_IN_CONTAINER = "/data/mnist.npz"


def compose(
    *args: str, timeout: float = 600, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["docker", "compose", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker compose {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


@functools.cache
def object_store() -> str:
    """The stack's artifact store service: `seaweedfs` when COMPOSE_FILE adds docker-compose.seaweedfs.yml."""
    return "seaweedfs" if "seaweedfs" in compose("config", "--services").stdout.split() else "minio"


@functools.cache
def seaweedfs_standin_overlay() -> str:
    """tests/stack/seaweedfs-standin.yml where the local SeaweedFS image has no curl (CI's stand-in from
    ../shared/ci/offline-docker.sh): it asks the same /healthz with bash. The real image has curl and runs
    docker-compose.seaweedfs.yml's own check. scripts/test.sh makes the same choice for its SeaweedFS stage."""
    image = os.environ.get("SEAWEEDFS_IMAGE", "chrislusf/seaweedfs:4.48")
    probe = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "sh", image, "-c", "command -v curl"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return "" if probe.returncode == 0 else "tests/stack/seaweedfs-standin.yml"


def mnist_npz() -> Path:
    path = os.environ.get("MNIST_NPZ")
    if not path or not Path(path).is_file():
        pytest.fail("MNIST_NPZ must name a Keras-format mnist.npz (../shared/ci/offline-docker.sh writes one)")
    return Path(path)


# Trainers write their outcome here (`--result-file`): the tests read that, not the trainer's printed lines.
RESULTS_IN_CONTAINER = "/results"
COMMANDS_WITHOUT_RESULT = ("sweep", "reproduce", "lineage", "models", "promote", "predict", "upload")


class TrainerProcess(subprocess.CompletedProcess[str]):
    """A finished `trainer train` container, with the result file it was asked to write."""

    result_file: Path | None = None


def results_dir() -> Path:
    folder = Path(tempfile.gettempdir()) / f"stack-test-results-{os.getuid()}"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o777)  # the trainer runs as uid 10001
    return folder


def trainer_argv(*args: str, options: Sequence[str] = ()) -> tuple[list[str], Path | None]:
    """`docker compose run [options]` of the trainer with the real MNIST mounted read-only and, for `train`, a
    result file."""
    mounts = ["-v", f"{mnist_npz()}:{NPZ_IN_CONTAINER}:ro", "-v", f"{results_dir()}:{RESULTS_IN_CONTAINER}"]
    command = list(args)
    result_file = None
    if not command or command[0] not in COMMANDS_WITHOUT_RESULT:
        name = f"{uuid.uuid4().hex}.json"
        result_file = results_dir() / name
        command = ["--data", NPZ_IN_CONTAINER, *command, "--result-file", f"{RESULTS_IN_CONTAINER}/{name}"]
    return ["docker", "compose", "run", "--rm", "-T", *options, *mounts, "trainer", *command], result_file


def run_trainer(
    *args: str, check: bool = True, options: Sequence[str] = (), env: dict[str, str] | None = None
) -> TrainerProcess:
    """`docker compose run --rm trainer ...`; training gets `--data` (the real MNIST) and a result file."""
    argv, result_file = trainer_argv(*args, options=options)
    done = compose(*argv[2:], check=check, env=env)
    process = TrainerProcess(done.args, done.returncode, done.stdout, done.stderr)
    process.result_file = result_file
    return process


# Numbers a test measured (revocation latencies, build and start times): shown after the run, also when pytest
# captures the tests' output (scripts/test.sh), so CI's log has them.
MEASUREMENTS: list[str] = []


def measured(line: str) -> None:
    print(line)
    MEASUREMENTS.append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASUREMENTS:
        terminalreporter.section("measurements")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `disruptive(order=N)` restart services or replace the stack's data: they run after every
    other test, by N."""

    def rank(item: pytest.Item) -> int:
        marker = item.get_closest_marker("disruptive")
        return int(marker.kwargs["order"]) if marker else 0

    items.sort(key=rank)  # stable: the order within each group stays as collected


@dataclass(frozen=True)
class Training:
    run_id: str
    version: int
    stdout: str


def parse_training(result: TrainerProcess) -> Training:
    """The run and version from the trainer's result file."""
    assert result.result_file is not None, "not a training"
    assert result.result_file.is_file(), result.stdout[-2000:] + result.stderr[-2000:]
    outcome = json.loads(result.result_file.read_text())
    assert "error" not in outcome and outcome["version"] is not None, outcome
    return Training(run_id=outcome["run_id"], version=int(outcome["version"]), stdout=result.stdout)


@dataclass(frozen=True)
class Names:
    experiment: str
    model: str


@pytest.fixture(scope="session")
def names() -> Names:
    suffix = uuid.uuid4().hex[:8]
    return Names(experiment=f"stack-test-{suffix}", model=f"mnist-stack-{suffix}")


@pytest.fixture(scope="session")
def epochs() -> int:
    return 2


@pytest.fixture(scope="session")
def first_training(names: Names, epochs: int) -> Training:
    # Batch 64: twice the updates per epoch of the default 128, so even a short run clears 97 % on test.
    result = run_trainer(
        "--epochs", str(epochs), "--batch-size", "64", "--run-name", "stack-first",
        "--experiment-name", names.experiment, "--registered-model-name", names.model,
    )  # fmt: skip
    return parse_training(result)


@pytest.fixture(scope="session")
def client() -> MlflowClient:
    return MlflowClient(tracking_uri=STACK_URL, registry_uri=STACK_URL)


def published_ports() -> set[tuple[str, int, int]]:
    """(host address, host port, container port) for every port the stack publishes."""
    result = compose("ps", "--format", "json")
    published = set()
    for line in result.stdout.splitlines():
        entries = json.loads(line)
        for entry in entries if isinstance(entries, list) else [entries]:
            for publisher in entry.get("Publishers") or []:
                if publisher.get("PublishedPort"):
                    published.add((publisher["URL"], publisher["PublishedPort"], publisher["TargetPort"]))
    return published


def registry_snapshot(client: MlflowClient) -> dict[str, set[tuple[object, ...]]]:
    """Every run (status, params, metrics), registered version and alias the server holds: for before/after."""
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    models = client.search_registered_models(max_results=1000)
    return {
        "runs": {(r.info.run_id, r.info.status, tuple(sorted(r.data.params.items()))) for r in runs},
        # NaN is a value MLflow stores (tests/stack/test_fast_http.py logs some), but nan != nan: compare its text.
        "metrics": {(r.info.run_id, tuple(sorted((k, repr(v)) for k, v in r.data.metrics.items()))) for r in runs},
        "versions": {
            (m.name, str(v.version)) for m in models for v in client.search_model_versions(f"name = '{m.name}'")
        },
        "aliases": {(m.name, alias, str(version)) for m in models for alias, version in m.aliases.items()},
    }


def s3_keys(prefix_contains: str) -> list[str]:
    """Object keys in the artifact bucket, listed from inside the network with the server's credentials."""
    script = (
        "import boto3, os, json;"
        # The server's S3 keys are files (AWS_*_FILE); the settings put them where boto3 looks.
        "from mlflow_stack_server.settings import Settings; Settings.from_environment().export_secrets();"
        "s3 = boto3.client('s3', endpoint_url=os.environ['MLFLOW_S3_ENDPOINT_URL']);"
        "pages = s3.get_paginator('list_objects_v2').paginate(Bucket=os.environ['MLFLOW_ARTIFACTS_BUCKET']);"
        "print(json.dumps([o['Key'] for p in pages for o in p.get('Contents', [])]))"
    )
    result = compose("exec", "-T", "tracking-server", "python", "-c", script)
    return [key for key in json.loads(result.stdout) if prefix_contains in key]


def trainer_python(code: str, extra: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Python inside a fresh trainer container, on the trainer's networks only."""
    return compose("run", "--rm", "-T", "--no-deps", *extra, "--entrypoint", "python", "trainer", "-c", code)


@pytest.fixture(scope="module")
def oidc_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcStack]:
    """The single sign-on tests' one stack (MLFLOW_AUTH=oidc, team mode, 2 replicas, a real OpenID provider),
    started at the first test that asks for it and removed after that module (tests/stack/oidc_stack.py): only
    test_sso.py uses it, and an idle second stack would hold ~2 GB and two healthchecks through the rest of CI."""
    from tests.stack.oidc_stack import start_oidc_stack  # it imports this module's helpers

    yield from start_oidc_stack(tmp_path_factory)
