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
from typing import NoReturn

DIRECTORY = Path(os.environ.get("STACK_SECRETS_DIR", "/run/secrets"))


@dataclass(frozen=True)
class Secret:
    file: str  # name of the file in the volume
    variable: str  # the .env variable that overrides it
    default: str = ""  # a fixed value that is not secret (a user name); empty = random


SECRETS = (
    Secret("postgres_password", "POSTGRES_PASSWORD"),
    Secret("minio_root_user", "MINIO_ROOT_USER", default="mlflow"),
    Secret("minio_root_password", "MINIO_ROOT_PASSWORD"),
    Secret("mlflow_auth_admin_password", "MLFLOW_AUTH_ADMIN_PASSWORD"),
    Secret("mlflow_flask_server_secret_key", "MLFLOW_FLASK_SERVER_SECRET_KEY"),
)
BY_FILE = {secret.file: secret for secret in SECRETS}


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"[secrets] error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def random_value() -> str:
    # Hex: no character needs quoting in a URI, an ini file or a shell.
    return secrets.token_hex(24)


def write(name: str, value: str) -> None:
    """Atomically, 0600 from the first byte: the file is never readable by others, not even half-written."""
    target = DIRECTORY / name
    temporary = DIRECTORY / f".{name}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(value)
    os.replace(temporary, target)


def init() -> None:
    if not os.access(DIRECTORY, os.W_OK):
        fail(f"{DIRECTORY} is not writable by uid {os.getuid()} (was the secrets volume created by another image?)")
    written = []
    for secret in SECRETS:
        path = DIRECTORY / secret.file
        given = os.environ.get(secret.variable, "")
        current = path.read_text() if path.exists() else None
        if given:
            if given != current:
                write(secret.file, given)
                written.append(f"{secret.file} (from {secret.variable})")
        elif current is None:
            write(secret.file, secret.default or random_value())
            written.append(f"{secret.file} ({'default' if secret.default else 'generated'})")
        else:
            # Owner and mode may have been changed by hand; put them back.
            path.chmod(0o600)
    print(f"[secrets] wrote {', '.join(written)}" if written else "[secrets] all present, nothing changed", flush=True)


def show(names: list[str]) -> None:
    for name in names or [secret.file for secret in SECRETS]:
        if name not in BY_FILE:
            fail(f"unknown secret {name!r}; known: {', '.join(BY_FILE)}", code=2)
        path = DIRECTORY / name
        print(f"{name}={path.read_text() if path.exists() else '(missing: docker compose up writes it)'}")


def set_value(name: str) -> None:
    if name not in BY_FILE:
        fail(f"unknown secret {name!r}; known: {', '.join(BY_FILE)}", code=2)
    value = sys.stdin.read().strip() or random_value()
    write(name, value)
    print(f"[secrets] replaced {name}", flush=True)


def main(argv: list[str]) -> None:
    command, rest = (argv[0], argv[1:]) if argv else ("init", [])
    if command == "init" and not rest:
        init()
    elif command == "show":
        show(rest)
    elif command == "set" and len(rest) == 1:
        set_value(rest[0])
    else:
        fail("usage: stack-secrets [init] | show [NAME...] | set NAME  (value on stdin)", code=2)


if __name__ == "__main__":
    main(sys.argv[1:])
