"""One large artifact up and down through the stack's published port (the gateway), from the host.

    python -m bench.large_artifact [--size-mib 1024]

Reports MB/s each way, the time to the first byte of the download, how long the server took to answer
after the upload's last byte, the SHA-256 both ways, and the tracking-server container's memory (cgroup
peak, with and without page cache: bench/container_memory.py) during each transfer. The bytes are random
(incompressible) and written to a temporary file first, as a model file would be; the download is hashed
as it arrives and not written. The artifact is deleted afterwards, so that runs leave nothing in the store.
MLFLOW_TRACKING_USERNAME/PASSWORD are sent when set (team mode).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from mlflow import MlflowClient

from bench.common import REPO, STACK_URL, save
from bench.container_memory import PeakMemory, container_id

MIB = 2**20
BLOCK = 8 * MIB
EXPERIMENT = "bench-large-artifact"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"


def auth() -> tuple[str, str] | None:
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    return (user, password) if user and password else None


def write_random_file(path: Path, size: int) -> str:
    """`size` random bytes into `path`; their SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            block = os.urandom(min(BLOCK, left))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


class TimedReader:
    """A file for requests' body that notes when its last byte was read (sent)."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("rb")
        self.size = path.stat().st_size
        self.last_byte_at = 0.0

    def __len__(self) -> int:
        return self.size

    def read(self, amount: int = -1) -> bytes:
        data = self.file.read(amount)
        if not data:
            self.last_byte_at = self.last_byte_at or time.perf_counter()
        return data

    def close(self) -> None:
        self.file.close()


@dataclass(frozen=True)
class Transfer:
    seconds: float
    megabytes_per_second: float
    # Upload: from the last byte sent to the server's answer. Download: from the request to the first body byte.
    wait_seconds: float
    sha256: str
    status: int


def upload(url: str, path: Path, sha256: str, timeout: float = 3600) -> Transfer:
    """PUT the file the way MLflow's client does (http_artifact_repo.log_artifact: the file as the body)."""
    body = TimedReader(path)
    started = time.perf_counter()
    try:
        answer = requests.put(
            url, data=body, headers={"Content-Type": "application/octet-stream"}, auth=auth(), timeout=timeout
        )
    finally:
        body.close()
    done = time.perf_counter()
    return Transfer(
        seconds=round(done - started, 2),
        megabytes_per_second=round(body.size / 1e6 / (done - started), 1),
        wait_seconds=round(done - (body.last_byte_at or done), 2),
        sha256=sha256,
        status=answer.status_code,
    )


def chunks(answer: requests.Response) -> Iterator[bytes]:
    yield from answer.iter_content(chunk_size=MIB)


def download(url: str, timeout: float = 3600) -> tuple[Transfer, int, Mapping[str, str]]:
    """GET and hash as it arrives; (the transfer, bytes received, the answer's headers, case-insensitive)."""
    digest = hashlib.sha256()
    received = 0
    started = time.perf_counter()
    first_byte_at = 0.0
    with requests.get(url, stream=True, auth=auth(), timeout=timeout) as answer:
        for chunk in chunks(answer):
            first_byte_at = first_byte_at or time.perf_counter()
            digest.update(chunk)
            received += len(chunk)
        status, headers = answer.status_code, answer.headers
    done = time.perf_counter()
    transfer = Transfer(
        seconds=round(done - started, 2),
        megabytes_per_second=round(received / 1e6 / (done - started), 1),
        wait_seconds=round((first_byte_at or done) - started, 2),
        sha256=digest.hexdigest(),
        status=status,
    )
    return transfer, received, headers


def artifact_url(artifact_uri: str, name: str) -> str:
    """The proxy URL of a run's artifact (`mlflow-artifacts:/<experiment>/<run>/artifacts` + name)."""
    return f"{STACK_URL}{ARTIFACTS_API}/{artifact_uri.removeprefix('mlflow-artifacts:').lstrip('/')}/{name}"


def measure(size: int, workdir: Path) -> dict[str, Any]:
    client = MlflowClient(STACK_URL)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    run = client.create_run(experiment_id, run_name=f"large-{size // MIB}MiB")
    url = artifact_url(run.info.artifact_uri, "model.bin")
    source = workdir / "model.bin"
    sha256 = write_random_file(source, size)
    server = container_id("tracking-server", REPO)
    try:
        with PeakMemory(server) as up_memory:
            up = upload(url, source, sha256)
        source.unlink()
        if up.status != 200:
            raise RuntimeError(f"upload answered {up.status}")
        with PeakMemory(server) as down_memory:
            down, received, _ = download(url)
    finally:
        requests.delete(url, auth=auth(), timeout=600)
        client.delete_run(run.info.run_id)
    return {
        "size_mib": size // MIB,
        "upload": {**up.__dict__, "memory": up_memory.summary()},
        "download": {**down.__dict__, "bytes": received, "memory": down_memory.summary()},
        "sha256_equal": down.sha256 == sha256 and received == size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="artifact size in MiB (default 1024)")
    parser.add_argument("--label", default="", help="suffix of the result file (e.g. before)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-large-") as workdir:
        result = measure(options.size_mib * MIB, Path(workdir))
    up, down = result["upload"], result["download"]
    print(
        f"large artifact {result['size_mib']} MiB: up {up['megabytes_per_second']} MB/s ({up['seconds']} s, answer "
        f"{up['wait_seconds']} s after the last byte), down {down['megabytes_per_second']} MB/s ({down['seconds']} s, "
        f"first byte after {down['wait_seconds']} s), sha256 equal: {result['sha256_equal']}; server memory peak "
        f"(growth) up {up['memory']['usage_peak_mib']} MiB (+{up['memory']['usage_growth_mib']}, anon "
        f"+{up['memory']['anon_growth_mib']}), down {down['memory']['usage_peak_mib']} MiB "
        f"(+{down['memory']['usage_growth_mib']}, anon +{down['memory']['anon_growth_mib']})"
    )
    save("large_artifact" + (f"_{options.label}" if options.label else ""), result)


if __name__ == "__main__":
    main()
