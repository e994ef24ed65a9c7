"""End-to-end checksums on the running stack: what the server stores verifies, a trainer's model included, and an
object whose bytes are changed behind the server's back (straight through the S3 API, with the stack's own
credentials, from inside the network) is refused on download and named by `make verify`.

Small files, no training of its own (the session's first training is the trainer-logged model): a few seconds
plus one `make verify` over the bucket."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tests.stack.conftest import REPO, STACK_URL, Training, compose
from tests.support.prometheus import sample, scrape

MIB = 2**20
# Larger than a part (MLFLOW_PROXY_UPLOAD_PART_MIB, 16): a multipart upload, its digest attached by a copy.
MULTIPART_BYTES = 20 * MIB

# Inside the tracking server: flip one byte of each named object in place, keeping its metadata (the recorded
# digest) and its length, as bit rot, a faulty disk or a careless writer with the bucket's keys would.
CHANGE_BYTES = """
import sys, boto3
from mlflow_stack_server.settings import Settings
settings = Settings.from_environment(); settings.export_secrets()
s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url or None)
for key in sys.argv[1:]:
    found = s3.get_object(Bucket=settings.bucket, Key=key)
    data = bytearray(found["Body"].read()); data[len(data) // 2] ^= 1
    s3.put_object(Bucket=settings.bucket, Key=key, Body=bytes(data), Metadata=found["Metadata"],
                  ContentType=found["ContentType"])
"""
# Inside the tracking server: each key's recorded digest ("" when none), as JSON.
RECORDED = """
import sys, json, boto3
from mlflow_stack_server.settings import Settings
settings = Settings.from_environment(); settings.export_secrets()
s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url or None)
print(json.dumps({k: s3.head_object(Bucket=settings.bucket, Key=k)["Metadata"].get("sha256", "") for k in sys.argv[1:]}))
"""


def in_server(script: str, *args: str) -> str:
    return compose("exec", "-T", "tracking-server", "python", "-c", script, *args).stdout


def stack_verify(*args: str) -> subprocess.CompletedProcess[str]:
    return compose("exec", "-T", "tracking-server", "stack-verify", *args, check=False)


def key_of(artifact_uri: str, path: str) -> str:
    """The object key of a run's artifact (`mlflow-artifacts:/<experiment>/<run>/artifacts` + path)."""
    return f"{artifact_uri.removeprefix('mlflow-artifacts:').lstrip('/')}/{path}"


def artifact_url(artifact_uri: str, path: str) -> str:
    return f"{STACK_URL}/api/2.0/mlflow-artifacts/artifacts/{key_of(artifact_uri, path)}"


def test_a_trainer_logged_model_is_stored_with_digests_that_verify(
    client: MlflowClient, first_training: Training
) -> None:
    run = client.get_run(first_training.run_id)
    experiment = run.info.experiment_id
    models = client.search_logged_models([experiment], filter_string=f"source_run_id = '{run.info.run_id}'")
    assert models, "the trainer logged no model"
    checked = stack_verify("--prefix", f"{experiment}/models/{models[0].model_id}/")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Every file of the model (MLmodel, weights, requirements, ...) has a digest, and all verify.
    summary = checked.stdout.strip().splitlines()[-1]
    verified = int(summary.split("/: ")[1].split(" verified")[0])
    assert verified >= 3 and ", 0 unverified" in summary and ", 0 changed" in summary, summary


def test_changed_bytes_are_refused_on_download_and_named_by_make_verify(
    client: MlflowClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment = client.get_experiment_by_name("stack-test-checksums")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("stack-test-checksums")
    run = client.create_run(experiment_id, run_name="checksums")
    files = {
        "untouched.txt": b"left alone\n",
        "note.txt": b"a small artifact\n",
        "weights.bin": os.urandom(MULTIPART_BYTES),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        client.log_artifact(run.info.run_id, str(tmp_path / name), "files")
    keys = {name: key_of(run.info.artifact_uri, f"files/{name}") for name in files}
    recorded = json.loads(in_server(RECORDED, *keys.values()))
    assert all(len(recorded[keys[name]]) == 64 for name in files), recorded  # single PUTs and the multipart one

    in_server(CHANGE_BYTES, keys["note.txt"], keys["weights.bin"])
    url = {name: artifact_url(run.info.artifact_uri, f"files/{name}") for name in files}

    untouched = requests.get(url["untouched.txt"], timeout=60)
    assert untouched.status_code == 200 and untouched.content == files["untouched.txt"]
    # Smaller than one read: checked before the answer starts, a 500 naming the object.
    note = requests.get(url["note.txt"], timeout=60)
    assert note.status_code == 500 and note.json()["error_code"] == "DATA_LOSS", note.text
    assert keys["note.txt"] in note.json()["message"]
    # Larger: the answer has started (200, Content-Length), and is cut short before its last chunk.
    with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
        requests.get(url["weights.bin"], timeout=120)
    # MLflow's own client fails too, instead of handing over the changed bytes (after its retries, which find the
    # same bytes: none here, they add minutes of backoff).
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    for name in ("note.txt", "weights.bin"):
        with pytest.raises(MlflowException, match="Failed to download artifacts"):
            client.download_artifacts(run.info.run_id, f"files/{name}", str(tmp_path / "down"))
    assert sample(scrape(STACK_URL), "mlflow_stack_artifact_checksums_total", result="changed") >= 2

    made = subprocess.run(["make", "--no-print-directory", "verify"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    output = made.stdout + made.stderr
    assert made.returncode != 0, output
    changed = {line.split()[2] for line in made.stdout.splitlines() if line.startswith("stack-verify: CHANGED")}
    assert {keys["note.txt"], keys["weights.bin"]} <= changed and keys["untouched.txt"] not in changed, output
    summary = made.stdout.strip().splitlines()[-1]
    assert summary.startswith("stack-verify: s3://") and f", {len(changed)} changed;" in summary, output

    for name in ("note.txt", "weights.bin"):  # leave the bucket verifying clean for whoever runs make verify next
        assert requests.delete(url[name], timeout=60).status_code == 200
    after = stack_verify("--prefix", f"{experiment_id}/{run.info.run_id}/")
    assert after.returncode == 0 and ": 1 verified, 0 unverified" in after.stdout and " 0 changed" in after.stdout, (
        after.stdout
    )
