"""Copy the artifact bucket to or from a tar stream: `bucket-archive export > f.tar`, `... import < f.tar`.

Runs inside the tracking-server container, the one place that holds the S3 credentials, so backups never
need them on the host.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile

import boto3

from mlflow_stack_server.settings import Settings


def _client():  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])


def export(bucket: str) -> int:
    s3, count = _client(), 0
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as archive:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for entry in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
                info = tarfile.TarInfo(entry["Key"])
                info.size = len(body)
                info.mtime = int(entry["LastModified"].timestamp())
                archive.addfile(info, io.BytesIO(body))
                count += 1
    return count


def import_(bucket: str) -> int:
    s3, count = _client(), 0
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
                s3.put_object(Bucket=bucket, Key=member.name, Body=content.read())
                count += 1
    return count


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in ("export", "import"):
        sys.exit("usage: bucket-archive export > artifacts.tar | bucket-archive import < artifacts.tar")
    # The S3 keys arrive as files (AWS_*_FILE); boto3 reads only the plain variables.
    Settings.from_environment().export_secrets()
    bucket = os.environ["MLFLOW_ARTIFACTS_BUCKET"]
    count = export(bucket) if sys.argv[1] == "export" else import_(bucket)
    print(f"bucket-archive: {sys.argv[1]}ed {count} objects ({bucket})", file=sys.stderr)


if __name__ == "__main__":
    main()
