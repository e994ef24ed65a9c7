"""Copy the artifact bucket to another S3 endpoint and prove every object arrived whole:

    bucket-copy --to http://seaweedfs:8333 [--to-bucket NAME] [--credentials FILE]

Runs inside the tracking-server image, the one place that holds the stack's S3 key pair (the source is the
stack's own bucket: MLFLOW_S3_ENDPOINT_URL, MLFLOW_ARTIFACTS_BUCKET). Each object is streamed from the source
to the target (multipart above 16 MiB, never whole in memory) with its content type and user metadata, hashed
with SHA-256 on the way; then read back from the target and hashed again. Any difference, or a key that did not
arrive, fails the command naming the keys. scripts/migrate-objects.sh uses it to move the stack to SeaweedFS.

FILE holds the target's key pair as `AWS_ACCESS_KEY_ID=...` and `AWS_SECRET_ACCESS_KEY=...` lines (`#`
comments allowed); without it the target gets the stack's own key pair (SeaweedFS in docker-compose.seaweedfs.yml
serves the same one).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from mlflow_stack_server.console import USAGE_ERROR, Console
from mlflow_stack_server.settings import Settings

console = Console("bucket-copy:")
CHUNK = 1024 * 1024
# Parts of 16 MiB, two in flight: an upload holds ~32 MiB however large the object.
TRANSFER = TransferConfig(multipart_threshold=16 * CHUNK, multipart_chunksize=16 * CHUNK, max_concurrency=2)


@dataclass(frozen=True)
class Copied:
    key: str
    size: int
    sha256: str


class HashingReader:
    """A file-like view of a streamed S3 body that hashes what it hands out (upload_fileobj reads it)."""

    def __init__(self, body: Any) -> None:
        self._body = body
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data: bytes = self._body.read(size if size is not None and size >= 0 else None)
        self.digest.update(data)
        self.size += len(data)
        return data


def read_credentials(path: Path) -> tuple[str, str]:
    """The target's key pair from KEY=VALUE lines."""
    try:
        lines = path.read_text().splitlines()
    except OSError as error:
        console.fail(f"cannot read the credentials file {path}: {error.strerror}", code=USAGE_ERROR)
    values = {}
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            values[name.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    missing = [name for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not values.get(name)]
    if missing:
        console.fail(f"{path} has no {' or '.join(missing)} line", code=USAGE_ERROR)
    return values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"]


def objects(s3: Any, bucket: str) -> Iterator[dict[str, Any]]:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        yield from page.get("Contents", [])


def sha256_of(s3: Any, bucket: str, key: str) -> tuple[int, str]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    digest, size = hashlib.sha256(), 0
    for chunk in iter(lambda: body.read(CHUNK), b""):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def copy_object(source: Any, source_bucket: str, target: Any, target_bucket: str, key: str) -> Copied:
    got = source.get_object(Bucket=source_bucket, Key=key)
    extra = {"Metadata": got.get("Metadata", {})}
    if got.get("ContentType"):
        extra["ContentType"] = got["ContentType"]
    reader = HashingReader(got["Body"])
    target.upload_fileobj(reader, target_bucket, key, ExtraArgs=extra, Config=TRANSFER)
    if reader.size != got["ContentLength"]:
        raise ValueError(f"{key}: read {reader.size} bytes of {got['ContentLength']} from the source")
    return Copied(key, reader.size, reader.digest.hexdigest())


def ensure_bucket(s3: Any, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        s3.create_bucket(Bucket=bucket)


def copy_bucket(source: Any, source_bucket: str, target: Any, target_bucket: str) -> list[Copied]:
    """Copy, then verify every object by reading it back from the target. Raises ValueError naming the keys
    whose bytes differ or are missing there."""
    ensure_bucket(target, target_bucket)
    copied = [
        copy_object(source, source_bucket, target, target_bucket, entry["Key"])
        for entry in objects(source, source_bucket)
    ]
    bad = []
    for item in copied:
        try:
            size, sha256 = sha256_of(target, target_bucket, item.key)
        except ClientError as error:
            bad.append(f"{item.key} ({error.response.get('Error', {}).get('Code', 'unreadable')})")
            continue
        if (size, sha256) != (item.size, item.sha256):
            bad.append(f"{item.key} (sha256 {sha256[:12]}… of {size} bytes, source {item.sha256[:12]}… of {item.size})")
    if bad:
        raise ValueError(f"{len(bad)} of {len(copied)} objects differ on the target: {', '.join(bad[:10])}")
    return copied


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bucket-copy", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--to", required=True, metavar="URL", help="the target's S3 endpoint, e.g. http://seaweedfs:8333"
    )
    parser.add_argument(
        "--to-bucket", default="", metavar="NAME", help="the target bucket (default: the source's name)"
    )
    parser.add_argument("--credentials", type=Path, metavar="FILE", help="the target's key pair (default: the stack's)")
    parser.add_argument("--region", default="us-east-1", help="the target's region (default: us-east-1)")
    args = parser.parse_args(argv)
    if not args.to.startswith(("http://", "https://")):
        console.fail(f"--to must be an http:// or https:// URL, not {args.to!r}", code=USAGE_ERROR)
    return args


def main(argv: list[str] | None = None) -> None:
    """Console script `bucket-copy --to URL [--to-bucket NAME] [--credentials FILE]`."""
    args = parse(sys.argv[1:] if argv is None else argv)
    settings = console.configured(Settings.from_environment)
    settings.export_secrets()  # the stack's key pair as AWS_* for boto3 (they arrive as *_FILE)
    source = boto3.client("s3", endpoint_url=settings.s3_endpoint_url or None)
    keys = {}
    if args.credentials is not None:
        access_key, secret_key = read_credentials(args.credentials)
        keys = {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key}
    target = boto3.client("s3", endpoint_url=args.to, region_name=args.region, **keys)
    target_bucket = args.to_bucket or settings.bucket
    where = f"{settings.s3_endpoint_url or 'AWS S3'}/{settings.bucket} to {args.to}/{target_bucket}"
    if args.to.rstrip("/") == settings.s3_endpoint_url.rstrip("/") and target_bucket == settings.bucket:
        console.fail(f"the target is the source ({where})", code=USAGE_ERROR)
    try:
        copied = copy_bucket(source, settings.bucket, target, target_bucket)
    except ValueError as error:
        console.fail(str(error))
    except (BotoCoreError, ClientError) as error:
        console.fail(f"copying {where}: {str(error).splitlines()[0]}")
    total = sum(item.size for item in copied)
    console.log(f"copied {len(copied)} objects ({total / CHUNK:.1f} MiB) from {where}; every SHA-256 read back equal")
