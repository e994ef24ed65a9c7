"""Object-store faults in the middle of a 1 GiB transfer through the tracking server's streamed artifact path.

The object store is stopped, killed or paused a few hundred MB into an upload or a download made with MLflow's
own client (its HTTP artifact API through the gateway, as the stack's clients use it). Each time: the client
gets an error, never a silently short file (a stopped store may first finish the download it serves: then the
file is whole); the key holds no partial object (an upload's parts are never
completed, so whatever the key held before stays as it was); the tracking server's memory stays bounded; once
the store is back, the same transfer made again arrives whole. Then a model logged by the trainer while the
store is killed: the version it registers is whole, or the run fails and keeps the model for `trainer upload`.

The client makes one attempt with a 10 s read timeout (MLFLOW_HTTP_REQUEST_MAX_RETRIES=0,
MLFLOW_HTTP_REQUEST_TIMEOUT=10): a paused store answers nothing, and the test must see the failure, not
MLflow's minutes of retries (docs/troubleshooting.md says what a default client does).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from bench.container_memory import MIB, PeakMemory, container_id
from bench.large_artifact import write_random_file
from tests.stack.conftest import (
    REPO,
    STACK_URL,
    TrainerProcess,
    compose,
    object_store,
    parse_training,
    run_trainer,
    trainer_argv,
)
from tests.support.waiting import wait_until

# Pauses, stops and kills the object store: with the other disruptive modules, after every other test.
pytestmark = pytest.mark.disruptive(order=2)

SIZE = int(os.environ.get("LARGE_ARTIFACT_MIB", "1024")) * MIB
FAULT_AT = SIZE * 3 // 16  # bytes sent or received when the fault is injected: 192 MiB of a GiB
# Growth of the server container's memory (cgroup, page cache included) during a faulty transfer: parts in
# flight and buffers, never the artifact (see tests/stack/test_large_artifacts.py).
CEILING_MIB = min(400, SIZE // MIB // 2)
CLIENT_TIMEOUT = "10"
FAULTS = ("stop", "kill", "pause")
WHOLE = "faults/model.bin"


@dataclass(frozen=True)
class Source:
    path: Path
    sha256: str


@dataclass(frozen=True)
class Run:
    client: MlflowClient
    run_id: str
    key_prefix: str  # the run's artifact folder in the bucket


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    path = tmp_path_factory.mktemp("faults") / "model.bin"
    return Source(path, write_random_file(path, SIZE))


@pytest.fixture(scope="module")
def run() -> Run:
    client = MlflowClient(STACK_URL)
    name = "stack-test-artifact-faults"
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    created = client.create_run(experiment_id, run_name="faults")
    # mlflow-artifacts:/<experiment>/<run>/artifacts -> <experiment>/<run>/artifacts, as the bucket keys start.
    prefix = created.info.artifact_uri.removeprefix("mlflow-artifacts:").strip("/")
    return Run(client, created.info.run_id, prefix)


@pytest.fixture
def one_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", CLIENT_TIMEOUT)


def store_is_back() -> None:
    compose("up", "-d", "--wait", "--wait-timeout", "120", "--no-deps", object_store())


def store_is_unpaused() -> None:
    compose("unpause", object_store())


def inject(fault: str) -> Callable[[], None]:
    """Break the object store now; returns what brings it back."""
    compose(
        fault, object_store()
    )  # pause (frozen: connections hang), stop (SIGTERM, then the grace period), kill (SIGKILL)
    return store_is_unpaused if fault == "pause" else store_is_back


def s3_objects(prefix: str) -> dict[str, dict[str, object]]:
    """{key: {size, etag}} of the bucket's objects under `prefix`, and the multipart uploads still open there
    (under the key "uploads"), listed from inside the network with the server's credentials."""
    script = (
        "import boto3, os, json, sys;"
        "from mlflow_stack_server.settings import Settings; Settings.from_environment().export_secrets();"
        "s3 = boto3.client('s3', endpoint_url=os.environ['MLFLOW_S3_ENDPOINT_URL']);"
        "bucket = os.environ['MLFLOW_ARTIFACTS_BUCKET']; prefix = sys.argv[1];"
        "pages = s3.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix);"
        "found = {o['Key']: {'size': o['Size'], 'etag': o['ETag']} for p in pages for o in p.get('Contents', [])};"
        "uploads = s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get('Uploads', []);"
        "found['uploads'] = {'keys': sorted(u['Key'] for u in uploads)};"
        "print(json.dumps(found))"
    )
    result = compose("exec", "-T", "tracking-server", "python", "-c", script, prefix)
    return dict(json.loads(result.stdout))


def position_in(path: Path) -> int:
    """How far this process has read `path`: the offset of its open file (MLflow's client opens it itself)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                info = Path(f"/proc/self/fdinfo/{fd}").read_text()
                return int(info.split("pos:", 1)[1].split()[0])
        except (OSError, IndexError):
            continue
    return 0


def size_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as whole:
        while block := whole.read(8 * MIB):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Outcome:
    error: BaseException | None = None
    done: bool = False


def transfer_with_fault(
    transfer: Callable[[], object], progress: Callable[[], int], fault: str
) -> tuple[Outcome, PeakMemory]:
    """Run `transfer` in a thread, inject `fault` once `progress()` passes FAULT_AT, wait for the transfer to
    end, bring the store back. The server's memory is watched all along."""
    outcome = Outcome()

    def attempt() -> None:
        try:
            transfer()
        except BaseException as error:  # what the client raised is what is under test
            outcome.error = error
        outcome.done = True

    thread = threading.Thread(target=attempt, daemon=True)
    restore: Callable[[], None] | None = None
    with PeakMemory(container_id("tracking-server", REPO)) as memory:
        thread.start()
        try:
            wait_until(lambda: outcome.done or progress() >= FAULT_AT or None, 300, "no progress", interval=0.2)
            assert not outcome.done, f"the transfer ended before the fault ({outcome.error!r})"
            restore = inject(fault)
            thread.join(timeout=300)
            assert outcome.done, f"the client still waits 300 s after the store was {fault}ed"
        finally:
            if restore is not None:
                restore()
    return outcome, memory


def growth_mib(memory: PeakMemory) -> float:
    return (memory.highest.usage - memory.before.usage) / MIB


def report(what: str, outcome: Outcome, memory: PeakMemory) -> None:
    """One line in the test's captured output (pytest -rA shows it): what the client got, what memory did."""
    error = outcome.error
    said = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}" if error else "no error"
    print(f"{what}: client got {said}; server memory +{growth_mib(memory):.0f} MiB ({memory.summary()})")


@pytest.mark.parametrize("fault", FAULTS)
def test_an_upload_cut_by_the_store_fails_leaves_the_key_as_it_was_and_a_retry_stores_it_whole(
    fault: str, source: Source, run: Run, one_attempt: None
) -> None:
    key = f"{run.key_prefix}/{WHOLE}"
    before = s3_objects(key).get(key)  # the previous test's whole upload, or nothing
    outcome, memory = transfer_with_fault(
        lambda: run.client.log_artifact(run.run_id, str(source.path), "faults"), lambda: position_in(source.path), fault
    )
    report(f"upload, store {fault}", outcome, memory)
    assert outcome.error is not None, f"the upload succeeded although the store was {fault}ed"
    assert growth_mib(memory) < CEILING_MIB, memory.summary()
    # The key holds what it held before: no object made of the parts that arrived.
    after = s3_objects(key)
    assert after.get(key) == before, (before, after)

    run.client.log_artifact(run.run_id, str(source.path), "faults")  # the retry, once the store is back
    stored = s3_objects(key)
    assert stored[key]["size"] == SIZE, stored
    # Nor are the cut upload's parts left in the store: the server aborts it, once the store answers again.
    wait_until(lambda: not s3_objects(key)["uploads"]["keys"], 90, f"the upload cut by the {fault} stays open")


@pytest.mark.parametrize("fault", FAULTS)
def test_a_download_cut_by_the_store_is_an_error_never_a_short_file_and_a_retry_is_whole(
    fault: str, source: Source, run: Run, one_attempt: None, tmp_path: Path
) -> None:
    if not run.client.list_artifacts(run.run_id, "faults"):
        run.client.log_artifact(run.run_id, str(source.path), "faults")  # run alone (-k): the upload tests made it
    landing = tmp_path / "cut"
    landing.mkdir()
    target = landing / Path(WHOLE).name  # MLflow writes a file artifact under its base name
    outcome, memory = transfer_with_fault(
        lambda: run.client.download_artifacts(run.run_id, WHOLE, str(landing)), lambda: size_of(target), fault
    )
    report(f"download, store {fault}, {size_of(target)} bytes written", outcome, memory)
    if outcome.error is None:
        # Only a store that drains its open requests before it exits (a stop, SIGTERM) may let it finish: then
        # the file must be whole, never short.
        assert fault == "stop", f"the download 'succeeded' with {size_of(target)} of {SIZE} bytes"
        assert (size_of(target), sha256_of(target)) == (SIZE, source.sha256), "a short or changed file"
    assert growth_mib(memory) < CEILING_MIB, memory.summary()

    again = tmp_path / "retry"
    again.mkdir()
    downloaded = Path(run.client.download_artifacts(run.run_id, WHOLE, str(again)))
    assert (size_of(downloaded), sha256_of(downloaded)) == (SIZE, source.sha256)


def test_a_model_logged_while_the_store_is_killed_is_whole_or_its_run_fails_and_keeps_it(client: MlflowClient) -> None:
    """The trainer's own run: the store is killed as training ends (the model's upload is next) and comes back
    10 s later. MLflow's client retries for minutes by default, so the usual outcome is a whole version; a run
    that gave up must be FAILED, register nothing, and its kept model go up whole with `trainer upload`."""
    suffix = uuid.uuid4().hex[:8]
    experiment, model = f"fault-model-{suffix}", f"mnist-fault-model-{suffix}"
    argv, result_file = trainer_argv(
        "--epochs", "1", "--max-train-samples", "2000", "--min-accuracy", "0.1",
        "--experiment-name", experiment, "--registered-model-name", model,
    )  # fmt: skip
    trainer = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert trainer.stdout is not None
    lines: list[str] = []
    restore: Callable[[], None] | None = None
    try:
        for line in trainer.stdout:
            lines.append(line)
            if line.startswith("trainer: test accuracy"):  # printed right before the run's files are stored
                restore = inject("kill")
                break
        assert restore is not None, "".join(lines)[-3000:]
        time.sleep(10)
    finally:
        if restore is not None:
            restore()
    output, _ = trainer.communicate(timeout=900)
    output = "".join(lines) + output
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    (trained,) = client.search_runs([found.experiment_id])
    print(f"trainer exit {trainer.returncode}; last lines: {output.strip().splitlines()[-3:]}")
    if trainer.returncode == 0:
        process = TrainerProcess(argv, 0, output, "")
        process.result_file = result_file
        version = str(parse_training(process).version)
    else:
        assert trainer.returncode == 1, output[-3000:]
        assert trained.info.status == "FAILED", output[-3000:]
        assert not client.search_model_versions(f"name = '{model}'")  # nothing registered from a failed run
        kept = output.rsplit("trainer upload ", 1)[1].split()[0]
        uploaded = run_trainer("upload", kept, "--registered-model-name", model, "--min-accuracy", "0.1")
        assert f"registered {model} version 1" in uploaded.stdout
        version = "1"
    registered = client.get_model_version(model, version)
    assert registered.run_id == trained.info.run_id
    # Whole: every file of the version reads back complete. The Keras file is a zip whose CRCs cover every byte,
    # the JSON and YAML files do not parse when cut (loading the model would take a TensorFlow start, ~20 s).
    import mlflow
    import yaml

    mlflow.set_tracking_uri(client.tracking_uri)
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model}/{version}"))
    with zipfile.ZipFile(folder / "data" / "model.keras") as keras_file:
        assert keras_file.testzip() is None
    assert yaml.safe_load((folder / "MLmodel").read_text())["flavors"]["tensorflow"]
    for example in ("input_example.json", "serving_input_example.json"):
        assert json.loads((folder / example).read_text())


@pytest.fixture(autouse=True, scope="module")
def store_running() -> Iterator[None]:
    """Whatever a test left behind, the object store runs again for the modules after this one."""
    yield
    compose("unpause", object_store(), check=False)
    store_is_back()
