"""A large artifact up and down through the gateway, with MLflow's own client, and what it costs the server.

Issue 12 (large models): a >= 1 GiB artifact must arrive intact both ways, and the tracking server must not
hold it in memory or in a temporary file on the way (mlflow_stack_server/streamed_artifacts.py streams it
to and from S3). The memory ceiling is on the container's cgroup (page cache included), read on the Docker
host: a whole copy of the artifact, in a buffer or in a temporary file, grows it by the artifact's size;
streaming grew it by ~0.1 GiB (bench/large_artifact.py measures both before and after). LARGE_ARTIFACT_MIB
changes the size (default 1024).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

from bench.container_memory import MIB, PeakMemory, container_id
from bench.large_artifact import artifact_url, download, write_random_file
from tests.stack.conftest import REPO, STACK_URL

SIZE_MIB = int(os.environ.get("LARGE_ARTIFACT_MIB", "1024"))
# Growth of the server container's memory (cgroup usage, page cache included) during one transfer. A copy
# of the whole artifact in memory or in a temporary file would add SIZE_MIB.
CEILING_MIB = min(400, SIZE_MIB // 2)


@pytest.fixture(scope="module")
def run_artifacts() -> tuple[MlflowClient, str, str]:
    client = MlflowClient(STACK_URL)
    name = "stack-test-large-artifacts"
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    run = client.create_run(experiment_id, run_name=f"large-{SIZE_MIB}MiB")
    return client, run.info.run_id, run.info.artifact_uri


def test_a_large_artifact_goes_up_and_down_intact_with_bounded_server_memory(
    run_artifacts: tuple[MlflowClient, str, str], tmp_path: Path
) -> None:
    client, run_id, artifact_uri = run_artifacts
    source = tmp_path / "model.bin"
    sha256 = write_random_file(source, SIZE_MIB * MIB)
    server = container_id("tracking-server", REPO)
    url = artifact_url(artifact_uri, "large/model.bin")
    try:
        with PeakMemory(server) as up:
            client.log_artifact(run_id, str(source), "large")  # MLflow's client: one PUT through the proxy
        source.unlink()
        assert [f.file_size for f in client.list_artifacts(run_id, "large")] == [SIZE_MIB * MIB]

        with PeakMemory(server) as down:
            transfer, received, headers = download(url)
        assert transfer.status == 200 and received == SIZE_MIB * MIB
        assert transfer.sha256 == sha256
        # MLflow's headers for the file, plus its length.
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["Content-Disposition"].startswith("attachment") and "model.bin" in headers["Content-Disposition"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Content-Length"] == str(SIZE_MIB * MIB)

        for what, peak in (("upload", up), ("download", down)):
            growth = (peak.highest.usage - peak.before.usage) / MIB
            assert growth < CEILING_MIB, f"{what}: server memory grew {growth:.0f} MiB ({peak.summary()})"
    finally:
        requests.delete(url, timeout=600)  # a GiB per run would pile up in the store's volume


def test_what_is_not_a_stored_file_is_answered_as_mlflow_does(run_artifacts: tuple[MlflowClient, str, str]) -> None:
    client, run_id, artifact_uri = run_artifacts
    client.log_text(run_id, "hello", "folder/note.txt")
    note = requests.get(artifact_url(artifact_uri, "folder/note.txt"), timeout=60)
    assert note.status_code == 200 and note.text == "hello"
    assert note.headers["Content-Type"].startswith("text/plain")
    # A missing file and a path that is a folder: MLflow's own handler answers (no stream is started).
    # MLflow 3.17.2 answers a missing file with 500 INTERNAL_ERROR naming S3's 404 (artifact_router.py: the
    # ClientError of its download is not an MlflowException); kept as it is, MLflow's clients expect it.
    missing = requests.get(artifact_url(artifact_uri, "folder/nothing.bin"), timeout=60)
    assert missing.status_code == 500 and "Not Found" in missing.json()["message"], missing.text
    # An unsafe path is refused before S3 is asked.
    unsafe = requests.get(STACK_URL + "/api/2.0/mlflow-artifacts/artifacts/..%2F..%2Fetc%2Fpasswd", timeout=60)
    assert unsafe.status_code == 400, unsafe.text
    assert hashlib.sha256(note.content).hexdigest() == hashlib.sha256(b"hello").hexdigest()


def test_a_client_with_proxy_multipart_upload_on_falls_back_to_the_streamed_put(
    run_artifacts: tuple[MlflowClient, str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MLflow's proxied multipart upload would send the parts to presigned S3 URLs, which clients cannot reach:
    # the server answers its create call with 501 and the sentence on which MLflow's client falls back to one
    # PUT (http_artifact_repo._try_multipart_upload); any other answer would fail the upload.
    client, run_id, artifact_uri = run_artifacts
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "true")
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", "1")
    source = tmp_path / "weights.bin"
    content = os.urandom(6 * MIB)
    source.write_bytes(content)
    client.log_artifact(run_id, str(source), "multipart")
    url = artifact_url(artifact_uri, "multipart/weights.bin")
    assert requests.get(url, timeout=120).content == content
    requests.delete(url, timeout=60)
