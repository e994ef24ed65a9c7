"""End-to-end checksums: a SHA-256 of every artifact the server writes, kept in S3 beside its bytes, checked on
the way out.

The digest is the object's user metadata `x-amz-meta-sha256` (boto3: `Metadata={"sha256": ...}`), 64 lowercase
hex digits of the whole object's bytes, so it travels with the object (copies, backups, `make verify`) and
needs no table of its own. S3's own ETag is no such digest: for a multipart upload it is an MD5 of the parts'
MD5s, and S3's additional checksums of a multipart object are per part too (a full-object SHA-256 is not
among them).

Who records it, always while the bytes go through once (no second read of what was stored):
- the streamed upload route (streamed_artifacts.py): a PutObject carries it; a multipart upload gets it after
  CompleteMultipartUpload by an in-place server-side copy (`record_after_multipart`);
- every upload through MLflow's own S3 repository in this server (the UI's upload-artifact call, trace archives,
  any handler that falls back to MLflow's): `ChecksummedS3ArtifactRepository` (checksummed_s3_repo.py),
  registered for `s3://` through MLflow's `mlflow.artifact_repository` entry point. It hashes the local file it is given before the upload,
  so the digest is in the upload's own metadata, multipart or not.

Who checks it: the streamed download route and the same repository's downloads (`CheckedReader`), and
`stack-verify` (`make verify`) for a whole bucket. An object without the metadata (written before, or by
another writer) is served as it is and counted as unverified.

Prometheus (with MLFLOW_METRICS on): `mlflow_stack_artifact_checksums_total{result}`, result one of recorded,
verified, unverified, changed.
"""

from __future__ import annotations

import functools
import hashlib
import mimetypes
import re
from collections.abc import Mapping
from typing import IO, Any

from mlflow_stack_server.console import Console
from mlflow_stack_server.settings import handed_down

METADATA_KEY = "sha256"  # user metadata: S3 sends it as the header x-amz-meta-sha256
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# Read size for hashing a local file and for a checked download into one.
READ_BYTES = 1024 * 1024
# Single-request CopyObject's limit (AWS S3): a larger object is copied in parts, still inside S3.
COPY_OBJECT_MAX_BYTES = 5 * 1024**3
# Upload arguments that CopyObject takes as they are; everything else is not an object attribute (for example
# the ChecksumType of an upload) or would be wrong on a copy. Tagging is left out: the copy keeps the tags
# (TaggingDirective COPY, S3's default).
NOT_COPIED = ("ChecksumType", "MpuObjectSize", "Tagging")
SSE_C_ARGS = ("SSECustomerAlgorithm", "SSECustomerKey", "SSECustomerKeyMD5")

console = Console("[tracking-server]")


class ArtifactChangedError(Exception):
    """The bytes read do not hash to the digest recorded when the object was written."""

    def __init__(self, key: str, recorded: str, actual: str) -> None:
        super().__init__(
            f"artifact {key}: its bytes changed since they were stored (SHA-256 {actual}, recorded {recorded})"
        )
        self.key = key


def recorded_digest(metadata: Mapping[str, str] | None) -> str | None:
    """The digest recorded in an object's user metadata; None when there is none (or it is not a SHA-256)."""
    value = (metadata or {}).get(METADATA_KEY, "").strip().lower()
    return value if SHA256_HEX.match(value) else None


def upload_arguments(filename: str, extra_args: Mapping[str, Any]) -> dict[str, Any]:
    """What MLflow's S3ArtifactRepository._upload_file gives boto3 for a file of this name: guessed type and
    encoding, then the extras (bucket owner, MLFLOW_S3_UPLOAD_EXTRA_ARGS). Shared by both writers above."""
    arguments: dict[str, Any] = {}
    content_type, encoding = mimetypes.guess_type(filename)
    if content_type is not None:
        arguments["ContentType"] = content_type
    if encoding is not None:
        arguments["ContentEncoding"] = encoding
    return {**arguments, **extra_args}


def with_digest(arguments: Mapping[str, Any], digest: str) -> dict[str, Any]:
    """Upload arguments plus the digest, keeping any user metadata they already carry (MLFLOW_S3_UPLOAD_EXTRA_ARGS)."""
    return {**arguments, "Metadata": {**arguments.get("Metadata", {}), METADATA_KEY: digest}}


def file_digest(path: str) -> str:
    with open(path, "rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


@functools.cache
def _counter() -> Any:
    from prometheus_client import Counter

    return Counter(
        "mlflow_stack_artifact_checksums_total", "Artifact SHA-256s recorded and checked, by result", ["result"]
    )


def count(result: str) -> None:
    """One recorded / verified / unverified / changed artifact, in /metrics (multiprocess mode only, like
    request_metrics.py: one worker's own count would be wrong with several)."""
    if handed_down("PROMETHEUS_MULTIPROC_DIR"):
        _counter().labels(result).inc()


class CheckedReader:
    """An object's body read in chunks and hashed as it is read; `finish()` compares with the recorded digest.

    `size` is the object's length (ContentLength): `complete` says when every byte has been read, so a caller
    can hold back the last chunk until `finish()` has passed."""

    def __init__(self, body: Any, key: str, recorded: str | None, size: int) -> None:
        self.body = body
        self.key = key
        self.recorded = recorded
        self.size = size
        self.read_bytes = 0
        self.hash = hashlib.sha256()

    @property
    def complete(self) -> bool:
        return self.read_bytes >= self.size

    def read(self, amount: int) -> bytes:
        """The next chunk (blocking: call it in a worker thread). botocore raises if S3 sends fewer bytes than
        ContentLength, so an empty chunk before `complete` cannot happen silently."""
        chunk: bytes = self.body.read(amount)
        if not chunk and not self.complete:
            raise OSError(
                f"artifact {self.key}: the object store ended the body after {self.read_bytes} of {self.size} bytes"
            )
        self.read_bytes += len(chunk)
        self.hash.update(chunk)
        return chunk

    def finish(self) -> str:
        """'verified' or 'unverified', counted; raises ArtifactChangedError (counted and logged once) on a mismatch."""
        if self.recorded is None:
            count("unverified")
            return "unverified"
        actual = self.hash.hexdigest()
        if actual != self.recorded:
            count("changed")
            changed = ArtifactChangedError(self.key, self.recorded, actual)
            console.log(f"error: {changed}; not served")
            raise changed
        count("verified")
        return "verified"


def copy_arguments(arguments: Mapping[str, Any], digest: str) -> dict[str, Any]:
    """What an in-place copy needs to give the object the same attributes as its upload, plus the digest:
    MetadataDirective REPLACE replaces content type, encoding and user metadata, so all are given again."""
    copied = {k: v for k, v in arguments.items() if k not in NOT_COPIED}
    copied.update({f"CopySource{k}": arguments[k] for k in SSE_C_ARGS if k in arguments})  # to read the source
    return {**with_digest(copied, digest), "MetadataDirective": "REPLACE"}


def record_after_multipart(
    client: Any, bucket: str, key: str, completed: Mapping[str, Any], arguments: Mapping[str, Any], digest: str
) -> None:
    """Attach `digest` to the object a multipart upload has just completed (blocking: a worker thread).
    `completed`: the object's ETag and size; `arguments`: the upload's (content type, MLflow's extras).

    Why a copy: the digest is known only after the last part, and S3 takes user metadata only when the upload
    is created. Why not hash first: the body would have to be held or read twice. CopyObject onto the same key
    with MetadataDirective REPLACE happens inside S3 (no byte passes through this server). CopySourceIfMatch
    names the ETag just completed, so a concurrent upload of the same key is never given this upload's digest:
    the copy fails instead. Above COPY_OBJECT_MAX_BYTES, boto3's managed copy does the same in parts
    (UploadPartCopy). Until the copy is done the object reads as unverified; if it fails, the upload answers an
    error and the object stays unverified."""
    from boto3.s3.transfer import TransferConfig

    copy = {**copy_arguments(arguments, digest), "CopySourceIfMatch": completed["ETag"]}
    source = {"Bucket": bucket, "Key": key}
    if completed["Size"] <= COPY_OBJECT_MAX_BYTES:
        client.copy_object(CopySource=source, Bucket=bucket, Key=key, **copy)
    else:
        config = TransferConfig(multipart_threshold=COPY_OBJECT_MAX_BYTES)
        client.copy(CopySource=source, Bucket=bucket, Key=key, ExtraArgs=copy, Config=config)
    count("recorded")


def copy_checked(reader: CheckedReader, out: IO[bytes]) -> None:
    """All of `reader` into `out` (blocking); `reader.finish()` is the caller's."""
    while not reader.complete:
        out.write(reader.read(READ_BYTES))
