"""Files that are never seen half-written or with a wider mode than their final one (secrets, keys)."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int = 0o600, owner: int | None = None) -> None:
    """Write a temporary file next to `path` with its final mode from the first byte, then rename it over `path`.

    `owner` (a uid, also used as the gid) is applied only when running as root, before the rename."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(temporary, mode)  # O_CREAT's mode applies to a new file only, and through the umask
    if owner is not None and os.geteuid() == 0:
        os.chown(temporary, owner, owner)
    os.replace(temporary, path)
