"""Check every artifact in the bucket against the SHA-256 recorded when the server stored it (checksums.py).

    stack-verify [--prefix 1/] [--jobs 4] [--list-unverified]    (in the tracking-server container: `make verify`)

Reads each object that has a recorded digest from S3 and hashes it; names every object whose bytes no longer
match (one line each), then prints the counts: verified, unverified (no digest: stored before checksums were
recorded, or by another writer), changed. Exit 0 when nothing changed, 1 when something did or S3 could not
be read, 2 on bad arguments. It reads the whole bucket: its time is the bucket's size over S3's read speed.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import boto3
from botocore.config import Config

from mlflow_stack_server.checksums import READ_BYTES, recorded_digest
from mlflow_stack_server.console import USAGE_ERROR, Console
from mlflow_stack_server.settings import Settings

console = Console("stack-verify:", settings_error_code=USAGE_ERROR)
GIB = 1024**3


@dataclass(frozen=True)
class Checked:
    key: str
    result: str  # verified, unverified, changed, gone (deleted since it was listed)
    size: int = 0
    detail: str = ""


def pages(s3: Any, bucket: str, prefix: str) -> Iterator[list[str]]:
    """The keys under `prefix`, a listing page (up to 1000) at a time: memory stays bounded at any bucket size."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield [entry["Key"] for entry in page.get("Contents", [])]


def check(s3: Any, bucket: str, key: str) -> Checked:
    """One object: its recorded digest and its bytes come from the same GET (the same version of the object)."""
    try:
        found = s3.get_object(Bucket=bucket, Key=key)
    except s3.exceptions.NoSuchKey:
        return Checked(key, "gone")
    body = found["Body"]
    try:
        recorded = recorded_digest(found.get("Metadata"))
        if recorded is None:
            return Checked(key, "unverified")
        digest = hashlib.sha256()
        size = 0
        while chunk := body.read(READ_BYTES):
            digest.update(chunk)
            size += len(chunk)
        actual = digest.hexdigest()
        if actual != recorded:
            return Checked(key, "changed", size, f"SHA-256 {actual}, recorded {recorded}")
        return Checked(key, "verified", size)
    finally:
        body.close()


def main(argv: list[str] | None = None) -> None:
    """Console script `stack-verify`."""
    parser = argparse.ArgumentParser(prog="stack-verify", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--prefix", default="", help="only keys under this prefix of the artifact store (e.g. 1/)")
    parser.add_argument("--jobs", type=int, default=4, help="objects read at once (default 4)")
    parser.add_argument("--list-unverified", action="store_true", help="also name each object without a digest")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.jobs < 1:
        console.fail(f"--jobs {args.jobs}: expected a whole number of at least 1", code=USAGE_ERROR)
    settings = console.configured(Settings.from_environment)
    settings.export_secrets()  # the S3 keys arrive as files (AWS_*_FILE); boto3 reads only the plain variables
    # The artifact store may be a prefix inside the bucket (MLFLOW_ARTIFACTS_DESTINATION): only that is checked.
    root = urlparse(settings.artifacts_destination).path.lstrip("/")
    prefix = root + args.prefix if not root or root.endswith("/") else f"{root}/{args.prefix}"
    s3 = boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url or None, config=Config(max_pool_connections=args.jobs + 2)
    )
    started = time.monotonic()
    counts = dict.fromkeys(("verified", "unverified", "changed", "gone"), 0)
    read = 0
    try:
        with ThreadPoolExecutor(args.jobs) as pool:
            for page in pages(s3, settings.bucket, prefix):
                for checked in pool.map(lambda key: check(s3, settings.bucket, key), page):
                    counts[checked.result] += 1
                    read += checked.size
                    if checked.result == "changed":
                        console.log(f"CHANGED {checked.key} ({checked.detail})")
                    elif checked.result == "unverified" and args.list_unverified:
                        console.log(f"unverified {checked.key}")
    except Exception as error:  # one line: what failed; nothing was written, a rerun starts over
        console.fail(f"s3://{settings.bucket}/{prefix}: {type(error).__name__}: {error}")
    console.log(
        f"s3://{settings.bucket}/{prefix}: {counts['verified']} verified, {counts['unverified']} unverified "
        f"(no recorded SHA-256), {counts['changed']} changed; {read / GIB:.2f} GiB read in "
        f"{time.monotonic() - started:.1f} s"
    )
    if counts["changed"]:
        sys.exit(1)
