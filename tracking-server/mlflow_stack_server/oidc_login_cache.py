"""MLFLOW_AUTH=oidc: the plugin's per-request account reads, remembered and re-checked against its database on
every hit, so that a request skips the plugin's ORM work and the token's hash but no change is ever missed.

mlflow-oidc-auth's AuthMiddleware reads two things from its database on every request that logs in with an
access token (the basic-auth password): `SqlAlchemyStore.authenticate_user` (the token's row by its prefix, a
pbkdf2 verification of the secret against the row's hash, a write transaction) and
`SqlAlchemyStore.get_user_profile` (the user's row and, in a second statement, the user's groups; the
middleware refuses a deactivated or deleted account from it). Through the ORM they cost more server CPU than
the fast path's whole write, and they run on the event loop and in the plugin's one-thread executor.

`install_revalidated_accounts` wraps both methods of the plugin's store class; nothing the plugin decides moves
here:

- A token is remembered, keyed (username, HMAC(token)) under a key made at start and never stored, as the token
  row (id, hash) it verifies against, only after the plugin itself accepted it and the secret verifies against
  exactly that hash. A hit reads the row again (one indexed statement on the primary database) and counts only
  when it is still the same row with the same hash, not expired, and its `last_used_at` is not due for the
  plugin's refresh. Anything else (a deleted or replaced token, a deleted user, expiry, a due `last_used_at`)
  forgets the token and asks the plugin, which decides and does its own bookkeeping.
- A profile is the plugin's own `User`, remembered per username with the facts it was built from (the user's
  columns and the set of its groups). A hit reads those facts again (one statement) and returns the remembered
  `User` only when they are equal; otherwise the plugin builds a new one (or raises for a deleted user).

So a revoked token, a deactivated or deleted user and a changed group membership count at the next request on
every worker of every replica, as they do without this module; only the hash and the ORM's work are skipped.

The re-checks are one round trip each: they run on an engine of their own on the plugin's database URL, in
autocommit (no BEGIN, no ROLLBACK when the connection goes back) and without the plugin's ping before each
checkout (the profile read runs on the event loop, where every round trip holds up all requests). A read that
fails (a connection the database dropped) is not an answer: the plugin is asked, on its own pinged engine, and the
failed connection is replaced. The engine keeps at most RECHECK_CONNECTIONS connections per worker. Both memories
are bounded by MEMORY_ENTRIES (the oldest entry is dropped first).

This module imports nothing from the plugin at load (it is installed by proxied_artifacts.create_app_with_oidc).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy

MEMORY_ENTRIES = 10_000  # per worker and per memory; a token entry is ~200 bytes, a profile a few hundred
CACHE_ATTRIBUTE = "_mlflow_stack_revalidated_accounts"  # on the plugin's store instance: its AccountMemory
# The token check runs in the plugin's one-thread executor and the profile read on the event loop: two at once,
# more only when the plugin's routers read profiles from their threads too (those wait for a connection).
RECHECK_CONNECTIONS = 2


@dataclass(frozen=True)
class RememberedToken:
    row_id: int
    token_hash: str


# (id, username, display_name, is_admin, is_service_account, active, managed_by, service_account_source,
#  frozenset of (group id, group name)): what the plugin's get_profile builds its User from.
ProfileFacts = tuple[Any, ...]


@dataclass
class AccountMemory:
    """One store's remembered tokens and profiles (a worker has one plugin store; tests may have several)."""

    key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    tokens: dict[tuple[str, bytes], RememberedToken] = field(default_factory=dict)
    profiles: dict[str, tuple[ProfileFacts, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    engine: sqlalchemy.engine.Engine | None = None

    def recheck_engine(self, store: Any) -> sqlalchemy.engine.Engine:
        if self.engine is None:
            url = store.engine.url
            pool = {} if url.get_backend_name() == "sqlite" else {"pool_size": RECHECK_CONNECTIONS, "max_overflow": 0}
            with self.lock:
                if self.engine is None:
                    self.engine = sqlalchemy.create_engine(url, isolation_level="AUTOCOMMIT", **pool)
        return self.engine

    def token_key(self, username: str, plaintext: str) -> tuple[str, bytes]:
        return username, hmac.new(self.key, plaintext.encode(), hashlib.sha256).digest()

    def remember(self, memory: dict[Any, Any], key: Any, value: Any) -> None:
        with self.lock:
            memory.pop(key, None)
            while len(memory) >= MEMORY_ENTRIES:
                memory.pop(next(iter(memory)))
            memory[key] = value

    def forget(self, memory: dict[Any, Any], key: Any) -> None:
        with self.lock:
            memory.pop(key, None)


def _memory(store: Any) -> AccountMemory:
    memory = store.__dict__.get(CACHE_ATTRIBUTE)
    if memory is None:
        memory = store.__dict__.setdefault(CACHE_ATTRIBUTE, AccountMemory())
    return memory


def _now() -> datetime:
    """Naive UTC, as the plugin stores and compares its timestamps."""
    return datetime.now(UTC).replace(tzinfo=None)


class RecheckFailedError(Exception):
    """The re-check could not read the database: the plugin decides instead."""


def _read(store: Any, query: sqlalchemy.Select[Any], parameters: dict[str, str]) -> list[Any]:
    try:
        with _memory(store).recheck_engine(store).connect() as connection:
            return list(connection.execute(query, parameters).all())
    except sqlalchemy.exc.DBAPIError as error:  # SQLAlchemy has dropped a disconnected connection from the pool
        raise RecheckFailedError(str(error)) from error


@functools.cache
def token_row_query() -> sqlalchemy.Select[Any]:
    """Built once: SQLAlchemy then finds its compiled form without rebuilding the statement's cache key."""
    from mlflow_oidc_auth.db.models.user import SqlUser
    from mlflow_oidc_auth.db.models.user_token import SqlUserToken

    return (
        sqlalchemy.select(SqlUserToken.id, SqlUserToken.token_hash, SqlUserToken.expires_at, SqlUserToken.last_used_at)
        .join(SqlUser, SqlUser.id == SqlUserToken.user_id)
        .where(SqlUser.username == sqlalchemy.bindparam("username"))
        .where(SqlUserToken.token_prefix == sqlalchemy.bindparam("prefix"))
        .order_by(SqlUserToken.id)
        .limit(1)
    )


@functools.cache
def profile_facts_query() -> sqlalchemy.Select[Any]:
    from mlflow_oidc_auth.db.models.user import SqlGroup, SqlUser, SqlUserGroup

    columns = (
        SqlUser.id, SqlUser.username, SqlUser.display_name, SqlUser.is_admin, SqlUser.is_service_account,
        SqlUser.active, SqlUser.managed_by, SqlUser.service_account_source, SqlGroup.id, SqlGroup.group_name,
    )  # fmt: skip
    return (
        sqlalchemy.select(*columns)
        .outerjoin(SqlUserGroup, SqlUserGroup.user_id == SqlUser.id)
        .outerjoin(SqlGroup, SqlGroup.id == SqlUserGroup.group_id)
        .where(SqlUser.username == sqlalchemy.bindparam("username"))
    )


def token_row(store: Any, username: str, prefix: str) -> Any:
    """(id, token_hash, expires_at, last_used_at) of `username`'s token with `prefix`, as the plugin's lookup
    finds it (the prefix is unique); None: no such token (or user)."""
    rows = _read(store, token_row_query(), {"username": username, "prefix": prefix})
    return rows[0] if rows else None


def profile_facts_now(store: Any, username: str) -> ProfileFacts | None:
    """The facts of `username`'s profile in the database now, in one statement; None: no such user."""
    rows = _read(store, profile_facts_query(), {"username": username})
    if not rows:
        return None
    groups = frozenset((row[8], row[9]) for row in rows if row[8] is not None)
    return (*tuple(rows[0][:8]), groups)


def profile_facts_of(user: Any) -> ProfileFacts:
    """The same facts, of a `User` the plugin built."""
    groups = frozenset((group.id, group.group_name) for group in user.groups or [])
    return (
        user.id, user.username, user.display_name, user.is_admin, user.is_service_account, user.active,
        user.managed_by, user.service_account_source, groups,
    )  # fmt: skip


def _copy_of(user: Any) -> Any:
    """A `User` of its own for each caller (the entity has setters and lists a caller could change); its groups
    are shared, as `Group` has no setters."""
    clone = copy.copy(user)
    clone.__dict__ = {name: list(value) if isinstance(value, list) else value for name, value in vars(user).items()}
    return clone


def revalidated_authenticate(authenticate: Callable[[Any, str, str], bool]) -> Callable[[Any, str, str], bool]:
    """`SqlAlchemyStore.authenticate_user`, answering a remembered token after one read of its row."""
    from mlflow_oidc_auth.repository.user import normalize_username
    from mlflow_oidc_auth.repository.user_token import LAST_USED_RESOLUTION_SECONDS, parse_prefix
    from werkzeug.security import check_password_hash

    def authenticate_revalidated(store: Any, username: str, password: str) -> bool:
        prefix = parse_prefix(password) if isinstance(username, str) else None
        if prefix is None:  # not a token of today's format (or no username): the plugin alone decides
            return authenticate(store, username, password)
        memory, name = _memory(store), normalize_username(username)
        key = memory.token_key(name, password)
        remembered = memory.tokens.get(key)
        try:
            row = token_row(store, name, prefix)
        except RecheckFailedError:
            row, remembered = None, None
        if remembered is not None and row is not None:
            row_id, token_hash, expires_at, last_used_at = row
            now = _now()
            if (
                (row_id, token_hash) == (remembered.row_id, remembered.token_hash)
                and expires_at > now
                and last_used_at is not None
                and (now - last_used_at).total_seconds() < LAST_USED_RESOLUTION_SECONDS
            ):
                return True
        memory.forget(memory.tokens, key)
        accepted = authenticate(store, username, password)
        # Remembered only as the row read before the plugin's check, and only if the secret verifies against
        # that very hash: a token replaced in between is never remembered against the new row.
        if accepted and row is not None and check_password_hash(row[1], password):
            memory.remember(memory.tokens, key, RememberedToken(int(row[0]), str(row[1])))
        return accepted

    authenticate_revalidated.revalidated = True  # type: ignore[attr-defined]
    return authenticate_revalidated


def revalidated_profile(get_profile: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    """`SqlAlchemyStore.get_user_profile`, answering the remembered `User` while its facts are unchanged."""
    from mlflow_oidc_auth.repository.user import normalize_username

    def get_profile_revalidated(store: Any, username: str) -> Any:
        memory, name = _memory(store), normalize_username(username)
        remembered = memory.profiles.get(name)
        if remembered is not None:
            try:
                unchanged = profile_facts_now(store, name) == remembered[0]
            except RecheckFailedError:
                unchanged = False
            if unchanged:
                return _copy_of(remembered[1])
            memory.forget(memory.profiles, name)
        user = get_profile(store, username)  # raises for a deleted user, as before
        memory.remember(memory.profiles, name, (profile_facts_of(user), _copy_of(user)))
        return user

    get_profile_revalidated.revalidated = True  # type: ignore[attr-defined]
    return get_profile_revalidated


def install_revalidated_accounts(store_class: Any) -> None:
    """Wrap the plugin's store class's token check and profile read (once per process)."""
    if not getattr(store_class.authenticate_user, "revalidated", False):
        store_class.authenticate_user = revalidated_authenticate(store_class.authenticate_user)
    if not getattr(store_class.get_user_profile, "revalidated", False):
        store_class.get_user_profile = revalidated_profile(store_class.get_user_profile)
