"""Shared by the benchmarks: the machine they ran on, and where results go."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(os.environ.get("BENCH_RESULTS_DIR", Path(__file__).resolve().parents[1] / "docs" / "bench-results"))
STACK_URL = os.environ.get("STACK_URL", f"http://localhost:{os.environ.get('MLFLOW_PORT', '5000')}")


def machine() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    memory_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_kb / 2**20, 1),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def compose(*args: str, stdin: str | None = None, extra_file: str | None = None) -> str:
    """`docker compose ARGS` in the project folder; its stdout, or CalledProcessError. `extra_file`: a compose
    file (relative to the project folder) read after the ones compose reads now."""
    command = ["docker", "compose", *args]
    environment = None
    if extra_file:
        environment = {**os.environ, "COMPOSE_FILE": f"{compose_files()}{os.pathsep}{extra_file}"}
    return subprocess.run(
        command, cwd=REPO, input=stdin, check=True, capture_output=True, text=True, env=environment
    ).stdout


def compose_files() -> str:
    """The files compose reads now: COMPOSE_FILE from the environment, else from .env, else its defaults."""
    if os.environ.get("COMPOSE_FILE"):
        return os.environ["COMPOSE_FILE"]
    dotenv = REPO / ".env"
    if dotenv.exists():
        lines = dotenv.read_text().splitlines()
        named = [line.split("=", 1)[1].strip() for line in lines if line.startswith("COMPOSE_FILE=")]
        if named:
            return named[-1]
    defaults = ["docker-compose.yml", "docker-compose.override.yml"]
    return os.pathsep.join(name for name in defaults if (REPO / name).exists())


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    print(f"bench: wrote {path}")
    return path
