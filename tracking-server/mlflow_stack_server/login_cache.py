"""MLflow's basic-auth login cache, checked against the auth database on every hit.

MLflow (`mlflow.server.auth`) remembers each verified login, keyed (username, HMAC(password)), for
`auth_cache_ttl_seconds`, so that a request does not pay a password hash (pbkdf2/scrypt: tens to hundreds of
milliseconds of CPU). It forgets a user's logins when that user is changed through the worker that remembers
them; every other worker, and every other replica, kept serving a changed password, a demoted admin (on the
FastAPI routes, which take `is_admin` from the cached user) or a deleted user until the entry expired.

`RevalidatedLoginCache` replaces that cache in each worker: a hit costs one indexed SELECT of the user's row
(id, password hash, admin flag) in the auth database, and counts only if the row is still the one the password
was verified against. MLflow checks the login up to three times while it authorizes one request (the login, the
admin check, the validator); the row is read once per Flask request (kept in the request's WSGI environ, which
no other request shares). Otherwise the entry is dropped and MLflow verifies the password again, so a change is
seen at the next request on every worker of every replica, and the hash is paid only after a change. The TTL
still bounds the memory the cache holds; it no longer bounds revocation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flask
import sqlalchemy
from cachetools import TTLCache

# (id, password hash, is_admin) of a user as the auth database has it now; None: no such user.
LoginRow = tuple[int, str, bool]
CURRENT_LOGIN_ROW = sqlalchemy.text("SELECT id, password_hash, is_admin FROM users WHERE username = :username")
ROWS_READ = "mlflow_stack.login_rows"  # in a Flask request's environ: {username: row} as this request read them


def current_login_row(engine: sqlalchemy.engine.Engine, username: str) -> LoginRow | None:
    """The user's row from the primary database (never a read replica, which may lag behind a change)."""
    with engine.connect() as connection:
        row = connection.execute(CURRENT_LOGIN_ROW, {"username": username}).first()
    return None if row is None else (int(row[0]), str(row[1]), bool(row[2]))


class RevalidatedLoginCache(TTLCache):  # type: ignore[type-arg]
    """MLflow's TTLCache of verified logins whose hits are re-checked against the user's current row."""

    def __init__(self, maxsize: int, ttl: float, current_row: Callable[[str], LoginRow | None]) -> None:
        super().__init__(maxsize=maxsize, ttl=ttl)
        self._current_row = current_row

    def get(self, key: Any, default: Any = None) -> Any:
        cached = super().get(key)
        if cached is None:
            return default
        # A failed lookup raises: MLflow then refuses the login (FastAPI) or answers 500 (Flask); never a stale yes.
        if self._row_for_this_request(key[0]) != (cached.id, cached.password_hash, bool(cached.is_admin)):
            self.pop(key, None)
            return default
        return cached

    def _row_for_this_request(self, username: str) -> LoginRow | None:
        """The user's row, read once per Flask request (FastAPI routes have no Flask request: read every time)."""
        if not flask.has_request_context():
            return self._current_row(username)
        # Not flask.g: an application context, and its g, may outlive one request.
        rows: dict[str, LoginRow | None] = flask.request.environ.setdefault(ROWS_READ, {})
        if username not in rows:
            rows[username] = self._current_row(username)
        return rows[username]


def install_revalidated_login_cache(auth_module: Any) -> None:
    """Swap MLflow's login cache (`auth_module._USER_AUTH_CACHE`) for a RevalidatedLoginCache of the same size
    and TTL, reading `auth_module.store`'s primary engine. With the cache off (TTL 0) MLflow hashes on every
    request and there is nothing to swap."""
    cache = auth_module._USER_AUTH_CACHE
    if cache is None or isinstance(cache, RevalidatedLoginCache):
        return
    store = auth_module.store
    with auth_module._USER_AUTH_CACHE_LOCK:
        auth_module._USER_AUTH_CACHE = RevalidatedLoginCache(
            cache.maxsize, cache.ttl, lambda username: current_login_row(store.engine, username)
        )
