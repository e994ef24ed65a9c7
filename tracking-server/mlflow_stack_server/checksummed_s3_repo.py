"""MLflow's S3 artifact repository, recording each artifact's SHA-256 on upload and checking it on download
(checksums.py says where the digest lives and who else records and checks it).

A module of its own, importing nothing of the stack's that imports MLflow's repository registry: MLflow loads
this entry point while it imports that registry, so an import back into it would be circular.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from io import BytesIO
from typing import Any

from botocore.exceptions import ClientError
from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

from mlflow_stack_server.checksums import (
    ArtifactChangedError,
    CheckedReader,
    copy_checked,
    count,
    file_digest,
    recorded_digest,
    upload_arguments,
    with_digest,
)


class ChecksummedS3ArtifactRepository(S3ArtifactRepository):
    """MLflow's S3 repository, recording the digest on every upload and checking it on every download.

    Registered for `s3://` (pyproject.toml, `mlflow.artifact_repository`): MLflow registers its own first and
    entry points after, so in this image every `S3ArtifactRepository` MLflow builds is this one."""

    def _upload_arguments(self, filename: str) -> dict[str, Any]:
        """MLflow's own (S3ArtifactRepository._upload_file): guessed type and encoding, owner check, env args."""
        return upload_arguments(filename, {**self._bucket_owner_params, **(self.get_s3_file_upload_extra_args() or {})})

    def _upload_file(self, s3_client: Any, local_file: str, bucket: str, key: str) -> None:
        # The file is already whole on this server's disk (MLflow wrote it): hashing it first puts the digest
        # in the upload's own metadata, multipart or not.
        arguments = with_digest(self._upload_arguments(os.path.basename(local_file)), file_digest(local_file))
        s3_client.upload_file(Filename=local_file, Bucket=bucket, Key=key, ExtraArgs=arguments)
        count("recorded")

    def upload_archived_trace_data_bytes(self, data: bytes) -> None:
        from mlflow.tracing.otel.otel_archival import TRACE_ARCHIVAL_FILENAME

        bucket, root = self.parse_s3_compliant_uri(self.artifact_uri)
        arguments = {"ContentType": "application/octet-stream", **self._bucket_owner_params}
        arguments.update(self.get_s3_file_upload_extra_args() or {})
        arguments = with_digest(arguments, hashlib.sha256(data).hexdigest())
        key = posixpath.join(root, TRACE_ARCHIVAL_FILENAME)
        self._get_s3_client().upload_fileobj(Fileobj=BytesIO(data), Bucket=bucket, Key=key, ExtraArgs=arguments)
        count("recorded")

    def _download_file(self, remote_file_path: str, local_path: str) -> None:
        """One GET (its metadata and its bytes are the same version's), hashed while written; a mismatch removes
        the file and raises MlflowException DATA_LOSS (HTTP 500), so no changed bytes are handed on."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import DATA_LOSS

        bucket, root = self.parse_s3_compliant_uri(self.artifact_uri)
        key = posixpath.join(root, remote_file_path)
        try:
            found = self._get_s3_client().get_object(Bucket=bucket, Key=key, **self._bucket_owner_params)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
                raise
            # A missing file: MLflow's own download (boto3's download_file, which asks HEAD first) raises the
            # error MLflow answers and its clients expect ("... HeadObject operation: Not Found"), not GET's.
            super()._download_file(remote_file_path, local_path)
            return
        reader = CheckedReader(found["Body"], key, recorded_digest(found.get("Metadata")), found["ContentLength"])
        try:
            with open(local_path, "wb") as out:
                copy_checked(reader, out)
                reader.finish()
        except ArtifactChangedError as changed:
            os.remove(local_path)
            raise MlflowException(str(changed), error_code=DATA_LOSS) from None
        finally:
            found["Body"].close()
