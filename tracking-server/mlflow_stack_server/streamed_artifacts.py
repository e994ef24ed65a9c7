"""Artifact downloads and uploads streamed between the client and S3, without a whole copy on the server.

MLflow 3.17.2 serves `GET/PUT /api/2.0/mlflow-artifacts/artifacts/<path>` (and `/ajax-api/...`) from native
FastAPI routes (mlflow/server/artifact_router.py), but for an S3 destination both go through a temporary file:
- a download first copies the whole object into a temporary file (`artifact_repo.download_artifacts`, boto3's
  ranged download) and sends the first byte only when that copy is complete: minutes for a large model, long
  enough for a client's read timeout (MLFLOW_HTTP_REQUEST_TIMEOUT, 120 s) to give up and retry;
- an upload writes the whole body to a temporary file, then uploads that file (`S3ArtifactRepository` is not
  a `StreamUploadMixin`); the client waits for its answer all that time too, and the file's page cache
  counts towards the container's memory.

These routes replace MLflow's two for an S3 destination: a download sends the object's bytes as S3 sends them
(1 MiB at a time, with the size known up front), an upload sends the body on to S3 as a multipart upload of
MLFLOW_PROXY_UPLOAD_PART_MIB parts (up to PARTS_IN_FLIGHT parts uploading while the next is read: memory
bounded by a few parts per upload, whatever the artifact's size). Both ways the bytes are hashed as they pass:
an upload stores its SHA-256 with the object, a download checks it and is refused or cut short when the
bytes changed (checksums.py). Everything else is MLflow's own code: a missing object,
a directory, an unsafe path, artifact serving turned off, another kind of destination go to MLflow's handlers,
which answer as they always did.

Permissions are untouched: the routes are inserted into the same FastAPI app, so the basic-auth app's
permission middleware (`add_fastapi_permission_middleware`, which checks READ for a GET and UPDATE for a PUT on
these paths before routing) runs in front of them exactly as it runs in front of MLflow's. The OIDC app's
middleware authorizes only the FastAPI routes it knows, so there the routes carry a dependency that asks the
plugin's own Flask hook (proxied_artifacts.oidc_authorization).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import posixpath
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response, params
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from mlflow.exceptions import MlflowException
from mlflow.server import artifact_router as mlflow_routes

from mlflow_stack_server import checksums
from mlflow_stack_server.settings import MIB

ROUTE_PATHS = (
    "/api/2.0/mlflow-artifacts/artifacts/{artifact_path:path}",
    "/ajax-api/2.0/mlflow-artifacts/artifacts/{artifact_path:path}",
)
DOWNLOAD_CHUNK = 1024 * 1024  # MLflow's ARTIFACT_STREAM_CHUNK_SIZE
S3_MAX_PARTS = 10_000
# Parts sent to S3 at once per upload: one stream to S3 is slower than the client's (measured: 24 MB/s with one
# part in flight against the S3 stand-in, loaded machine). Memory per upload: about this + 1 parts.
PARTS_IN_FLIGHT = 4
# Set in a request's ASGI scope when its download was stopped because the bytes changed (proxied_artifacts.py).
CUT_SHORT = "mlflow_stack.cut_short"
MISSING_OBJECT_CODES = ("NoSuchKey", "404", "NotFound")
# Upload arguments every part request must repeat (S3: SSE-C keys, the bucket-owner check, requester pays).
PER_PART_ARGS = ("ExpectedBucketOwner", "SSECustomerAlgorithm", "SSECustomerKey", "SSECustomerKeyMD5", "RequestPayer")
# An upload cut by an object store that is down cannot be aborted then; its parts (invisible under the key, but
# stored) would stay until the store's own expiry, if it has one. The abort is retried this long, backing off.
ABORT_RETRY_SECONDS = 600.0
ABORT_RETRY_LONGEST_PAUSE = 30.0

_logger = logging.getLogger(__name__)
_aborts_pending: set[asyncio.Task[None]] = set()  # referenced until done (the event loop keeps weak references)


@dataclass(frozen=True)
class S3Object:
    client: Any  # a boto3 S3 client (MLflow's own, cached, with its endpoint and signature settings)
    bucket: str
    key: str
    extra_args: dict[str, Any]  # what MLflow's S3 repository passes to every upload (owner check, env args)


def _locate(artifact_path: str) -> S3Object | None:
    """The object behind a proxied artifact path, or None when MLflow's handler should answer instead.

    The same steps as MLflow's handlers, with MLflow's functions: path safety, workspace scoping, the
    destination repository. Raises what they raise (MlflowException, HTTPException)."""
    from mlflow.server.handlers import _get_workspace_scoped_repo_path_if_enabled
    from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository
    from mlflow.utils.uri import validate_path_is_safe

    if not mlflow_routes._is_serving_proxied_artifacts():
        return None
    path = _get_workspace_scoped_repo_path_if_enabled(validate_path_is_safe(artifact_path))
    repository = mlflow_routes._get_artifact_repo()
    if not path or not isinstance(repository, S3ArtifactRepository) or not posixpath.basename(path):
        return None
    bucket, root = repository.parse_s3_compliant_uri(repository.artifact_uri)
    extra_args = dict(repository._bucket_owner_params)
    extra_args.update(repository.get_s3_file_upload_extra_args() or {})
    return S3Object(repository._get_s3_client(), bucket, posixpath.join(root, path), extra_args)


def _locate_or_none(artifact_path: str) -> S3Object | None:
    try:
        return _locate(artifact_path)
    except (MlflowException, HTTPException):
        return None  # MLflow's handler repeats the check and answers with its own error


def _is_missing(error: Exception) -> bool:
    from botocore.exceptions import ClientError

    return isinstance(error, ClientError) and error.response.get("Error", {}).get("Code") in MISSING_OBJECT_CODES


async def download_artifact(artifact_path: str, request: Request) -> Response:
    target = _locate_or_none(artifact_path)
    if target is None:
        return await mlflow_routes.download_artifact(artifact_path)
    owner = {k: v for k, v in target.extra_args.items() if k == "ExpectedBucketOwner"}
    try:
        found = await asyncio.to_thread(target.client.get_object, Bucket=target.bucket, Key=target.key, **owner)
    except Exception as error:
        if _is_missing(error):
            # Not an object: a directory, or nothing. MLflow's handler answers that as it always has.
            return await mlflow_routes.download_artifact(artifact_path)
        raise
    body = found["Body"]
    reader = checksums.CheckedReader(
        body, target.key, checksums.recorded_digest(found.get("Metadata")), found["ContentLength"]
    )
    try:
        first = await asyncio.to_thread(reader.read, DOWNLOAD_CHUNK)
        if reader.complete:  # the whole object (most artifacts are smaller than a chunk): checked before answering
            reader.finish()
    except checksums.ArtifactChangedError as changed:
        body.close()
        return JSONResponse({"error_code": "DATA_LOSS", "message": str(changed)}, status_code=500)
    except BaseException:
        body.close()
        raise

    async def chunks() -> AsyncIterator[bytes]:
        """Each chunk is sent once the next one is read; the last one only once the digest matches (else
        ArtifactChangedError ends the response before its Content-Length: the client sees a cut transfer. The
        error is logged and counted where it is found; the scope's CUT_SHORT mark tells ProxiedArtifactsOnly to
        send nothing more and end the request quietly)."""
        try:
            chunk = first
            while not reader.complete:
                following = await asyncio.to_thread(reader.read, DOWNLOAD_CHUNK)
                yield chunk
                chunk = following
            if reader.read_bytes > len(first):
                try:
                    reader.finish()
                except checksums.ArtifactChangedError:
                    request.scope[CUT_SHORT] = True
                    raise
            yield chunk
        finally:
            body.close()

    filename = posixpath.basename(artifact_path)
    from mlflow.server.handlers import _content_disposition_attachment
    from mlflow.utils.mime_type_utils import _guess_mime_type

    headers = {
        # MLflow's headers for the same file, plus its size: a client can tell a cut transfer from a whole one.
        "Content-Type": _guess_mime_type(filename),
        "Content-Disposition": _content_disposition_attachment(filename),
        "X-Content-Type-Options": "nosniff",
        "Content-Length": str(found["ContentLength"]),
    }
    return StreamingResponse(chunks(), headers=headers)


class MultipartUpload:
    """One object's multipart upload: started on its first part, up to PARTS_IN_FLIGHT parts sending at once,
    then completed or aborted. Each method has one job; the state they share is this object's."""

    def __init__(self, target: S3Object, arguments: dict[str, Any], part_bytes: int) -> None:
        self.target = target
        self.arguments = arguments  # for the create call: content type and encoding, then MLflow's extras
        self.per_part = {k: v for k, v in arguments.items() if k in PER_PART_ARGS}
        self.part_bytes = part_bytes
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []  # sent, in order: what complete_multipart_upload lists
        self.sending: deque[asyncio.Task[dict[str, Any]]] = deque()

    @property
    def started(self) -> bool:
        return self.upload_id is not None

    def _location(self) -> dict[str, Any]:
        return {"Bucket": self.target.bucket, "Key": self.target.key, "UploadId": self.upload_id, **self.per_part}

    async def _start(self) -> None:
        target = self.target
        created = await asyncio.to_thread(
            target.client.create_multipart_upload, Bucket=target.bucket, Key=target.key, **self.arguments
        )
        self.upload_id = created["UploadId"]

    def _send(self, number: int, data: bytes) -> dict[str, Any]:
        """In a worker thread: one part to S3 (boto3 blocks)."""
        answer = self.target.client.upload_part(PartNumber=number, Body=data, **self._location())
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def add_part(self, data: bytes) -> None:
        """Start sending `data` as the next part, first waiting for the oldest part when PARTS_IN_FLIGHT are out."""
        if not self.started:
            await self._start()
        if len(self.sending) >= PARTS_IN_FLIGHT:
            self.parts.append(await self.sending.popleft())  # the body waits (TCP backpressure): memory stays bounded
        number = len(self.parts) + len(self.sending) + 1
        if number > S3_MAX_PARTS:
            raise HTTPException(413, f"artifact larger than {S3_MAX_PARTS} parts of {self.part_bytes // MIB} MiB")
        self.sending.append(asyncio.ensure_future(asyncio.to_thread(self._send, number, data)))

    async def complete(self) -> str:
        """The stored object's ETag."""
        while self.sending:
            self.parts.append(await self.sending.popleft())
        answer = await asyncio.to_thread(
            self.target.client.complete_multipart_upload, MultipartUpload={"Parts": self.parts}, **self._location()
        )
        return str(answer["ETag"])

    async def abort(self) -> None:
        """Cancel the parts still sending and drop the upload: S3 keeps the key's previous object, if any.

        Never raises: the caller re-raises what cut the upload. A store that cannot be asked now (down, or
        failing) is asked again in the background, for up to ABORT_RETRY_SECONDS."""
        for task in self.sending:
            task.cancel()
        await asyncio.gather(*self.sending, return_exceptions=True)
        if not self.started:
            return
        try:
            await self._abort_once()
        except Exception as error:
            _logger.warning(
                "could not abort the cut upload of s3://%s/%s (%s); retrying for up to %.0f s",
                self.target.bucket, self.target.key, _first_line(error), ABORT_RETRY_SECONDS,
            )  # fmt: skip
            later = asyncio.ensure_future(self._abort_later())
            _aborts_pending.add(later)
            later.add_done_callback(_aborts_pending.discard)

    async def _abort_once(self) -> None:
        await asyncio.to_thread(self.target.client.abort_multipart_upload, **self._location())

    async def _abort_later(self) -> None:
        deadline = asyncio.get_running_loop().time() + ABORT_RETRY_SECONDS
        pause = 1.0
        while True:
            await asyncio.sleep(pause)
            try:
                await self._abort_once()
            except Exception as error:
                if _is_missing(error) or _code(error) == "NoSuchUpload":
                    return  # gone already (the store expired it, or an earlier attempt went through)
                if asyncio.get_running_loop().time() + pause > deadline:
                    _logger.error(
                        "gave up aborting the cut upload of s3://%s/%s (%s): its parts stay in the store until "
                        "its stale-upload expiry", self.target.bucket, self.target.key, _first_line(error),
                    )  # fmt: skip
                    return
                pause = min(pause * 2, ABORT_RETRY_LONGEST_PAUSE)
                continue
            _logger.warning("aborted the cut upload of s3://%s/%s", self.target.bucket, self.target.key)
            return


def _code(error: Exception) -> str:
    from botocore.exceptions import ClientError

    return str(error.response.get("Error", {}).get("Code", "")) if isinstance(error, ClientError) else ""


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


async def _parts(body: AsyncIterator[bytes], part_bytes: int, tail: bytearray) -> AsyncGenerator[bytes]:
    """`body` cut into parts of exactly `part_bytes`; what is left over stays in `tail` (less than one part)."""
    async for chunk in body:
        tail += chunk
        while len(tail) >= part_bytes:
            with memoryview(tail) as view:
                part = bytes(view[:part_bytes])
            del tail[:part_bytes]
            yield part


async def stream_to_s3(body: AsyncIterator[bytes], target: S3Object, filename: str, part_bytes: int) -> int:
    """Send `body` to S3 as it arrives, with its SHA-256 as the object's metadata; the number of bytes stored.

    Less than one part: one PutObject that carries the digest. Otherwise a multipart upload, up to
    PARTS_IN_FLIGHT parts sent while the next is read, aborted on any failure (a client that disconnects
    included): the key keeps its previous object, if any. Its digest is known after the last part only and is
    attached by an in-place copy inside S3 (checksums.record_after_multipart says why)."""
    arguments = checksums.upload_arguments(filename, target.extra_args)
    upload = MultipartUpload(target, arguments, part_bytes)
    digest = hashlib.sha256()
    tail = bytearray()
    stored = 0
    try:
        async with aclosing(_parts(body, part_bytes, tail)) as parts:
            async for part in parts:
                stored += len(part)
                # In a worker thread: hashlib lets go of the GIL for large buffers, the event loop does not wait.
                await asyncio.to_thread(digest.update, part)
                await upload.add_part(part)
        stored += len(tail)
        await asyncio.to_thread(digest.update, tail)
        if not upload.started:
            await asyncio.to_thread(
                target.client.put_object, Bucket=target.bucket, Key=target.key, Body=bytes(tail),
                **checksums.with_digest(arguments, digest.hexdigest()),
            )  # fmt: skip
            checksums.count("recorded")
            return stored
        if tail:
            await upload.add_part(bytes(tail))
        etag = await upload.complete()
    except BaseException:
        await upload.abort()
        raise
    completed = {"ETag": etag, "Size": stored}
    await asyncio.to_thread(
        checksums.record_after_multipart, target.client, target.bucket, target.key, completed, arguments,
        digest.hexdigest(),
    )  # fmt: skip
    return stored


def upload_route(part_bytes: int) -> Callable[[str, Request], Any]:
    async def upload_artifact(artifact_path: str, request: Request) -> Response:
        target = _locate_or_none(artifact_path)
        if target is None:
            return await mlflow_routes.upload_artifact(artifact_path, request)
        await stream_to_s3(request.stream(), target, posixpath.basename(target.key), part_bytes)
        return Response(status_code=200)  # what MLflow's handler answers

    return upload_artifact


def stream_artifact_transfers(
    app: FastAPI, upload_part_bytes: int, dependencies: Sequence[params.Depends] = ()
) -> FastAPI:
    """Put the streaming routes in front of MLflow's own (the first matching route wins); returns `app`.

    `upload_part_bytes`: Settings.upload_part_bytes (MLFLOW_PROXY_UPLOAD_PART_MIB). `dependencies`: run before
    each route (the OIDC mode's authorization, proxied_artifacts.py; basic auth's middleware needs none)."""
    upload_artifact = upload_route(upload_part_bytes)
    guards = list(dependencies)
    routes = [APIRoute(path, download_artifact, methods=["GET"], dependencies=guards) for path in ROUTE_PATHS]
    routes += [APIRoute(path, upload_artifact, methods=["PUT"], dependencies=guards) for path in ROUTE_PATHS]
    app.router.routes[:0] = routes
    return app
