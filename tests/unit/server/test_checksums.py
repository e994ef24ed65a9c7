"""End-to-end checksums (mlflow_stack_server/checksums.py): the SHA-256 each upload path records, how a download
checks it, what a client gets when the bytes changed, and stack-verify's verdicts. The S3 side is an in-memory
recorder of boto3 calls; tests/stack/test_checksums.py changes a real object behind a running server's back."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from mlflow.exceptions import MlflowException

from mlflow_stack_server import checksums, stack_verify, streamed_artifacts
from mlflow_stack_server.checksummed_s3_repo import ChecksummedS3ArtifactRepository
from mlflow_stack_server.proxied_artifacts import ProxiedArtifactsOnly
from mlflow_stack_server.settings import MIB
from mlflow_stack_server.streamed_artifacts import S3Object, stream_artifact_transfers, stream_to_s3

STORED_AT = datetime(2026, 1, 1, tzinfo=UTC)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class MemoryS3:
    """Objects in a dict, with the calls that change them recorded (boto3's keyword arguments)."""

    class exceptions:  # noqa: N801 - boto3's spelling: client.exceptions.NoSuchKey
        class NoSuchKey(Exception):  # noqa: N818
            pass

    def __init__(self) -> None:
        self.objects: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.parts: dict[int, bytes] = {}
        self.fail_copy = False

    def put_object(self, Key: str, Body: bytes, Metadata: dict[str, str] | None = None, **kwargs: Any) -> None:  # noqa: N803
        self.calls.append(("put", {"Key": Key, "Metadata": Metadata, **kwargs}))
        self.objects[Key] = (Body, dict(Metadata or {}))

    def create_multipart_upload(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(("create", kwargs))
        self.parts = {}
        return {"UploadId": "u1"}

    def upload_part(self, PartNumber: int, Body: bytes, **kwargs: Any) -> dict[str, Any]:  # noqa: N803
        self.parts[PartNumber] = Body
        return {"ETag": f'"part-{PartNumber}"'}

    def complete_multipart_upload(self, Key: str, **kwargs: Any) -> dict[str, Any]:  # noqa: N803
        self.calls.append(("complete", {"Key": Key, **kwargs}))
        self.objects[Key] = (b"".join(self.parts[n] for n in sorted(self.parts)), {})
        return {"ETag": '"abc-2"'}

    def abort_multipart_upload(self, **kwargs: Any) -> None:
        self.calls.append(("abort", kwargs))

    def copy_object(self, Key: str, Metadata: dict[str, str], **kwargs: Any) -> None:  # noqa: N803
        self.calls.append(("copy_object", {"Key": Key, "Metadata": Metadata, **kwargs}))
        if self.fail_copy:
            raise ConnectionError("object store went away")
        self.objects[Key] = (self.objects[Key][0], dict(Metadata))

    def copy(self, Key: str, ExtraArgs: dict[str, Any], **kwargs: Any) -> None:  # noqa: N803
        self.calls.append(("managed_copy", {"Key": Key, "ExtraArgs": ExtraArgs, **kwargs}))

    def get_object(self, Key: str, **kwargs: Any) -> dict[str, Any]:  # noqa: N803
        if Key not in self.objects:
            raise self.exceptions.NoSuchKey(Key)
        data, metadata = self.objects[Key]
        return {"Body": io.BytesIO(data), "Metadata": metadata, "ContentLength": len(data)}

    def get_paginator(self, _name: str) -> Any:
        objects = self.objects

        class Pages:
            def paginate(self, Bucket: str, Prefix: str = "") -> list[dict[str, Any]]:  # noqa: N803
                listed = [{"Key": k, "LastModified": STORED_AT} for k in sorted(objects) if k.startswith(Prefix)]
                return [{"Contents": listed}]

        return Pages()

    def change(self, key: str) -> None:
        """Flip one byte behind everyone's back, keeping the recorded digest."""
        data, metadata = self.objects[key]
        changed = bytearray(data)
        changed[len(changed) // 2] ^= 1
        self.objects[key] = (bytes(changed), metadata)


async def chunked(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


KEY = "1/run/artifacts/model.bin"


def target(s3: MemoryS3, extra: dict[str, Any] | None = None) -> S3Object:
    return S3Object(client=s3, bucket="b", key=KEY, extra_args=extra or {})


# Recording: every upload path -------------------------------------------------------------------------------


def test_a_single_put_carries_the_digest_and_keeps_user_metadata() -> None:
    s3 = MemoryS3()
    extra = {"Metadata": {"team": "vision"}, "ServerSideEncryption": "AES256"}
    asyncio.run(stream_to_s3(chunked(b'{"a": 1}', 3), target(s3, extra), "model.json", 5 * MIB))
    kind, put = s3.calls[0]
    assert kind == "put" and len(s3.calls) == 1
    assert put["Metadata"] == {"team": "vision", "sha256": sha256(b'{"a": 1}')}
    assert put["ContentType"] == "application/json" and put["ServerSideEncryption"] == "AES256"


def test_a_multipart_upload_gets_its_whole_digest_by_an_in_place_copy_of_the_completed_object() -> None:
    s3 = MemoryS3()
    data = os.urandom(11 * MIB)  # two whole parts of 5 MiB and a smaller last one
    extra = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": "k", "Tagging": "a=b"}
    asyncio.run(stream_to_s3(chunked(data), target(s3, extra), "model.bin", 5 * MIB))
    kinds = [kind for kind, _ in s3.calls]
    assert kinds == ["create", "complete", "copy_object"]
    copy = s3.calls[-1][1]
    assert copy["Key"] == KEY and copy["CopySource"] == {"Bucket": "b", "Key": KEY}
    assert copy["Metadata"] == {"sha256": sha256(data)} and copy["MetadataDirective"] == "REPLACE"
    # The object keeps the attributes its upload gave it: REPLACE would drop the content type otherwise.
    assert copy["ContentType"] == "application/octet-stream"
    # Only the object just completed is given the digest; SSE-C objects are read with their key.
    assert copy["CopySourceIfMatch"] == '"abc-2"'
    assert copy["CopySourceSSECustomerKey"] == "k" and copy["SSECustomerKey"] == "k"
    assert "Tagging" not in copy  # the copy keeps the upload's tags (TaggingDirective COPY)
    assert s3.objects[KEY] == (data, {"sha256": sha256(data)})


def test_a_failed_digest_copy_fails_the_upload_without_aborting_the_completed_object() -> None:
    s3 = MemoryS3()
    s3.fail_copy = True
    data = os.urandom(6 * MIB)
    with pytest.raises(ConnectionError):
        asyncio.run(stream_to_s3(chunked(data), target(s3), "model.bin", 5 * MIB))
    assert [kind for kind, _ in s3.calls] == ["create", "complete", "copy_object"]
    assert s3.objects[KEY] == (data, {})  # whole, and read as unverified


def test_an_object_above_the_single_copy_limit_is_copied_in_parts_inside_s3() -> None:
    s3 = MemoryS3()
    completed = {"ETag": '"e-800"', "Size": checksums.COPY_OBJECT_MAX_BYTES + 1}
    checksums.record_after_multipart(s3, "b", KEY, completed, {"ContentType": "x/y"}, "0" * 64)
    kind, copy = s3.calls[0]
    assert kind == "managed_copy" and copy["CopySource"] == {"Bucket": "b", "Key": KEY}
    assert copy["ExtraArgs"]["Metadata"] == {"sha256": "0" * 64} and copy["ExtraArgs"]["MetadataDirective"] == "REPLACE"
    assert copy["ExtraArgs"]["CopySourceIfMatch"] == '"e-800"' and copy["ExtraArgs"]["ContentType"] == "x/y"


def test_mlflows_repository_uploads_with_the_digest_and_checks_downloads(tmp_path: Path) -> None:
    s3 = MemoryS3()

    class Transfers(MemoryS3):
        def upload_file(self, Filename: str, Bucket: str, Key: str, ExtraArgs: dict[str, Any]) -> None:  # noqa: N803
            s3.objects[Key] = (Path(Filename).read_bytes(), ExtraArgs["Metadata"])
            s3.calls.append(("upload_file", {"Key": Key, **ExtraArgs}))

    repository = ChecksummedS3ArtifactRepository("s3://b/root")
    repository._get_s3_client = lambda: Transfers()  # type: ignore[method-assign]
    source = tmp_path / "note.txt"
    source.write_bytes(b"hello")
    repository.log_artifact(str(source), "notes")
    assert s3.calls == [("upload_file", {"Key": "root/notes/note.txt", "ContentType": "text/plain",
                                         "Metadata": {"sha256": sha256(b"hello")}})]  # fmt: skip

    repository._get_s3_client = lambda: s3  # type: ignore[method-assign]
    downloaded = tmp_path / "down.txt"
    repository._download_file("notes/note.txt", str(downloaded))
    assert downloaded.read_bytes() == b"hello"
    s3.change("root/notes/note.txt")
    with pytest.raises(MlflowException, match=r"root/notes/note\.txt: its bytes changed") as raised:
        repository._download_file("notes/note.txt", str(downloaded))
    assert raised.value.get_http_status_code() == 500 and not downloaded.exists()


# Checking ---------------------------------------------------------------------------------------------------


def read_all(reader: checksums.CheckedReader) -> bytes:
    out = io.BytesIO()
    checksums.copy_checked(reader, out)
    return out.getvalue()


def test_the_reader_verifies_reports_unverified_and_refuses_changed_bytes() -> None:
    data = os.urandom(3 * MIB + 7)
    verified = checksums.CheckedReader(io.BytesIO(data), "k", sha256(data), len(data))
    assert read_all(verified) == data and verified.finish() == "verified"
    unverified = checksums.CheckedReader(io.BytesIO(data), "k", None, len(data))
    assert read_all(unverified) == data and unverified.finish() == "unverified"
    changed = checksums.CheckedReader(io.BytesIO(data[:-1] + b"!"), "k", sha256(data), len(data))
    read_all(changed)
    with pytest.raises(checksums.ArtifactChangedError, match="k: its bytes changed"):
        changed.finish()
    short = checksums.CheckedReader(io.BytesIO(data[:100]), "k", sha256(data), len(data))
    with pytest.raises(OSError, match="ended the body after 100 of"):
        read_all(short)


def test_only_a_well_formed_digest_counts_as_recorded() -> None:
    digest = sha256(b"x")
    assert checksums.recorded_digest({"sha256": digest.upper()}) == digest
    assert checksums.recorded_digest({"sha256": "not-a-digest"}) is None
    assert checksums.recorded_digest(None) is None and checksums.recorded_digest({"other": digest}) is None


Served = tuple[MemoryS3, ProxiedArtifactsOnly]


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Served:
    """The download route in a FastAPI app behind ProxiedArtifactsOnly, reading from `MemoryS3`."""
    s3 = MemoryS3()
    monkeypatch.setattr(streamed_artifacts, "_locate_or_none", lambda path: S3Object(s3, "b", path, {}))
    return s3, ProxiedArtifactsOnly(stream_artifact_transfers(FastAPI(), 5 * MIB), threads=4, ui_workflow="")


def download(app: ProxiedArtifactsOnly, key: str) -> tuple[int, bytes, dict[str, str], bool]:
    """One GET through the ASGI app as a server would run it: status, body, headers, whether the body ended."""
    path = f"/api/2.0/mlflow-artifacts/artifacts/{key}"
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": [],
             "server": ("test", 80), "client": ("127.0.0.1", 1)}  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)  # no request body; the client stays connected
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    start = next(m for m in sent if m["type"] == "http.response.start")
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    ended = any(not m.get("more_body", False) for m in bodies)
    return start["status"], b"".join(m.get("body", b"") for m in bodies), headers, ended


def test_a_changed_large_artifact_is_cut_short_of_its_length(served: Served) -> None:
    s3, app = served
    data = os.urandom(3 * MIB + 5)
    s3.objects["big.bin"] = (data, {"sha256": sha256(data)})
    assert download(app, "big.bin")[1:4:2] == (data, True)
    s3.change("big.bin")
    status, body, headers, ended = download(app, "big.bin")
    # The answer had started (200, the length announced): the body never ends, and the server (uvicorn) closes
    # the connection short of Content-Length; the last chunk, the one that completes the hash, is not sent.
    assert status == 200 and headers["content-length"] == str(len(data)) and not ended
    assert len(body) <= len(data) - 5 and body == s3.objects["big.bin"][0][: len(body)]


def test_a_changed_small_artifact_is_answered_500_naming_it(served: Served) -> None:
    s3, app = served
    s3.objects["note.txt"] = (b"hello", {"sha256": sha256(b"hello")})
    s3.change("note.txt")
    status, body, _, _ = download(app, "note.txt")
    assert status == 500 and b"DATA_LOSS" in body and b"note.txt: its bytes changed" in body
    s3.objects["old.txt"] = (b"written before checksums", {})
    assert download(app, "old.txt")[:2] == (200, b"written before checksums")


# stack-verify -----------------------------------------------------------------------------------------------


def test_stack_verify_names_what_changed_and_counts_the_rest() -> None:
    s3 = MemoryS3()
    original = os.urandom(2 * MIB)
    for key, data in (("1/a", b"a" * 10), ("1/b", original), ("1/c", b"c")):
        s3.objects[key] = (data, {"sha256": sha256(data)})
    s3.objects["1/old"] = (b"from before", {})
    s3.change("1/b")
    results = {key: stack_verify.check(s3, "b", key) for page in stack_verify.pages(s3, "b", "1/") for key in page}
    assert {key: checked.result for key, checked in results.items()} == {
        "1/a": "verified", "1/b": "changed", "1/c": "verified", "1/old": "unverified",
    }  # fmt: skip
    assert results["1/b"].detail == f"SHA-256 {sha256(s3.objects['1/b'][0])}, recorded {sha256(original)}"
    assert stack_verify.check(s3, "b", "1/deleted-since-listed").result == "gone"


# Backups ----------------------------------------------------------------------------------------------------


def test_a_backup_keeps_each_digest_and_its_import_names_changed_bytes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow_stack_server import bucket_archive

    source = MemoryS3()
    source.objects["1/a"] = (b"kept", {"sha256": sha256(b"kept")})
    source.objects["1/old"] = (b"from before checksums", {})
    archive = io.BytesIO()
    monkeypatch.setattr("sys.stdout", SimpleNamespace(buffer=archive))
    assert bucket_archive.export(source, "b") == 2
    monkeypatch.undo()
    tar = bytearray(archive.getvalue())
    at = tar.find(b"kept")
    tar[at] ^= 1  # the bytes change inside the backup file

    target = MemoryS3()
    target.head_bucket = lambda Bucket: None  # type: ignore[attr-defined]  # noqa: N803
    monkeypatch.setattr("sys.stdin", SimpleNamespace(buffer=io.BytesIO(bytes(tar))))
    assert bucket_archive.import_(target, "b") == 2
    assert target.objects["1/a"][1] == {"sha256": sha256(b"kept")} and target.objects["1/a"][0] != b"kept"
    assert target.objects["1/old"] == (b"from before checksums", {})
    assert "CHANGED 1/a" in capsys.readouterr().out
