"""bucket-copy's copy and check (mlflow_stack_server/bucket_copy.py) against in-memory S3 stores, one of which
can change or drop what it is given: the check must name exactly those objects. The stack test
(tests/stack/test_migrate_objects.py) runs it from MinIO to SeaweedFS."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from mlflow_stack_server.bucket_copy import copy_bucket, read_credentials


class MemoryS3:
    """The calls bucket-copy makes (under boto3's argument names), on dicts. `damage` changes what is stored under a key; `lose` drops it."""

    def __init__(self, damage: dict[str, bytes] | None = None, lose: set[str] | None = None) -> None:
        self.buckets: dict[str, dict[str, tuple[bytes, dict[str, Any]]]] = {}
        self.damage, self.lose = damage or {}, lose or set()

    def head_bucket(self, Bucket: str) -> None:  # noqa: N803
        if Bucket not in self.buckets:
            raise ClientError({"Error": {"Code": "404"}}, "HeadBucket")

    def create_bucket(self, Bucket: str) -> None:  # noqa: N803
        self.buckets[Bucket] = {}

    def get_paginator(self, name: str) -> MemoryS3:
        assert name == "list_objects_v2"
        return self

    def paginate(self, Bucket: str) -> Iterator[dict[str, Any]]:  # noqa: N803
        keys = sorted(self.buckets[Bucket])
        for start in range(0, len(keys), 2):  # pages of two: the copy must follow every page
            yield {"Contents": [{"Key": key} for key in keys[start : start + 2]]}

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        if Key not in self.buckets[Bucket]:
            raise ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject")
        data, extra = self.buckets[Bucket][Key]
        return {"Body": io.BytesIO(data), "ContentLength": len(data), **extra}

    def upload_fileobj(self, fileobj: Any, bucket: str, key: str, ExtraArgs: dict[str, Any], Config: Any) -> None:  # noqa: N803
        data = b""
        while chunk := fileobj.read(7919):  # read in pieces, as boto3's transfer manager does
            data += chunk
        if key not in self.lose:
            self.buckets[bucket][key] = (self.damage.get(key, data), dict(ExtraArgs))

    def put(self, bucket: str, key: str, data: bytes, **extra: Any) -> None:
        self.buckets.setdefault(bucket, {})[key] = (data, extra)


def filled_source() -> MemoryS3:
    source = MemoryS3()
    source.put("mlflow", "1/run/artifacts/model/MLmodel", b"flavors: {}\n", ContentType="text/plain")
    source.put("mlflow", "1/run/artifacts/model/data/weights.bin", bytes(range(256)) * 4000, Metadata={"k": "v"})
    source.put("mlflow", "1/run/artifacts/empty.txt", b"")
    source.put("mlflow", "1/run/artifacts/plots/confusion.png", b"\x89PNG" + b"x" * 5000)
    source.put("mlflow", "2/other/artifacts/config.json", b"{}")
    return source


def test_every_object_arrives_with_its_metadata_and_hash() -> None:
    source, target = filled_source(), MemoryS3()
    copied = copy_bucket(source, "mlflow", target, "moved")
    assert {item.key for item in copied} == set(source.buckets["mlflow"])
    for item in copied:
        data, extra = source.buckets["mlflow"][item.key]
        assert target.buckets["moved"][item.key][0] == data
        assert item.size == len(data) and item.sha256 == hashlib.sha256(data).hexdigest()
        assert target.buckets["moved"][item.key][1].get("ContentType") == extra.get("ContentType")
        assert target.buckets["moved"][item.key][1]["Metadata"] == extra.get("Metadata", {})


def test_a_changed_object_on_the_target_is_named() -> None:
    weights = "1/run/artifacts/model/data/weights.bin"
    target = MemoryS3(damage={weights: bytes(range(256)) * 3999 + bytes(255) + b"\x01"})
    with pytest.raises(
        ValueError, match=r"^1 of 5 objects differ on the target: 1/run/artifacts/model/data/weights\.bin \(sha256 "
    ):
        copy_bucket(filled_source(), "mlflow", target, "mlflow")


def test_an_object_the_target_lost_is_named() -> None:
    target = MemoryS3(lose={"2/other/artifacts/config.json"})
    with pytest.raises(
        ValueError, match=r"1 of 5 objects differ on the target: 2/other/artifacts/config\.json \(NoSuchKey\)"
    ):
        copy_bucket(filled_source(), "mlflow", target, "mlflow")


def test_credentials_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.env"
    keys.write_text("# the target\nexport AWS_ACCESS_KEY_ID=abc\nAWS_SECRET_ACCESS_KEY='s3cr=et'\n")
    assert read_credentials(keys) == ("abc", "s3cr=et")
    keys.write_text("AWS_ACCESS_KEY_ID=abc\n")
    with pytest.raises(SystemExit) as exited:
        read_credentials(keys)
    assert exited.value.code == 2


def test_credentials_file_missing_line_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys.env"
    keys.write_text("AWS_SECRET_ACCESS_KEY=x\n")
    with pytest.raises(SystemExit):
        read_credentials(keys)
    assert capsys.readouterr().err == f"bucket-copy: error: {keys} has no AWS_ACCESS_KEY_ID line\n"
