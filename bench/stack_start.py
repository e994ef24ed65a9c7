"""Seconds from `docker compose up -d` to every service healthy (images built, volumes kept), the cost of
each start step of the tracking server, and the size of our two images."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

from bench.common import compose, median, save

ROUNDS = 3
STEP_PATTERNS = {
    "database_reachable": r"database reachable after ([\d.]+) s",
    "schema_migrated": r"schema up to date after ([\d.]+) s",
    "bucket_ready": r"bucket \S+ ready after ([\d.]+) s",
}


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
    steps: dict[str, list[float]] = {name: [] for name in STEP_PATTERNS}
    for _ in range(ROUNDS):
        compose("down")
        started = time.perf_counter()
        compose("up", "-d", "--wait", "--wait-timeout", "180")
        totals.append(time.perf_counter() - started)
        log = compose("logs", "--no-log-prefix", "tracking-server")
        for name, pattern in STEP_PATTERNS.items():
            steps[name].append(float(re.findall(pattern, log)[-1]))
    # The tags compose builds under (a second stack on the same machine uses its own).
    images = (
        os.environ.get("TRACKING_SERVER_IMAGE", "mlflow-stack/tracking-server:3.17.2"),
        os.environ.get("TRAINER_IMAGE", "mlflow-stack/trainer:0.1.0"),
    )
    services = json.loads("[" + ",".join(compose("ps", "--format", "json").split("\n")[:-1]) + "]")
    result = {
        "rounds": ROUNDS,
        "up_to_healthy_seconds_median": round(median(totals), 1),
        "up_to_healthy_seconds": [round(t, 1) for t in totals],
        "tracking_server_steps_seconds_median": {name: round(median(v), 1) for name, v in steps.items()},
        "services_healthy": sorted(s["Service"] for s in services if "healthy" in s.get("Status", "")),
        "image_size_mb": {image: image_size_mb(image) for image in images},
        "largest_packages_mb": {image: largest_packages(image) for image in images},
    }
    print(
        f"bench: stack start: {result['up_to_healthy_seconds_median']} s; steps {result['tracking_server_steps_seconds_median']}"
    )
    save("stack_start", result)


if __name__ == "__main__":
    main()
