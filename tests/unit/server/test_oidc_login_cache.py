"""mlflow-oidc-auth's token check and profile read, remembered and re-checked on every hit (oidc_login_cache.py):
an unchanged token is not verified again by the plugin and an unchanged profile is not rebuilt, while a revoked,
replaced or expired token, a deleted or deactivated user and a changed group membership count at the very next
call, even when the change was made through another worker (here: another store on the same database)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from mlflow_stack_server import oidc_login_cache
from mlflow_stack_server.oidc_login_cache import CACHE_ATTRIBUTE, install_revalidated_accounts

# The plugin reads its configuration at import: from this environment only.
os.environ.setdefault("CONFIG_PROVIDERS", "env")
os.environ.setdefault("SECRET_KEY", "unit-test-key")

from mlflow.exceptions import MlflowException
from mlflow_oidc_auth.repository import user as user_repository
from mlflow_oidc_auth.repository import user_token as user_token_repository
from mlflow_oidc_auth.sqlalchemy_store import SqlAlchemyStore

USER = "alice@example.com"


def _naive_now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass
class Worker:
    """This worker's plugin store (the plugin's own hash checks and profile builds counted) and another
    worker's, on the same database."""

    store: SqlAlchemyStore
    other_worker: SqlAlchemyStore
    token: str
    hash_checks: list[str] = field(default_factory=list)
    profile_builds: list[str] = field(default_factory=list)

    def login(self, token: str | None = None) -> bool:
        return bool(self.store.authenticate_user(USER, self.token if token is None else token))

    def execute(self, statement: str, **parameters: Any) -> None:
        with self.other_worker.engine.begin() as connection:
            connection.execute(sqlalchemy.text(statement), parameters)


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("oidc") / "users.db"
    store = SqlAlchemyStore()
    store.init_db(f"sqlite:///{path}")  # the plugin's migrations once; each test gets a copy
    store.engine.dispose()
    return path


@pytest.fixture
def worker(migrated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Worker]:
    database = f"sqlite:///{shutil.copy(migrated, tmp_path / 'users.db')}"
    # Restored after each test: install_revalidated_accounts replaces them on the class.
    monkeypatch.setattr(SqlAlchemyStore, "authenticate_user", SqlAlchemyStore.authenticate_user)
    monkeypatch.setattr(SqlAlchemyStore, "get_user_profile", SqlAlchemyStore.get_user_profile)
    worker = Worker(SqlAlchemyStore(), SqlAlchemyStore(), token="")
    check_password_hash = user_token_repository.check_password_hash
    get_profile = user_repository.UserRepository.get_profile

    def counted_check(hashed: str, plaintext: str) -> bool:
        worker.hash_checks.append(plaintext)
        return check_password_hash(hashed, plaintext)

    def counted_profile(repository: Any, username: str) -> Any:
        worker.profile_builds.append(username)
        return get_profile(repository, username)

    monkeypatch.setattr(user_token_repository, "check_password_hash", counted_check)
    monkeypatch.setattr(user_repository.UserRepository, "get_profile", counted_profile)
    install_revalidated_accounts(SqlAlchemyStore)
    worker.store.init_db(database)
    worker.other_worker.init_db(database)
    other = worker.other_worker
    other.create_user(USER, USER, is_admin=False, is_service_account=False)
    worker.token = str(other.create_user_token(USER, "laptop", _naive_now() + timedelta(days=1), USER)[1])
    yield worker
    for store in (worker.store, worker.other_worker):
        store.engine.dispose()
        memory = store.__dict__.get(CACHE_ATTRIBUTE)
        if memory is not None and memory.engine is not None:
            memory.engine.dispose()


def test_an_unchanged_token_is_checked_by_the_plugin_once(worker: Worker) -> None:
    assert [worker.login() for _ in range(5)] == [True] * 5
    assert len(worker.hash_checks) == 1


def test_a_revoked_token_is_refused_at_the_next_call(worker: Worker) -> None:
    assert worker.login() and worker.login()
    worker.other_worker.delete_user_tokens(USER)
    assert not worker.login()
    assert not worker.login()  # and it is not remembered as refused or accepted: the plugin answers again


def test_a_replaced_token_is_refused_and_its_successor_accepted(worker: Worker) -> None:
    assert worker.login()
    successor = worker.other_worker.replace_user_token(USER, "laptop", _naive_now() + timedelta(days=1), USER)[1]
    assert not worker.login()
    assert worker.login(str(successor))


def test_an_expired_token_is_refused_at_the_next_call(worker: Worker) -> None:
    assert worker.login() and worker.login()
    worker.execute("UPDATE user_tokens SET expires_at = :past", past=_naive_now() - timedelta(seconds=1))
    assert not worker.login()


def test_a_deleted_user_is_refused_at_the_next_call(worker: Worker) -> None:
    assert worker.login()
    assert worker.store.get_user_profile(USER).active
    worker.other_worker.delete_user(USER, admin_override=True)
    assert not worker.login()
    with pytest.raises(MlflowException, match="not found"):
        worker.store.get_user_profile(USER)


def test_a_wrong_secret_with_a_known_prefix_is_refused(worker: Worker) -> None:
    assert worker.login()
    assert not worker.login(worker.token + "x")
    assert not worker.login(worker.token[:-1])
    assert worker.login()


def test_a_due_last_used_at_is_left_to_the_plugin(worker: Worker) -> None:
    """The plugin refreshes `last_used_at` at most once a LAST_USED_RESOLUTION_SECONDS: when it is due, the
    plugin is asked (and verifies and writes) instead of the memory answering."""
    assert worker.login() and worker.login()
    old = _naive_now() - timedelta(seconds=user_token_repository.LAST_USED_RESOLUTION_SECONDS + 5)
    worker.execute("UPDATE user_tokens SET last_used_at = :old", old=old)
    assert worker.login()
    assert len(worker.hash_checks) == 2
    (record,) = worker.other_worker.list_user_tokens(USER)
    assert record.last_used_at is not None and record.last_used_at > old
    assert worker.login()
    assert len(worker.hash_checks) == 2


def test_an_unreadable_database_leaves_the_decision_to_the_plugin(
    worker: Worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert worker.login()
    worker.store.get_user_profile(USER)
    memory = worker.store.__dict__[CACHE_ATTRIBUTE]
    monkeypatch.setattr(memory, "engine", sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}"))
    assert worker.login()
    assert len(worker.hash_checks) == 2  # asked the plugin
    worker.other_worker.delete_user_tokens(USER)
    assert not worker.login()
    builds = len(worker.profile_builds)
    assert worker.store.get_user_profile(USER).username == USER
    assert len(worker.profile_builds) == builds + 1


def test_an_unchanged_profile_is_built_by_the_plugin_once(worker: Worker) -> None:
    first = worker.store.get_user_profile(USER)
    again = worker.store.get_user_profile(USER.upper())  # the plugin folds usernames; so does the memory
    assert len(worker.profile_builds) == 1
    assert oidc_login_cache.profile_facts_of(again) == oidc_login_cache.profile_facts_of(first)
    again.groups.append("changed by a caller")
    assert "changed by a caller" not in worker.store.get_user_profile(USER).groups


def test_a_deactivated_user_is_seen_at_the_next_call(worker: Worker) -> None:
    assert worker.store.get_user_profile(USER).active
    worker.other_worker.update_user(USER, active=False)
    assert not worker.store.get_user_profile(USER).active
    worker.other_worker.update_user(USER, active=True)
    assert worker.store.get_user_profile(USER).active


def test_a_changed_group_membership_or_admin_flag_is_seen_at_the_next_call(worker: Worker) -> None:
    def groups() -> set[str]:
        return {group.group_name for group in worker.store.get_user_profile(USER).groups}

    assert groups() == set()
    worker.other_worker.populate_groups(["trainers", "viewers"])
    worker.other_worker.add_user_to_group(USER, "trainers")
    assert groups() == {"trainers"}
    worker.other_worker.add_user_to_group(USER, "viewers")
    assert groups() == {"trainers", "viewers"}
    worker.other_worker.remove_user_from_group(USER, "trainers", admin_override=True)
    assert groups() == {"viewers"}
    worker.other_worker.update_user(USER, is_admin=True)
    assert worker.store.get_user_profile(USER).is_admin


def test_the_memory_is_bounded(worker: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oidc_login_cache, "MEMORY_ENTRIES", 2)
    memory = worker.store.__dict__.setdefault(CACHE_ATTRIBUTE, oidc_login_cache.AccountMemory())
    for index in range(5):
        memory.remember(memory.profiles, f"user-{index}", index)
    assert list(memory.profiles) == ["user-3", "user-4"]
