"""The tracking server's streamed artifact upload: how a body is cut into S3 parts, and what is left in S3
when the client goes away. The S3 side is a recorder of boto3 calls; the stack test
(tests/stack/test_large_artifacts.py) sends a real gigabyte through the gateway to the S3 endpoint."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mlflow_stack_server import streamed_artifacts
from mlflow_stack_server.settings import MIB, Settings, SettingsError
from mlflow_stack_server.streamed_artifacts import S3Object, stream_to_s3


class RecordingS3:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.parts: dict[int, bytes] = {}

    def create_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("create", kwargs))
        return {"UploadId": "u1"}

    def upload_part(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("part", {k: v for k, v in kwargs.items() if k != "Body"}))
        self.parts[kwargs["PartNumber"]] = kwargs["Body"]
        return {"ETag": f"etag-{kwargs['PartNumber']}"}

    def complete_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("complete", kwargs))
        return {"ETag": '"etag-all"'}

    def copy_object(self, **kwargs: Any) -> None:  # the digest, attached after completion (test_checksums.py)
        self.calls.append(("copy", kwargs))

    def abort_multipart_upload(self, **kwargs: Any) -> None:
        self.calls.append(("abort", kwargs))

    def put_object(self, **kwargs: Any) -> None:
        self.calls.append(("put", {k: v for k, v in kwargs.items() if k != "Body"}))
        self.parts[0] = kwargs["Body"]


async def chunked(data: bytes, size: int, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        if fail_after is not None and start >= fail_after:
            raise ConnectionResetError("client went away")
        yield data[start : start + size]


def target(client: RecordingS3, extra: dict[str, Any] | None = None) -> S3Object:
    return S3Object(client=client, bucket="b", key="1/run/artifacts/model.bin", extra_args=extra or {})


def test_a_body_larger_than_a_part_goes_up_in_parts_in_order() -> None:
    s3 = RecordingS3()
    data = os.urandom(19 * MIB) + b"tail"  # three whole parts of 5 MiB and a last, smaller one
    stored = asyncio.run(stream_to_s3(chunked(data, 65536), target(s3), "model.bin", 5 * MIB))
    assert stored == len(data)
    kinds = [kind for kind, _ in s3.calls]
    assert kinds[0] == "create" and kinds[-2:] == ["complete", "copy"] and "abort" not in kinds and "put" not in kinds
    assert b"".join(s3.parts[n] for n in sorted(s3.parts)) == data
    assert [len(s3.parts[n]) for n in sorted(s3.parts)] == [5 * MIB, 5 * MIB, 5 * MIB, 4 * MIB + 4]
    completed = s3.calls[-2][1]["MultipartUpload"]["Parts"]
    assert [p["PartNumber"] for p in completed] == list(range(1, len(s3.parts) + 1))
    assert [p["ETag"] for p in completed] == [f"etag-{n}" for n in range(1, len(s3.parts) + 1)]


def test_a_small_body_is_one_put_with_mlflows_upload_arguments() -> None:
    s3 = RecordingS3()
    stored = asyncio.run(
        stream_to_s3(chunked(b"{}", 1), target(s3, {"ServerSideEncryption": "AES256"}), "model.json", 5 * MIB)
    )
    assert stored == 2 and s3.parts[0] == b"{}"
    assert s3.calls == [
        ("put", {"Bucket": "b", "Key": "1/run/artifacts/model.bin", "ContentType": "application/json",
                 "ServerSideEncryption": "AES256", "Metadata": {"sha256": hashlib.sha256(b"{}").hexdigest()}}),
    ]  # fmt: skip


def test_an_empty_body_stores_an_empty_object() -> None:
    s3 = RecordingS3()
    assert asyncio.run(stream_to_s3(chunked(b"", 1), target(s3), "empty", 5 * MIB)) == 0
    assert [kind for kind, _ in s3.calls] == ["put"] and s3.parts[0] == b""


def test_a_client_that_goes_away_mid_upload_leaves_no_object() -> None:
    s3 = RecordingS3()
    data = b"x" * (12 * MIB)
    with pytest.raises(ConnectionResetError):
        asyncio.run(stream_to_s3(chunked(data, MIB, fail_after=11 * MIB), target(s3), "model.bin", 5 * MIB))
    kinds = [kind for kind, _ in s3.calls]
    assert kinds[-1] == "abort" and "complete" not in kinds and "put" not in kinds


class StoreGoneDown(RecordingS3):
    """Fails a part, then the abort (the store is down), then answers again."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_aborts = 0

    def upload_part(self, **kwargs: Any) -> dict[str, Any]:
        if kwargs["PartNumber"] == 2:
            raise ConnectionError("store down")
        return super().upload_part(**kwargs)

    def abort_multipart_upload(self, **kwargs: Any) -> None:
        if not self.failed_aborts:
            self.failed_aborts += 1
            raise ConnectionError("store still down")
        super().abort_multipart_upload(**kwargs)


def test_an_upload_cut_by_the_store_raises_the_stores_error_and_is_aborted_once_the_store_is_back() -> None:
    s3 = StoreGoneDown()

    async def upload_then_wait_for_the_abort() -> None:
        with pytest.raises(ConnectionError, match="store down"):  # not the abort's error
            await stream_to_s3(chunked(os.urandom(12 * MIB), MIB), target(s3), "model.bin", 5 * MIB)
        assert "abort" not in [kind for kind, _ in s3.calls]
        await asyncio.gather(*streamed_artifacts._aborts_pending)  # the background retry, 1 s later

    asyncio.run(upload_then_wait_for_the_abort())
    kinds = [kind for kind, _ in s3.calls]
    assert s3.failed_aborts == 1 and kinds[-1] == "abort" and "complete" not in kinds


def test_the_part_size_knob_refuses_what_s3_would() -> None:
    with pytest.raises(SettingsError, match="at least 5 MiB"):
        Settings.from_environment({"MLFLOW_PROXY_UPLOAD_PART_MIB": "4"}, server=False)
    assert Settings.from_environment({"MLFLOW_PROXY_UPLOAD_PART_MIB": "64"}, server=False).upload_part_bytes == 64 * MIB
