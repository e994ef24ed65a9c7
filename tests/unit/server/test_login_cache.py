"""MLflow's basic-auth login cache, re-checked against the auth database on every hit (login_cache.py, issue 19
item 3): a changed password, a demotion and a deleted user count at the next request even when the change was
made through another worker (here: another store on the same database, so MLflow's own per-worker invalidation
never runs), and an unchanged login is not hashed again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import flask
import mlflow.server.auth as mlflow_auth
import pytest
from cachetools import TTLCache
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

from mlflow_stack_server import login_cache
from mlflow_stack_server.login_cache import current_login_row, install_revalidated_logins

USER, PASSWORD, NEW_PASSWORD = "alice", "first-password-1", "second-password-2"


@dataclass
class Worker:
    """This worker's auth store (its password checks counted) and another worker's, on the same database."""

    store: SqlAlchemyStore
    other_worker: SqlAlchemyStore
    hashes: list[str] = field(default_factory=list)

    def login(self, password: str) -> Any:
        return mlflow_auth._authenticate_cached(USER, password)


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('auth') / 'auth.db'}"
    SqlAlchemyStore().init_db(uri)  # migrations once; each test then starts from a fresh user row
    return uri


def _worker(database: str, monkeypatch: pytest.MonkeyPatch, cache: TTLCache[Any, Any]) -> Worker:
    store, other = SqlAlchemyStore(), SqlAlchemyStore()
    store.init_db(database)
    other.init_db(database)
    for user in other.list_users():
        other.delete_user(user.username)
    other.create_user(USER, PASSWORD, is_admin=True)
    worker = Worker(store, other)
    verify = store.authenticate_user

    def counted(username: str, password: str, **kwargs: Any) -> bool:
        worker.hashes.append(username)
        return verify(username, password, **kwargs)

    monkeypatch.setattr(store, "authenticate_user", counted)
    monkeypatch.setattr(mlflow_auth, "store", store)
    monkeypatch.setattr(mlflow_auth, "_USER_AUTH_CACHE", cache)
    # Restored after each test: install_revalidated_logins replaces it.
    monkeypatch.setattr(mlflow_auth, "_authenticate_cached", mlflow_auth._authenticate_cached)
    return worker


@pytest.fixture
def worker(database: str, monkeypatch: pytest.MonkeyPatch) -> Worker:
    worker = _worker(database, monkeypatch, TTLCache(maxsize=100, ttl=3600))
    install_revalidated_logins(mlflow_auth)
    wrapped = mlflow_auth._authenticate_cached
    assert getattr(wrapped, "revalidated", False)
    install_revalidated_logins(mlflow_auth)  # a second app in the process: wrapped once, not twice
    assert mlflow_auth._authenticate_cached is wrapped
    return worker


def test_without_the_swap_another_workers_password_change_is_missed(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The problem this module solves, shown on MLflow's own cache: the old password keeps working.
    worker = _worker(database, monkeypatch, TTLCache(maxsize=100, ttl=3600))
    assert worker.login(PASSWORD) is not None
    worker.other_worker.update_user(USER, password=NEW_PASSWORD)
    assert worker.login(PASSWORD) is not None


def test_an_unchanged_login_is_hashed_once(worker: Worker) -> None:
    users = [worker.login(PASSWORD) for _ in range(5)]
    assert [(user.username, user.is_admin) for user in users] == [(USER, True)] * 5
    assert worker.hashes == [USER]


def test_a_password_changed_by_another_worker_counts_at_the_next_request(worker: Worker) -> None:
    assert worker.login(PASSWORD) is not None
    worker.other_worker.update_user(USER, password=NEW_PASSWORD)
    assert worker.login(PASSWORD) is None
    assert worker.login(NEW_PASSWORD) is not None
    assert worker.login(NEW_PASSWORD) is not None
    # first login, the refused old password, the new one once: a change costs one hash per login, then none.
    assert worker.hashes == [USER] * 3


def test_a_demotion_by_another_worker_counts_at_the_next_request(worker: Worker) -> None:
    assert worker.login(PASSWORD).is_admin
    worker.other_worker.update_user(USER, is_admin=False)
    assert not worker.login(PASSWORD).is_admin
    assert not worker.login(PASSWORD).is_admin
    assert worker.hashes == [USER] * 2


def test_a_user_deleted_by_another_worker_is_refused_at_the_next_request(worker: Worker) -> None:
    assert worker.login(PASSWORD) is not None
    worker.other_worker.delete_user(USER)
    assert worker.login(PASSWORD) is None


def test_a_user_deleted_and_made_again_with_the_same_password_is_verified_again(worker: Worker) -> None:
    assert worker.login(PASSWORD).is_admin
    worker.other_worker.delete_user(USER)
    worker.other_worker.create_user(USER, PASSWORD, is_admin=False)
    user = worker.login(PASSWORD)
    assert (user.is_admin, worker.hashes) == (False, [USER] * 2)


def test_the_row_is_checked_outside_mlflows_cache_lock(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    # Under the lock, a worker's threads would check their logins one at a time.
    held: list[bool] = []

    def watched(engine: Any, username: str) -> Any:
        held.append(mlflow_auth._USER_AUTH_CACHE_LOCK.locked())
        return current_login_row(engine, username)

    monkeypatch.setattr(login_cache, "current_login_row", watched)
    assert worker.login(PASSWORD) is not None  # verified (hashed) and remembered: no row read
    assert worker.login(PASSWORD) is not None
    assert worker.login(PASSWORD) is not None
    assert held == [False, False]


def test_with_the_cache_off_there_is_nothing_to_swap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mlflow_auth, "_USER_AUTH_CACHE", None)
    monkeypatch.setattr(mlflow_auth, "_authenticate_cached", mlflow_auth._authenticate_cached)
    install_revalidated_logins(mlflow_auth)
    assert not getattr(mlflow_auth._authenticate_cached, "revalidated", False)


def test_one_request_reads_the_users_row_once_and_the_next_request_again(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    read = login_cache.current_login_row

    def counted(engine: Any, username: str) -> Any:
        reads.append(username)
        return read(engine, username)

    monkeypatch.setattr(login_cache, "current_login_row", counted)
    assert worker.login(PASSWORD) is not None  # verified (hashed) and remembered: no row read
    app = flask.Flask(__name__)
    with app.test_request_context("/"):
        # MLflow checks one request's login up to three times (login, admin check, validator).
        assert all(worker.login(PASSWORD) is not None for _ in range(3))
    assert reads == [USER]
    with app.app_context():  # an application context (and its g) outliving several requests
        with app.test_request_context("/"):
            assert worker.login(PASSWORD) is not None
        worker.other_worker.update_user(USER, password=NEW_PASSWORD)
        with app.test_request_context("/"):
            assert worker.login(PASSWORD) is None  # the next request reads the row again
    assert reads == [USER] * 3
    assert worker.login(NEW_PASSWORD) is not None  # verified (hashed) and remembered: no row read
    assert worker.login(NEW_PASSWORD) is not None  # outside a Flask request (FastAPI routes): read at every hit
    assert worker.login(NEW_PASSWORD) is not None
    assert reads == [USER] * 5
