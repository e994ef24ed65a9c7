"""The object store as a real S3 server: it accepts only the generated credentials; keys it refuses stop the
tracking server at its start in one line, never half-started; `scripts/secrets.sh rotate minio_root_password`
keeps every artifact readable.

The first tests only start one-off containers; the last restarts the store and the tracking server.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime

import pytest
import requests
from mlflow import MlflowClient

from tests.stack.conftest import REPO, STACK_URL, compose, object_store

# What the store answers (HTTP status) to a ListObjects of the artifact bucket, signed with each identity, from
# inside the backend network. The server's keys are files (AWS_*_FILE); the settings put them where boto3 looks.
STORE_ANSWERS = """
import json, os, sys
import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import ClientError
from mlflow_stack_server.settings import Settings

Settings.from_environment().export_secrets()
user, password = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]


def status(**identity):
    s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"], **identity)
    try:
        s3.list_objects_v2(Bucket=os.environ["MLFLOW_ARTIFACTS_BUCKET"], MaxKeys=1)
        return 200
    except ClientError as error:
        return error.response["ResponseMetadata"]["HTTPStatusCode"]


answers = {
    "generated": status(aws_access_key_id=user, aws_secret_access_key=password),
    "wrong secret": status(aws_access_key_id=user, aws_secret_access_key=password + "x"),
    "unknown key": status(aws_access_key_id="someone-else", aws_secret_access_key=password),
    "MinIO's default": status(aws_access_key_id="minioadmin", aws_secret_access_key="minioadmin"),
    "anonymous": status(config=Config(signature_version=UNSIGNED)),
}
for given in sys.argv[1:]:
    answers[f"given {given[:4]}..."] = status(aws_access_key_id=user, aws_secret_access_key=given)
print(json.dumps(answers))
"""
REFUSED = "refused the tracking server's S3 credentials on bucket"


def store_answers(*other_passwords: str) -> dict[str, int]:
    result = compose("exec", "-T", "tracking-server", "python", "-c", STORE_ANSWERS, *other_passwords)
    return dict(json.loads(result.stdout))


def secret(name: str) -> str:
    shown = subprocess.run(
        ["scripts/secrets.sh", "show", name], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    return shown.removeprefix(f"{name}=")


def set_secret(name: str, value: str) -> None:
    subprocess.run(
        ["docker", "compose", "run", "--rm", "--no-deps", "-T", "secrets", "set", name],
        cwd=REPO, input=value, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if "error:" in line]


def serves() -> bool:
    """Whether a tracking server answers behind the gateway (with none, HAProxy answers 503 or closes)."""
    try:
        return requests.get(STACK_URL + "/health", timeout=10).status_code == 200
    except requests.ConnectionError:
        return False


def test_the_object_store_accepts_only_the_generated_credentials() -> None:
    assert store_answers() == {
        "generated": 200,
        "wrong secret": 403,
        "unknown key": 403,
        "MinIO's default": 403,
        "anonymous": 403,
    }


@pytest.mark.parametrize(
    ("step", "variable", "reason"),
    [
        ("prepare", "AWS_SECRET_ACCESS_KEY=wrong", "SignatureDoesNotMatch"),
        ("serve", "AWS_ACCESS_KEY_ID=someone-else", "InvalidAccessKeyId"),
    ],
)
def test_keys_the_store_refuses_stop_the_start_at_once_in_one_line(step: str, variable: str, reason: str) -> None:
    # A plain AWS_* variable wins over the generated file (mlflow_stack_server/settings.py).
    result = compose("run", "--rm", "--no-deps", "-T", "-e", variable, "tracking-server", step, check=False)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    (line,) = errors(result.stderr)
    assert REFUSED in line and f"({reason}: " in line, line
    assert "scripts/secrets.sh rotate minio_root_password" in line
    assert "not ready" not in result.stdout  # refused at once, not retried for MLFLOW_BOOTSTRAP_TIMEOUT
    if step == "serve":
        assert "starting mlflow server" not in result.stdout


@pytest.mark.disruptive(order=2)
def test_a_password_the_store_does_not_hold_stops_the_stack_at_prepare_and_rotate_brings_it_back_readable() -> None:
    """The volume's password changed behind the store's back (the store still runs with the old one): `up`
    stops at prepare in one line and no tracking server serves. `scripts/secrets.sh rotate minio_root_password`,
    the fix that line names, restarts both with a new password: the old one is refused, the new one accepted,
    what was written before reads back and new files go in."""
    client = MlflowClient(tracking_uri=STACK_URL, registry_uri=STACK_URL)
    suffix = uuid.uuid4().hex[:8]
    run = client.create_run(client.create_experiment(f"rotation-{suffix}"))
    before = f"written before the rotation {suffix}"
    client.log_text(run.info.run_id, before, "model/weights.txt")
    model = f"rotation-{suffix}"
    client.create_registered_model(model)
    version = client.create_model_version(model, f"runs:/{run.info.run_id}/model", run.info.run_id)
    old = secret("minio_root_password")

    set_secret("minio_root_password", "not-the-one-the-store-started-with")
    rotated = None
    try:
        compose("stop", "tracking-server")
        started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # the one-shot's log spans every `up`
        up = compose("up", "-d", "--wait", "--wait-timeout", "120", check=False)
        assert up.returncode != 0, up.stderr[-2000:]
        assert "tracking-server-prepare" in up.stderr, up.stderr[-2000:]
        prepare = compose("logs", "--no-log-prefix", "--since", started, "tracking-server-prepare").stdout
        (line,) = errors(prepare)
        assert REFUSED in line and "(SignatureDoesNotMatch: " in line, prepare
        # Not started, so not serving: the gateway has no server behind it.
        assert "running" not in compose("ps", "-a", "--format", "{{.State}}", "tracking-server").stdout
        assert not serves(), "a tracking server answers although prepare failed"

        rotated = subprocess.run(
            ["scripts/secrets.sh", "rotate", "minio_root_password"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert rotated.returncode == 0, rotated.stdout[-2000:] + rotated.stderr[-2000:]
        assert "secrets: rotated minio_root_password" in rotated.stdout
    finally:
        if rotated is None or rotated.returncode != 0:  # the stack back as it was, for the tests after this
            set_secret("minio_root_password", old)
            compose("restart", object_store(), "tracking-server", check=False)
            compose("up", "-d", "--wait", "--wait-timeout", "180", check=False)
    new = secret("minio_root_password")
    assert new not in (old, "not-the-one-the-store-started-with")
    assert serves()
    answers = store_answers(old, new)
    assert answers[f"given {old[:4]}..."] == 403 and answers[f"given {new[:4]}..."] == 200, answers

    # What was written before reads back, through the run and through the registry; new writes work.
    artifacts = run.info.artifact_uri.removeprefix("mlflow-artifacts:").strip("/")
    url = f"{STACK_URL}/api/2.0/mlflow-artifacts/artifacts/{artifacts}/model/weights.txt"
    assert requests.get(url, timeout=30).text == before
    import mlflow

    mlflow.set_tracking_uri(STACK_URL)
    folder = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model}/{version.version}")
    with open(f"{folder}/weights.txt") as weights:
        assert weights.read() == before
    client.log_text(run.info.run_id, "written after", "after.txt")
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"model", "after.txt"}
