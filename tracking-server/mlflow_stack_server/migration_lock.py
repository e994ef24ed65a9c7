"""The Postgres advisory lock every prepare takes before it changes the database (schema, auth database, admin):
concurrent prepares (replicas, a Helm hook retried) queue on it instead of migrating at once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Any fixed 64-bit number shared by every prepare.
MIGRATION_LOCK_KEY = 0x6D6C666C6F77  # "mlflow"


@contextmanager
def migration_lock(connection: Any) -> Iterator[None]:
    """Hold the lock on `connection` (a SQLAlchemy connection) for the block; released even if it fails."""
    import sqlalchemy

    connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    try:
        yield
    finally:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
