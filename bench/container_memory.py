"""A container's memory over time, read from its cgroup on the host (cgroup v1 or v2, Docker's cgroupfs or
systemd driver): the peak during a block of code, with and without the page cache.

Two numbers because they answer different questions: `usage` (what the cgroup is charged, page cache of
files the container wrote included, what a memory limit counts first) and `anon` (process memory that cannot
be dropped: Python objects, buffers). A whole artifact held in a buffer grows both; a whole artifact copied to
a temporary file grows `usage` only.
"""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

CGROUP_ROOT = Path("/sys/fs/cgroup")
MIB = 2**20


def container_id(compose_service: str, cwd: Path) -> str:
    """The full id of the first container of a compose service in the project of `cwd`'s environment."""
    ids = subprocess.run(
        ["docker", "compose", "ps", "-q", compose_service], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.split()
    if not ids:
        raise RuntimeError(f"no running container for the compose service {compose_service}")
    return ids[0]


def cgroup_dir(container: str) -> Path:
    candidates = (
        CGROUP_ROOT / "memory" / "docker" / container,  # v1, cgroupfs driver
        CGROUP_ROOT / "memory" / "system.slice" / f"docker-{container}.scope",  # v1, systemd driver
        CGROUP_ROOT / "system.slice" / f"docker-{container}.scope",  # v2, systemd driver
        CGROUP_ROOT / "docker" / container,  # v2, cgroupfs driver
    )
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    raise RuntimeError(f"no cgroup of container {container[:12]} under {CGROUP_ROOT} (is this the Docker host?)")


@dataclass(frozen=True)
class MemorySample:
    usage: int
    anon: int


def read_sample(folder: Path) -> MemorySample:
    stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
    if (folder / "memory.current").exists():  # v2
        return MemorySample(usage=int((folder / "memory.current").read_text()), anon=int(stat["anon"]))
    return MemorySample(usage=int((folder / "memory.usage_in_bytes").read_text()), anon=int(stat["total_rss"]))


class PeakMemory:
    """`with PeakMemory(container) as peak: ...`; then peak.before / peak.highest (MemorySample, bytes)."""

    def __init__(self, container: str, interval: float = 0.05) -> None:
        self.folder = cgroup_dir(container)
        self.interval = interval
        self.before = read_sample(self.folder)
        self.highest = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            sample = read_sample(self.folder)
            self.highest = MemorySample(max(self.highest.usage, sample.usage), max(self.highest.anon, sample.anon))
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self.before = read_sample(self.folder)
        self.highest = self.before
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        """MiB: before, peak and growth, for both measures."""
        return {
            "usage_before_mib": round(self.before.usage / MIB),
            "usage_peak_mib": round(self.highest.usage / MIB),
            "usage_growth_mib": round((self.highest.usage - self.before.usage) / MIB),
            "anon_before_mib": round(self.before.anon / MIB),
            "anon_peak_mib": round(self.highest.anon / MIB),
            "anon_growth_mib": round((self.highest.anon - self.before.anon) / MIB),
        }
