"""`make status`: the stack at a glance - services, versions, disk use, what it holds, the newest backup.

Standard library only (runs with the host's python3). Talks to Docker through `docker compose ... --format
json` and to the tracking server through `stack-status` (JSON) inside its container; exits 1 when a
service is not healthy, so it can be used in a monitoring check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BACKUP_NAME_FORMAT = "%Y%m%dT%H%M%SZ"  # scripts/backup.sh's folder names


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False)


def services() -> list[dict[str, Any]]:
    result = run("docker", "compose", "ps", "--all", "--format", "json")
    if result.returncode != 0:
        sys.exit(f"status: docker compose ps failed: {result.stderr.strip().splitlines()[-1:]}")
    entries: list[dict[str, Any]] = []
    for line in result.stdout.splitlines():  # one object per line (Compose >= 2.21) or one list
        parsed = json.loads(line)
        entries.extend(parsed if isinstance(parsed, list) else [parsed])
    return entries


def exec_in(service: str, *command: str) -> str:
    result = run("docker", "compose", "exec", "-T", service, *command)
    return result.stdout.strip() if result.returncode == 0 else ""


def seaweedfs_version() -> str:
    """`weed version` says "version 8000GB 4.48 linux amd64": "seaweedfs 4.48" (empty if it cannot say)."""
    words = exec_in("seaweedfs", "weed", "version").split()
    return f"seaweedfs {words[2]}" if len(words) > 2 and words[0] == "version" else ""


def project() -> str:
    result = run("docker", "compose", "config", "--format", "json")
    name = json.loads(result.stdout).get("name", "") if result.returncode == 0 else ""
    return str(name)


def volume_usage(project_name: str, image: str) -> dict[str, int]:
    """Bytes used by each of the project's volumes, measured in one throwaway container (read-only mounts)."""
    listed = run("docker", "volume", "ls", "--filter", f"label=com.docker.compose.project={project_name}", "-q")
    volumes = sorted(listed.stdout.split())
    if not volumes or not image:
        return {}
    mounts = [arg for volume in volumes for arg in ("-v", f"{volume}:/volumes/{volume}:ro")]
    # root inside a container with no network and read-only mounts: Postgres' files are 0700 to its own uid.
    du = run(
        "docker", "run", "--rm", "--network", "none", "--user", "0", "--entrypoint", "du", *mounts, image,
        "-s", "-B1", *(f"/volumes/{volume}" for volume in volumes),
    )  # fmt: skip
    usage = {}
    for line in du.stdout.splitlines():
        size, path = line.split("\t", 1)
        usage[path.removeprefix("/volumes/")] = int(size)
    return usage


def newest_backup() -> tuple[str, float] | None:
    # STATUS_BACKUP_DIR: where `make backup` writes (its default) unless backups are kept elsewhere.
    folder = Path(os.environ.get("STATUS_BACKUP_DIR") or REPO / "backups")
    backups = sorted(path for path in folder.glob("*") if path.is_dir()) if folder.is_dir() else []
    if not backups:
        return None
    newest = backups[-1]
    try:
        taken = datetime.strptime(newest.name, BACKUP_NAME_FORMAT).replace(tzinfo=UTC).timestamp()
    except ValueError:
        taken = newest.stat().st_mtime
    return newest.name, time.time() - taken


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def age(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def main() -> int:
    entries = services()
    running = {entry["Service"] for entry in entries if entry.get("State") == "running"}
    versions = {
        "postgres": exec_in("postgres", "postgres", "--version") if "postgres" in running else "",
        # Its first line ("minio version RELEASE..."); empty (then the image's tag) if it cannot say.
        "minio": (exec_in("minio", "minio", "--version").splitlines() or [""])[0] if "minio" in running else "",
        "seaweedfs": seaweedfs_version() if "seaweedfs" in running else "",
    }
    held: dict[str, Any] = {}
    if "tracking-server" in running:
        raw = exec_in("tracking-server", "stack-status")
        held = json.loads(raw) if raw else {}
        versions["tracking-server"] = f"mlflow {held.get('mlflow_version', '?')}" if held else ""
    healthy = True
    print("Services")
    for entry in sorted(entries, key=lambda e: str(e["Service"])):
        state, health = entry.get("State", "?"), entry.get("Health") or "-"
        one_shot = state == "exited" and "Exited (0)" in entry.get("Status", "")
        healthy &= one_shot or (state == "running" and health in ("healthy", "-"))
        version = versions.get(entry["Service"], "") or entry.get("Image", "")
        print(f"  {entry['Service']:<24} {state:<8} {health:<9} {version}")
    if not entries:
        healthy = False
        print("  (none: the stack is not running; `make up`)")
    print("Volumes")
    image = os.environ.get("TRACKING_SERVER_IMAGE", "") or next(
        (str(e["Image"]) for e in entries if e["Service"] == "tracking-server"), ""
    )
    for volume, size in volume_usage(project(), image).items():
        print(f"  {volume:<40} {human(size)}")
    if held:
        print("Tracking server")
        for name in ("experiments", "runs", "model_versions", "logged_models"):
            counts = held[name]
            print(f"  {name:<24} {counts['live']} (+{counts['deleted']} deleted)")
        # A deleted version's row stays in MLflow's registry (stage Deleted_Internal); its files go with gc.
        print("  (deleted runs, experiments and logged models stay until `make gc`)")
        fast_path = held.get("fast_path", {})
        print(f"  fast path                {fast_path.get('summary', '?').removeprefix('fast path ')}")
        champions = held["champions"]
        print("  champion                 " + (", ".join(f"{m} v{v}" for m, v in champions.items()) or "none"))
    backup = newest_backup()
    print("Backups")
    print(f"  newest                   {backup[0]} ({age(backup[1])} old)" if backup else "  none (`make backup`)")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
