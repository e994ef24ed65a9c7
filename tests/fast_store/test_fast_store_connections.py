"""The fast path's connections: checked out of MLflow's pool without a ping, replaced when the server dropped them.

The fast store skips the pool's `SELECT 1` and psycopg2's `BEGIN` round trip (fast_store.py); these tests hold
what that must not cost: a terminated backend loses no write and answers as before, a dead connection is
replaced instead of going back to the pool, and MLflow's sessions still ping and never get a connection in the
fast path's session state (autocommit, an open transaction).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import pytest
import sqlalchemy
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from tests.fast_store.conftest import fresh_database
from tests.support.waiting import wait_until

FALLBACKS = ("log_batch", "set_tag", "update_run_info", "log_param", "create_run")


@pytest.fixture
def store(migrated_server: tuple[str, str], tmp_path: Path) -> Iterator[Any]:
    from mlflow_stack_server.fast_store import FastSqlAlchemyStore

    fast = FastSqlAlchemyStore(fresh_database(migrated_server), tmp_path.as_uri())
    yield fast
    fast.engine.dispose()


@pytest.fixture
def admin(store: Any) -> Iterator[sqlalchemy.engine.Engine]:
    """An autocommit engine on the store's database, outside its pool."""
    engine = sqlalchemy.create_engine(store.engine.url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def fallbacks(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often each write was handed to MLflow's own method."""
    calls = dict.fromkeys(FALLBACKS, 0)
    for name in FALLBACKS:
        real = getattr(SqlAlchemyStore, name)

        def counted(*args: Any, _real: Callable[..., Any] = real, _name: str = name, **kwargs: Any) -> Any:
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(SqlAlchemyStore, name, counted)
    return calls


def _store_backends(admin: sqlalchemy.engine.Engine) -> set[int]:
    with admin.connect() as connection:
        rows = connection.execute(
            sqlalchemy.text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        return {row[0] for row in rows}


def _terminate(admin: sqlalchemy.engine.Engine, pids: set[int]) -> None:
    with admin.connect() as connection:
        for pid in pids:
            connection.execute(sqlalchemy.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    # Gone from pg_stat_activity: the backends have exited and closed their sockets.
    wait_until(lambda: not pids & _store_backends(admin), 10, f"backends {pids} did not exit within 10 s")


def _new_run(store: Any) -> str:
    experiment_id = store.create_experiment("connections")
    return str(store.create_run(experiment_id, "user", 0, [], "run").info.run_id)


def _writes(store: Any, run_id: str, step: int) -> None:
    store.log_batch(run_id, [Metric("loss", 1.0 / step, step, step)], [Param(f"p{step}", "v")], [])
    store.set_tag(run_id, RunTag("epoch", str(step)))
    store.update_run_info(run_id, RunStatus.RUNNING, None, None)


def test_terminated_backends_are_replaced_before_the_next_fast_writes(
    store: Any, admin: sqlalchemy.engine.Engine, fallbacks: dict[str, int]
) -> None:
    run_id = _new_run(store)
    _writes(store, run_id, 1)
    before = _store_backends(admin)
    assert before
    _terminate(admin, before)
    for step in (2, 3, 4):
        _writes(store, run_id, step)
    # Replaced on checkout, before use: no write failed over to MLflow's method.
    assert fallbacks == dict.fromkeys(FALLBACKS, 0)
    after = _store_backends(admin)
    assert after and not after & before
    run = store.get_run(run_id)
    assert run.data.metrics == {"loss": 0.25} and run.data.tags["epoch"] == "4"
    assert {"p1", "p2", "p3", "p4"} <= set(run.data.params)
    assert [m.step for m in store.get_metric_history(run_id, "loss")] == [1, 2, 3, 4]


def test_mlflows_sessions_still_ping_after_terminated_backends(
    store: Any, admin: sqlalchemy.engine.Engine, fallbacks: dict[str, int]
) -> None:
    run_id = _new_run(store)
    _writes(store, run_id, 1)
    _terminate(admin, _store_backends(admin))
    # MLflow's own methods (ORM sessions) first: each checkout pings and replaces the dead connections.
    assert store.get_run(run_id).data.metrics == {"loss": 1.0}
    store.set_tag(run_id, RunTag("mlflow.runName", "renamed"))  # always MLflow's method
    assert fallbacks["set_tag"] == 1
    assert store.get_run(run_id).info.run_name == "renamed"


def test_a_backend_lost_mid_transaction_hands_the_call_to_mlflow_and_the_connection_is_dropped(
    store: Any, admin: sqlalchemy.engine.Engine, fallbacks: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = _new_run(store)
    real = psycopg2.extras.execute_values
    killed: list[int] = []

    def kill_own_backend_first(cursor: Any, *args: Any, **kwargs: Any) -> Any:
        if not killed:
            killed.append(cursor.connection.get_backend_pid())
            _terminate(admin, set(killed))
        return real(cursor, *args, **kwargs)

    monkeypatch.setattr(psycopg2.extras, "execute_values", kill_own_backend_first)
    store.log_batch(run_id, [Metric("loss", 0.5, 1, 1)], [], [])
    assert fallbacks["log_batch"] == 1  # the fast path failed; MLflow's method wrote the metric
    assert killed[0] not in _store_backends(admin)
    store.log_batch(run_id, [Metric("loss", 0.25, 2, 2)], [], [])
    assert fallbacks["log_batch"] == 1  # the dead connection did not go back to the pool to fail again
    assert [m.value for m in store.get_metric_history(run_id, "loss")] == [0.5, 0.25]


def test_connections_go_back_to_the_pool_as_mlflow_expects_them(store: Any, fallbacks: dict[str, int]) -> None:
    states: list[tuple[bool, int]] = []

    def on_checkin(dbapi_connection: Any, _record: Any) -> None:
        if dbapi_connection is not None:
            states.append((dbapi_connection.autocommit, dbapi_connection.info.transaction_status))

    sqlalchemy.event.listen(store.engine, "checkin", on_checkin)
    run_id = _new_run(store)
    store.log_batch(run_id, [Metric("loss", 0.5, 1, 1)], [Param("lr", "0.1")], [RunTag("t", "1")])
    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        store.log_batch(run_id, [], [Param("lr", "0.2")], [])  # rolled back on the fast path, then MLflow's error
    with pytest.raises(MlflowException):
        store.set_tag(run_id, RunTag("t", "nul\x00"))  # refused by the driver before it is sent
    store.update_run_info(run_id, RunStatus.FINISHED, 5, None)
    assert fallbacks["log_batch"] == 1 and fallbacks["set_tag"] == 1
    assert states and set(states) == {(False, psycopg2.extensions.TRANSACTION_STATUS_IDLE)}
    assert store.get_run(run_id).info.status == "FINISHED"


def test_connections_on_descriptors_past_1024_are_checked_too(
    store: Any, admin: sqlalchemy.engine.Engine, fallbacks: dict[str, int]
) -> None:
    # A worker with many client connections holds sockets past select()'s FD_SETSIZE (1024); the check on
    # checkout must work there too.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        if hard != resource.RLIM_INFINITY and hard < 1200:
            pytest.skip(f"this process may open at most {hard} files; the test needs 1200")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1200, hard))
    store.engine.dispose()  # its connections' descriptors freed, so the next ones come after the held ones
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        run_id = _new_run(store)
        _writes(store, run_id, 1)
        _terminate(admin, _store_backends(admin))
        _writes(store, run_id, 2)
        assert fallbacks == dict.fromkeys(FALLBACKS, 0)
        assert [m.step for m in store.get_metric_history(run_id, "loss")] == [1, 2]
    finally:
        for descriptor in held:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
