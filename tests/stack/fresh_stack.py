"""A second stack from a fresh copy of this repository, beside the one the session tests: for first starts.

The copy holds what `git clone` would (tracked and new, non-ignored files; no .env, no .venv) and runs under
its own project name and ports, with none of the secret variables in its environment. It reuses the images
the session built (same names), so it starts in seconds, as a clone with images already pulled would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.stack.conftest import MINIO_CONSOLE_PORT, MLFLOW_PORT, REPO, TrainerProcess, trainer_argv

SECRET_VARIABLES = (
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_USER",
    "MINIO_ROOT_PASSWORD",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "MLFLOW_AUTH",
    "COMPOSE_FILE",
)
# Next to the session's stack: 5000/9001 -> 5010/9011 in CI, 5100/9101 -> 5110/9111 for a second worktree.
FRESH_MLFLOW_PORT = int(os.environ.get("FRESH_STACK_MLFLOW_PORT", str(MLFLOW_PORT + 10)))
FRESH_CONSOLE_PORT = int(os.environ.get("FRESH_STACK_CONSOLE_PORT", str(MINIO_CONSOLE_PORT + 10)))


def copy_repository(target: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        source = REPO / name
        if source.is_file():  # a tracked file deleted in the work tree is not in a clone either
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    assert not (target / ".env").exists()
    return target


@dataclass
class FreshStack:
    directory: Path
    project: str

    @property
    def url(self) -> str:
        return f"http://localhost:{FRESH_MLFLOW_PORT}"

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        environment = {key: value for key, value in os.environ.items() if key not in SECRET_VARIABLES}
        environment.update(
            COMPOSE_PROJECT_NAME=self.project,
            MLFLOW_PORT=str(FRESH_MLFLOW_PORT),
            MINIO_CONSOLE_PORT=str(FRESH_CONSOLE_PORT),
            TRAINER_UI_URL=self.url,
        )
        environment.update(extra or {})
        return environment

    def run(
        self, *argv: str, timeout: float = 600, extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            cwd=self.directory,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=self.environment(extra),
        )

    def compose(
        self, *args: str, check: bool = True, timeout: float = 600, extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = self.run("docker", "compose", *args, timeout=timeout, extra=extra)
        if check and result.returncode != 0:
            raise AssertionError(
                f"[{self.project}] docker compose {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def train(self, *args: str) -> TrainerProcess:
        """1 epoch on a subset; the run and version come back through the trainer's result file."""
        argv, result_file = trainer_argv("--epochs", "1", "--max-train-samples", "3000", "--min-accuracy", "0.5", *args)
        done = self.compose(*argv[2:])
        process = TrainerProcess(done.args, done.returncode, done.stdout, done.stderr)
        process.result_file = result_file
        return process

    def secrets(self) -> dict[str, str]:
        shown = self.compose("run", "--rm", "--no-deps", "-T", "secrets", "show").stdout
        return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)

    def destroy(self) -> None:
        self.compose("--profile", "train", "down", "-v", "--remove-orphans", "--timeout", "5", check=False)
