"""Seconds from `docker compose up -d` to every service healthy (images built, volumes kept), when each service
became ready on the way (read from Docker's own state while `up` runs, not from anyone's printed lines), and the
size of our two images."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

from bench.common import compose, median, save

ROUNDS = 3
POLL_SECONDS = 0.25


def _ready(service: dict[str, object]) -> bool:
    """Healthy (a service with a healthcheck), running (one without), or exited 0 (a one-shot: secrets, prepare)."""
    if service.get("State") == "exited":
        return service.get("ExitCode") == 0
    return service.get("Health") == "healthy" or (service.get("State") == "running" and not service.get("Health"))


def _services() -> list[dict[str, object]]:
    output = compose("ps", "-a", "--format", "json").strip()
    # Compose v2.40 prints one JSON object per line.
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def start_and_watch() -> tuple[float, dict[str, float]]:
    """`up -d --wait`, polling Docker while it runs: its wall time, and the seconds at which each service first
    looked ready."""
    ready_at: dict[str, float] = {}
    done = threading.Event()
    started = time.perf_counter()

    def watch() -> None:
        while not done.is_set():
            for service in _services():
                name = str(service.get("Service"))
                if name not in ready_at and _ready(service):
                    ready_at[name] = round(time.perf_counter() - started, 2)
            time.sleep(POLL_SECONDS)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        compose("up", "-d", "--wait", "--wait-timeout", "180")
    finally:
        total = time.perf_counter() - started
        done.set()
        watcher.join()
    return total, ready_at


def image_size_mb(image: str) -> float:
    size = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{.Size}}", image], check=True, capture_output=True, text=True
    ).stdout
    return round(int(size) / 1e6, 1)


# Run inside an image: the five largest installed distributions' folders, in MB.
LARGEST_PACKAGES = """
import pathlib, site
sizes = {}
for root in map(pathlib.Path, site.getsitepackages()):
    for entry in root.iterdir() if root.is_dir() else ():
        files = entry.rglob("*") if entry.is_dir() else [entry]
        sizes[entry.name] = sizes.get(entry.name, 0) + sum(f.stat().st_size for f in files if f.is_file())
for name, size in sorted(sizes.items(), key=lambda item: -item[1])[:5]:
    print(f"{name} {size / 1e6:.0f}")
"""


def largest_packages(image: str) -> dict[str, float]:
    output = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "python", image, "-c", LARGEST_PACKAGES],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {name: float(size) for name, size in (line.split() for line in output.splitlines())}


def main() -> None:
    totals: list[float] = []
    ready: dict[str, list[float]] = {}
    for _ in range(ROUNDS):
        compose("down")
        total, ready_at = start_and_watch()
        totals.append(total)
        for service, seconds in ready_at.items():
            ready.setdefault(service, []).append(seconds)
    # The tags compose builds under (a second stack on the same machine uses its own).
    images = (
        os.environ.get("TRACKING_SERVER_IMAGE", "mlflow-stack/tracking-server:3.17.2"),
        os.environ.get("TRAINER_IMAGE", "mlflow-stack/trainer:0.1.0"),
    )
    services = _services()
    result = {
        "rounds": ROUNDS,
        "up_to_healthy_seconds_median": round(median(totals), 1),
        "up_to_healthy_seconds": [round(t, 1) for t in totals],
        # Seconds after `up` at which each service was first ready, median over the rounds, in order of readiness.
        "service_ready_seconds_median": dict(
            sorted(((name, round(median(v), 1)) for name, v in ready.items()), key=lambda item: item[1])
        ),
        "services_healthy": sorted(str(s["Service"]) for s in services if "healthy" in str(s.get("Status", ""))),
        "image_size_mb": {image: image_size_mb(image) for image in images},
        "largest_packages_mb": {image: largest_packages(image) for image in images},
    }
    print(
        f"bench: stack start: {result['up_to_healthy_seconds_median']} s; ready at {result['service_ready_seconds_median']}"
    )
    save("stack_start", result)


if __name__ == "__main__":
    main()
