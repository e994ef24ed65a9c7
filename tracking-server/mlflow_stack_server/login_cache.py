"""MLflow's basic-auth login cache, checked against the auth database on every hit.

MLflow (`mlflow.server.auth`) remembers each verified login, keyed (username, HMAC(password)), for
`auth_cache_ttl_seconds`, so that a request does not pay a password hash (pbkdf2/scrypt: tens to hundreds of
milliseconds of CPU). It forgets a user's logins when that user is changed through the worker that remembers
them; every other worker, and every other replica, kept serving a changed password, a demoted admin (on the
FastAPI routes, which take `is_admin` from the cached user) or a deleted user until the entry expired.

`install_revalidated_logins` wraps MLflow's `_authenticate_cached` (the one login function of its Flask and
FastAPI paths) in each worker: a login found in MLflow's cache counts only if the user's row in the auth
database (id, password hash, admin flag; one indexed SELECT) is still the one the password was verified
against. Otherwise the entry is dropped and MLflow verifies the password again, so a change is seen at the next
request on every worker of every replica, and the hash is paid only after a change. The row is read outside
MLflow's cache lock (a worker's threads check their logins side by side), and once per Flask request: MLflow
checks one request's login up to three times (the login, the admin check, the validator), so the row is kept in
that request's WSGI environ, which no other request shares. The TTL still bounds the memory the cache holds; it
no longer bounds revocation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flask
import sqlalchemy

# (id, password hash, is_admin) of a user as the auth database has it now; None: no such user.
LoginRow = tuple[int, str, bool]
CURRENT_LOGIN_ROW = sqlalchemy.text("SELECT id, password_hash, is_admin FROM users WHERE username = :username")
ROWS_READ = "mlflow_stack.login_rows"  # in a Flask request's environ: {username: row} as this request read them


def current_login_row(engine: sqlalchemy.engine.Engine, username: str) -> LoginRow | None:
    """The user's row from the primary database (never a read replica, which may lag behind a change)."""
    with engine.connect() as connection:
        row = connection.execute(CURRENT_LOGIN_ROW, {"username": username}).first()
    return None if row is None else (int(row[0]), str(row[1]), bool(row[2]))


def row_for_this_request(engine: sqlalchemy.engine.Engine, username: str) -> LoginRow | None:
    """The user's row, read once per Flask request (FastAPI routes have no Flask request: read every time)."""
    if not flask.has_request_context():
        return current_login_row(engine, username)
    # Not flask.g: an application context, and its g, may outlive one request.
    rows: dict[str, LoginRow | None] = flask.request.environ.setdefault(ROWS_READ, {})
    if username not in rows:
        rows[username] = current_login_row(engine, username)
    return rows[username]


def install_revalidated_logins(auth_module: Any) -> None:
    """Wrap `auth_module._authenticate_cached` so that every login it answers from MLflow's cache matches the
    user's current row in `auth_module.store`'s primary database. With the cache off (TTL 0) MLflow hashes on
    every request and there is nothing to re-check."""
    authenticate_cached: Callable[[str, str], Any] = auth_module._authenticate_cached
    if auth_module._USER_AUTH_CACHE is None or getattr(authenticate_cached, "revalidated", False):
        return

    def authenticate_revalidated(username: str, password: str) -> Any:
        key = auth_module._auth_cache_key(username, password)
        with auth_module._USER_AUTH_CACHE_LOCK:
            cached = auth_module._USER_AUTH_CACHE.get(key)
        if cached is None:
            return authenticate_cached(username, password)  # MLflow verifies the password and remembers it
        # A failed lookup raises: MLflow then refuses the login (FastAPI) or answers 500 (Flask); never a stale yes.
        current = row_for_this_request(auth_module.store.engine, username)
        if current == (cached.id, cached.password_hash, bool(cached.is_admin)):
            return cached
        with auth_module._USER_AUTH_CACHE_LOCK:
            auth_module._USER_AUTH_CACHE.pop(key, None)
        return authenticate_cached(username, password)  # a miss now: the password is verified against the new row

    authenticate_revalidated.revalidated = True  # type: ignore[attr-defined]
    auth_module._authenticate_cached = authenticate_revalidated
