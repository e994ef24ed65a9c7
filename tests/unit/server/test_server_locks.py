"""The tracking-server image's two locks (MLFLOW_VERSION=3.17.2 and 3.16.1) stay in step.

The previous version's image exists for the upgrade test (tests/stack/test_upgrade.py) and for rollbacks, and
runs the same server code: a package added to one lock for that code must be in the other too.
"""

from __future__ import annotations

import re
from pathlib import Path

SERVER = Path(__file__).resolve().parents[3] / "tracking-server"
MLFLOW_PACKAGES = ("mlflow", "mlflow-skinny", "mlflow-tracing")


def pins(lock: Path) -> dict[str, str]:
    pinned = {}
    for line in lock.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pinned[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pinned


def test_each_lock_pins_one_mlflow_release_and_the_previous_is_named_after_it() -> None:
    current, previous = pins(SERVER / "requirements.txt"), pins(SERVER / "requirements-3.16.1.txt")
    assert {current[name] for name in MLFLOW_PACKAGES} == {"3.17.2"}
    assert {previous[name] for name in MLFLOW_PACKAGES} == {"3.16.1"}


def test_both_locks_hold_the_same_packages() -> None:
    current, previous = pins(SERVER / "requirements.txt"), pins(SERVER / "requirements-3.16.1.txt")
    assert sorted(set(current) ^ set(previous)) == [], "add the package to both tracking-server/requirements*.txt"


def test_the_image_default_is_the_current_lock() -> None:
    dockerfile = (SERVER / "Dockerfile").read_text()
    assert "ARG MLFLOW_VERSION=3.17.2" in dockerfile
    assert "requirements-3.16.1.txt" in dockerfile  # the shared layer reads both locks
