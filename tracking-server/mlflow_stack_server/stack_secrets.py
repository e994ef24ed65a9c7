"""The stack's secrets, kept as files in the `secrets` volume (mounted on /run/secrets, read-only elsewhere).

    stack-secrets [init]      write every missing secret (random) and every one given in the environment
    stack-secrets show [NAME] print NAME=value lines (all, or the one named)
    stack-secrets set NAME    replace one with the value on stdin (a new random one when stdin is empty)

`init` runs as the one-shot compose service `secrets` before anything else starts. A value set in the
environment (from `.env`) wins over the file and is written into it, so a stack first started with `.env`
secrets keeps them; a secret nobody set is generated once and kept across `down`/`up`.
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from mlflow_stack_server.atomic_files import write_atomically
from mlflow_stack_server.console import USAGE_ERROR, Console
from mlflow_stack_server.settings import Settings

console = Console("[secrets]")


@dataclass(frozen=True)
class Secret:
    file: str  # name of the file in the volume
    variable: str  # the .env variable that overrides it
    field: str  # the Settings field that holds that variable's value
    default: str = ""  # a fixed value that is not secret (a user name); empty = random

    def given(self, settings: Settings) -> str:
        value = getattr(settings, self.field)
        assert isinstance(value, str)
        return value


SECRETS = (
    Secret("postgres_password", "POSTGRES_PASSWORD", "postgres_password"),
    Secret("minio_root_user", "MINIO_ROOT_USER", "minio_root_user", default="mlflow"),
    Secret("minio_root_password", "MINIO_ROOT_PASSWORD", "minio_root_password"),
    Secret("mlflow_auth_admin_password", "MLFLOW_AUTH_ADMIN_PASSWORD", "admin_password"),
    Secret("mlflow_flask_server_secret_key", "MLFLOW_FLASK_SERVER_SECRET_KEY", "flask_secret_key"),
)
BY_FILE = {secret.file: secret for secret in SECRETS}


def random_value() -> str:
    # Hex: no character needs quoting in a URI, an ini file or a shell.
    return secrets.token_hex(24)


def write(directory: Path, name: str, value: str) -> None:
    """0600 from the first byte: the file is never readable by others, not even half-written."""
    write_atomically(directory / name, value.encode())


def init(settings: Settings) -> None:
    directory = settings.secrets_dir
    if not os.access(directory, os.W_OK):
        console.fail(
            f"{directory} is not writable by uid {os.getuid()} (was the secrets volume created by another image?)"
        )
    written = []
    for secret in SECRETS:
        path = directory / secret.file
        given = secret.given(settings)
        current = path.read_text() if path.exists() else None
        if given:
            if given != current:
                write(directory, secret.file, given)
                written.append(f"{secret.file} (from {secret.variable})")
        elif current is None:
            write(directory, secret.file, secret.default or random_value())
            written.append(f"{secret.file} ({'default' if secret.default else 'generated'})")
        else:
            # Owner and mode may have been changed by hand; put them back.
            path.chmod(0o600)
    console.log(f"wrote {', '.join(written)}" if written else "all present, nothing changed")


def show(settings: Settings, names: list[str]) -> None:
    for name in names or [secret.file for secret in SECRETS]:
        if name not in BY_FILE:
            console.fail(f"unknown secret {name!r}; known: {', '.join(BY_FILE)}", USAGE_ERROR)
        path = settings.secrets_dir / name
        print(f"{name}={path.read_text() if path.exists() else '(missing: docker compose up writes it)'}")


def set_value(settings: Settings, name: str) -> None:
    if name not in BY_FILE:
        console.fail(f"unknown secret {name!r}; known: {', '.join(BY_FILE)}", USAGE_ERROR)
    value = sys.stdin.read().strip() or random_value()
    write(settings.secrets_dir, name, value)
    console.log(f"replaced {name}")


def main(argv: list[str] | None = None) -> None:
    """Console script `stack-secrets [init] | show [NAME...] | set NAME`."""
    argv = sys.argv[1:] if argv is None else argv
    command, rest = (argv[0], argv[1:]) if argv else ("init", [])
    # No database or bucket here: this runs before anything else, with the secrets' own variables only.
    settings = console.configured(lambda: Settings.from_environment(server=False))
    if command == "init" and not rest:
        init(settings)
    elif command == "show":
        show(settings, rest)
    elif command == "set" and len(rest) == 1:
        set_value(settings, rest[0])
    else:
        console.fail("usage: stack-secrets [init] | show [NAME...] | set NAME  (value on stdin)", USAGE_ERROR)
