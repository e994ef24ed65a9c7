"""Copy the artifact bucket to or from a tar stream: `bucket-archive export > f.tar`, `... import < f.tar`.

Runs inside the tracking-server container, the one place that holds the S3 credentials, so backups never
need them on the host. Each object's recorded SHA-256 (checksums.py) travels in its tar entry's PAX header
MLFLOW_STACK.sha256; an import stores it again as the object's metadata and names every object whose bytes
no longer match it (the server then refuses them and `make verify` names them too).
"""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
from typing import Any

import boto3

from mlflow_stack_server.checksums import METADATA_KEY, recorded_digest
from mlflow_stack_server.console import Console
from mlflow_stack_server.settings import Settings

console = Console("bucket-archive:")
PAX_SHA256 = "MLFLOW_STACK.sha256"  # a vendor PAX keyword: other tar readers ignore it
USAGE = "usage: bucket-archive export > artifacts.tar | bucket-archive import < artifacts.tar"


def export(s3: Any, bucket: str) -> int:
    count = 0
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for entry in page.get("Contents", []):
                found = s3.get_object(Bucket=bucket, Key=entry["Key"])
                body = found["Body"].read()
                info = tarfile.TarInfo(entry["Key"])
                if digest := recorded_digest(found.get("Metadata")):
                    info.pax_headers = {PAX_SHA256: digest}
                info.size = len(body)
                info.mtime = int(entry["LastModified"].timestamp())
                archive.addfile(info, io.BytesIO(body))
                count += 1
    return count


def import_(s3: Any, bucket: str) -> int:
    count = 0
    try:
        s3.head_bucket(Bucket=bucket)
    except s3.exceptions.ClientError:
        s3.create_bucket(Bucket=bucket)
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as archive:
        for member in archive:
            if not member.isfile():
                continue
            content = archive.extractfile(member)
            if content is not None:
                body = content.read()
                digest = recorded_digest({METADATA_KEY: member.pax_headers.get(PAX_SHA256, "")})
                metadata = {METADATA_KEY: digest} if digest else {}
                if digest and hashlib.sha256(body).hexdigest() != digest:
                    console.log(f"CHANGED {member.name}: its bytes in the archive do not match its recorded SHA-256")
                s3.put_object(Bucket=bucket, Key=member.name, Body=body, Metadata=metadata)
                count += 1
    return count


def main(argv: list[str] | None = None) -> None:
    """Console script `bucket-archive export|import`."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in ("export", "import"):
        sys.exit(USAGE)
    settings = console.configured(Settings.from_environment)
    # The S3 keys arrive as files (AWS_*_FILE); boto3 reads only the plain variables.
    settings.export_secrets()
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint_url or None)
    count = export(s3, settings.bucket) if argv[0] == "export" else import_(s3, settings.bucket)
    print(f"bucket-archive: {argv[0]}ed {count} objects ({settings.bucket})", file=sys.stderr)
