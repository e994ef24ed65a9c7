"""prepare's and serve's look at the bucket: keys the store refuses stop the start at once, in one line that
names the store's reason; a missing bucket is created; an unreachable store is waited for (prepare) or logged
(serve). The S3 side is a scripted boto3 stand-in; tests/stack/test_object_store.py uses the real store."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from mlflow_stack_server import entrypoint
from mlflow_stack_server.settings import Settings

ENVIRON = {
    "POSTGRES_USER": "u",
    "POSTGRES_PASSWORD": "p",
    "POSTGRES_DB": "d",
    "MLFLOW_ARTIFACTS_BUCKET": "mlflow",
    "MLFLOW_S3_ENDPOINT_URL": "http://minio:9000",
    "MLFLOW_BOOTSTRAP_TIMEOUT": "10",
}


def client_error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "..."}}, operation)


class ScriptedS3:
    """HeadBucket answers from `heads` in turn (an exception or None for 200); ListObjectsV2 raises `listing`."""

    def __init__(self, heads: list[Exception | None], listing: Exception | None = None) -> None:
        self.heads = heads
        self.listing = listing
        self.calls: list[str] = []

    def head_bucket(self, **kwargs: Any) -> None:
        self.calls.append("head")
        answer = self.heads.pop(0)
        if answer is not None:
            raise answer

    def list_objects_v2(self, **kwargs: Any) -> None:
        self.calls.append("list")
        if self.listing is not None:
            raise self.listing

    def create_bucket(self, **kwargs: Any) -> None:
        self.calls.append("create")


@pytest.fixture
def settings() -> Settings:
    return Settings.from_environment(ENVIRON)


def use(monkeypatch: pytest.MonkeyPatch, s3: ScriptedS3) -> None:
    monkeypatch.setattr(entrypoint, "_s3_client", lambda settings, config=None: s3)


@pytest.mark.parametrize(
    ("listing_code", "reason"),
    [
        ("SignatureDoesNotMatch", "SignatureDoesNotMatch: the secret key does not match the access key"),
        ("InvalidAccessKeyId", "InvalidAccessKeyId: the store knows no such access key"),
        ("SomethingElse", "403 Forbidden"),
    ],
)
def test_refused_keys_stop_prepare_at_once_with_the_stores_reason(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], listing_code: str,
    reason: str,
) -> None:  # fmt: skip
    s3 = ScriptedS3([client_error("403", "HeadBucket")], client_error(listing_code, "ListObjectsV2"))
    use(monkeypatch, s3)
    with pytest.raises(SystemExit) as exit_:
        entrypoint.ensure_bucket(settings)
    assert exit_.value.code == 1
    assert s3.calls == ["head", "list"]  # not retried
    captured = capsys.readouterr()
    assert captured.out == ""  # no "not ready, retrying" lines before it
    (line,) = captured.err.splitlines()
    assert line.startswith(
        "[tracking-server] error: checking bucket mlflow: the object store at http://minio:9000 refused the "
        f"tracking server's S3 credentials on bucket mlflow ({reason}): "
    )
    assert "scripts/secrets.sh rotate minio_root_password" in line


def test_a_missing_bucket_is_created_and_an_unreachable_store_waited_for(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    unreachable = EndpointConnectionError(endpoint_url="http://minio:9000/mlflow")
    s3 = ScriptedS3([unreachable, client_error("404", "HeadBucket")])
    use(monkeypatch, s3)
    entrypoint.ensure_bucket(settings)
    assert s3.calls == ["head", "head", "create"]
    out = capsys.readouterr().out
    assert "checking bucket mlflow: not ready (EndpointConnectionError" in out
    assert "created bucket mlflow" in out


def test_serve_stops_on_refused_keys_and_starts_without_a_reachable_store(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    use(monkeypatch, ScriptedS3([client_error("403", "HeadBucket")], client_error("InvalidAccessKeyId", "List")))
    with pytest.raises(SystemExit):
        entrypoint.check_bucket_before_serving(settings)
    assert "refused the tracking server's S3 credentials" in capsys.readouterr().err

    use(monkeypatch, ScriptedS3([EndpointConnectionError(endpoint_url="http://minio:9000/mlflow")]))
    entrypoint.check_bucket_before_serving(settings)  # returns: the server starts
    assert "bucket mlflow not checked (EndpointConnectionError" in capsys.readouterr().out
