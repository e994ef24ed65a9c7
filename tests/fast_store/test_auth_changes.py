"""The auth database's change notifications (auth_changes.py) on a real Postgres: the triggers prepare installs, and
a worker's ChangeListener that counts every change made by another process within milliseconds, and that is not
listening (generation None: no remembered allowance used) while its connection is lost or a table lacks a trigger."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

from mlflow_stack_server import auth_changes
from mlflow_stack_server.entrypoint import notify_auth_changes
from tests.fast_store.conftest import create_database
from tests.support.waiting import wait_until

NOTIFIED_SECONDS = 0.1  # a change counts in every listening worker within this, on an idle machine


def migrated_auth_database(server: str) -> str:
    """A new database with MLflow's auth schema (as the auth app's start migrates it) and, as prepare leaves it,
    the change triggers; its URI."""
    uri = create_database(server)
    store = SqlAlchemyStore()
    store.init_db(uri)
    store.engine.dispose()
    notify_auth_changes(uri)
    return uri


@pytest.fixture
def auth_database(postgres_server: str) -> str:
    return migrated_auth_database(postgres_server)


@pytest.fixture
def other_server(auth_database: str) -> Iterator[SqlAlchemyStore]:
    """MLflow's auth store in this process: another server writing users and grants to the same database."""
    store = SqlAlchemyStore()
    store.init_db(auth_database)
    yield store
    store.engine.dispose()


def _listening(uri: str, logged: list[str] | None = None) -> auth_changes.ChangeListener:
    sink = logged if logged is not None else []
    return auth_changes.ChangeListener(auth_changes.psycopg2_connector(uri), sink.append).start()


def _wait_listening(listener: auth_changes.ChangeListener, seconds: float = 10) -> int:
    wait_until(lambda: listener.generation() is not None, seconds, "the listener did not start listening")
    generation = listener.generation()
    assert generation is not None
    return generation


def _assert_counted(listener: auth_changes.ChangeListener, change: Callable[[], object], what: str) -> None:
    """`change` moves the listening listener's generation on within 5 s."""
    generation = _wait_listening(listener)
    change()
    wait_until(lambda: listener.generation() not in (generation, None), 5, f"{what}: not counted", interval=0.01)


def _triggers(uri: str) -> dict[str, int]:
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sqlalchemy.text(
                    "SELECT c.relname, count(t.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "LEFT JOIN pg_trigger t ON t.tgrelid = c.oid AND t.tgname = :trigger "
                    "WHERE n.nspname = current_schema() AND c.relkind = 'r' GROUP BY c.relname"
                ),
                {"trigger": auth_changes.TRIGGER},
            )
            return {str(name): int(count) for name, count in rows}
    finally:
        engine.dispose()


def test_every_table_but_alembics_gets_one_trigger_however_often_prepare_runs(auth_database: str) -> None:
    notify_auth_changes(auth_database)  # the next prepare
    triggers = _triggers(auth_database)
    watched = {table: count for table, count in triggers.items() if not table.startswith("alembic_version")}
    assert {"users", "experiment_permissions", "registered_model_permissions"} <= set(watched), triggers
    assert set(watched.values()) == {1}, triggers
    assert all(count == 0 for table, count in triggers.items() if table not in watched), triggers


def _changes(store: SqlAlchemyStore) -> list[tuple[str, Any]]:
    return [
        ("user created", lambda: store.create_user("alice", "password-number-1")),
        ("grant given", lambda: store.create_experiment_permission("1", "alice", "EDIT")),
        ("grant lowered", lambda: store.update_experiment_permission("1", "alice", "READ")),
        ("grant removed", lambda: store.delete_experiment_permission("1", "alice")),
        ("promoted", lambda: store.update_user("alice", is_admin=True)),
        ("demoted", lambda: store.update_user("alice", is_admin=False)),
        ("password changed", lambda: store.update_user("alice", password="password-number-2")),
        ("user deleted", lambda: store.delete_user("alice")),
    ]


def test_a_change_made_by_another_server_is_counted_within_milliseconds(
    auth_database: str, other_server: SqlAlchemyStore
) -> None:
    listener = _listening(auth_database)
    try:
        generation = _wait_listening(listener)
        delays = {}
        for change, make in _changes(other_server):
            make()
            changed = time.monotonic()
            counted = generation

            def moved_on(counted: int = counted) -> bool:
                return listener.generation() not in (counted, None)

            wait_until(moved_on, 5, f"{change}: not counted", interval=0.001)
            delays[change] = time.monotonic() - changed
            generation = listener.generation()  # type: ignore[assignment]
        print({change: f"{1000 * delay:.1f} ms" for change, delay in delays.items()})
        assert all(delay < NOTIFIED_SECONDS for delay in delays.values()), delays
        time.sleep(3 * auth_changes.HEARTBEAT_SECONDS)
        assert listener.generation() == generation  # heartbeats are not changes
    finally:
        listener.stop()


def _terminate_listeners(uri: str) -> int:
    """Ends the database sessions of the listeners (as a Postgres restart or a network cut would)."""
    engine = sqlalchemy.create_engine(uri, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(
                    sqlalchemy.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE '%pg_notify%'"
                    )
                ).scalar_one()
            )
    finally:
        engine.dispose()


def test_a_lost_connection_stops_the_memory_until_listening_again_with_a_new_generation(
    auth_database: str, other_server: SqlAlchemyStore
) -> None:
    logged: list[str] = []
    listener = _listening(auth_database, logged)
    try:
        before = _wait_listening(listener)
        assert _terminate_listeners(auth_database) == 1
        wait_until(lambda: listener.generation() is None, 2, "still listening after its session ended", interval=0.01)
        other_server.create_user("made-while-nobody-listened", "a-long-password")  # its notification is lost
        after = _wait_listening(listener)
        assert after != before  # nothing remembered before the loss counts
        assert any("not listening" in line for line in logged), logged
    finally:
        listener.stop()


def test_without_a_trigger_on_every_table_nothing_is_listened_to(auth_database: str) -> None:
    engine = sqlalchemy.create_engine(auth_database)
    with engine.begin() as connection:
        connection.execute(sqlalchemy.text(f"DROP TRIGGER {auth_changes.TRIGGER} ON experiment_permissions"))
    engine.dispose()
    logged: list[str] = []
    listener = _listening(auth_database, logged)
    try:
        wait_until(lambda: any("experiment_permissions" in line for line in logged), 10, "no refusal logged")
        assert listener.generation() is None
        notify_auth_changes(auth_database)  # prepare runs
        _wait_listening(listener, seconds=15)
    finally:
        listener.stop()


def test_a_hung_listener_is_not_listening_after_the_liveness_bound(auth_database: str) -> None:
    """Heartbeats that stop coming back (a hung connection) close the gate within LIVENESS_SECONDS, although the
    listener never saw an error."""
    clock = [100.0]
    listener = auth_changes.ChangeListener(
        auth_changes.psycopg2_connector(auth_database), print, clock=lambda: clock[0]
    ).start()
    try:
        _wait_listening(listener)
        listener._heartbeat = 3600.0  # no further heartbeat is sent
        time.sleep(0.5)
        clock[0] += auth_changes.LIVENESS_SECONDS + 1
        assert listener.generation() is None
    finally:
        listener.stop()


def test_the_role_that_migrated_the_auth_database_installs_the_triggers_without_superuser(
    postgres_server: str,
) -> None:
    """As with a managed Postgres: the server's role is no superuser, owns the auth database (MLFLOW_AUTH_DATABASE_URI
    made by an operator with OWNER, or created by prepare with CREATEDB) and so the tables its migrations create;
    that is all the triggers need."""
    role, password = f"owner_{secrets.token_hex(4)}", secrets.token_hex(12)
    database = f"auth_{secrets.token_hex(4)}"
    admin = sqlalchemy.create_engine(postgres_server + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE ROLE {role} LOGIN NOSUPERUSER PASSWORD '{password}'"))
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {database} OWNER {role}"))
    admin.dispose()
    host = postgres_server.rsplit("@", 1)[1]
    uri = f"postgresql+psycopg2://{role}:{password}@{host}/{database}"
    store = SqlAlchemyStore()
    store.init_db(uri)
    notify_auth_changes(uri)
    watched = {table: count for table, count in _triggers(uri).items() if not table.startswith("alembic_version")}
    assert "users" in watched and set(watched.values()) == {1}, watched
    listener = _listening(uri)
    try:
        _assert_counted(listener, lambda: store.create_user("bob", "a-long-password"), "user created")
    finally:
        listener.stop()
        store.engine.dispose()


# --- prepare installs only what is missing or different ---------------------------------------------------------


def _installed(uri: str) -> dict[str, tuple[int, int]]:
    """{table: (trigger OID, the trigger row's xmin)} and {"(function)": (OID, xmin)}: a re-created or altered
    trigger or function changes them."""
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.connect() as connection:
            triggers = connection.execute(
                sqlalchemy.text(
                    "SELECT c.relname, t.oid, t.xmin::text::bigint FROM pg_trigger t JOIN pg_class c "
                    "ON c.oid = t.tgrelid WHERE t.tgname = :trigger"
                ),
                {"trigger": auth_changes.TRIGGER},
            ).all()
            function = connection.execute(
                sqlalchemy.text("SELECT oid, xmin::text::bigint FROM pg_proc WHERE proname = :function"),
                {"function": auth_changes.FUNCTION},
            ).one()
    finally:
        engine.dispose()
    return {str(table): (int(oid), int(xmin)) for table, oid, xmin in triggers} | {
        "(function)": (int(function[0]), int(function[1]))
    }


def _run(uri: str, *statements: str) -> None:
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.execute(sqlalchemy.text(statement))
    finally:
        engine.dispose()


def test_a_second_prepare_changes_no_trigger_and_no_function(auth_database: str) -> None:
    before = _installed(auth_database)
    assert "users" in before and "experiment_permissions" in before, before
    notify_auth_changes(auth_database)
    notify_auth_changes(auth_database)
    assert _installed(auth_database) == before


def test_a_dropped_or_different_trigger_is_installed_again_and_only_that_one(
    auth_database: str, other_server: SqlAlchemyStore
) -> None:
    before = _installed(auth_database)
    trigger = auth_changes.TRIGGER
    _run(
        auth_database,
        f"DROP TRIGGER {trigger} ON experiment_permissions",
        f"ALTER TABLE registered_model_permissions DISABLE TRIGGER {trigger}",
        f"DROP TRIGGER {trigger} ON users",
        # Same name, another trigger: per row, and on INSERT only.
        f"CREATE TRIGGER {trigger} AFTER INSERT ON users FOR EACH ROW EXECUTE FUNCTION {auth_changes.FUNCTION}()",
    )
    notify_auth_changes(auth_database)
    after = _installed(auth_database)
    changed = {table for table in before if after.get(table) != before[table]}
    assert changed == {"experiment_permissions", "registered_model_permissions", "users"}, (before, after)
    assert set(after) == set(before)
    notify_auth_changes(auth_database)
    assert _installed(auth_database) == after
    # Installed as before: every kind of change, by statement, is notified.
    listener = _listening(auth_database)
    try:
        _assert_counted(listener, lambda: other_server.create_user("carol", "a-long-password"), "user created")
        _assert_counted(
            listener, lambda: other_server.create_experiment_permission("1", "carol", "EDIT"), "grant given"
        )
        _assert_counted(listener, lambda: _run(auth_database, "TRUNCATE registered_model_permissions"), "truncate")
    finally:
        listener.stop()


def test_a_changed_function_is_replaced_in_place(auth_database: str) -> None:
    before = _installed(auth_database)
    _run(
        auth_database,
        f"CREATE OR REPLACE FUNCTION {auth_changes.FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN RETURN NULL; END $$",
    )
    silent = _installed(auth_database)
    notify_auth_changes(auth_database)
    after = _installed(auth_database)
    assert after["(function)"][0] == before["(function)"][0] and after["(function)"] != silent["(function)"]
    assert {table: ids for table, ids in after.items() if table != "(function)"} == {
        table: ids for table, ids in before.items() if table != "(function)"
    }
    listener = _listening(auth_database)
    try:
        _assert_counted(listener, lambda: _run(auth_database, "DELETE FROM users WHERE username = 'nobody'"), "delete")
    finally:
        listener.stop()


def test_a_table_added_later_gets_the_trigger(auth_database: str) -> None:
    before = _installed(auth_database)
    _run(auth_database, "CREATE TABLE added_by_a_later_migration (id integer)")
    tables = auth_changes.prepare_change_notifications(auth_database)
    assert "added_by_a_later_migration" in tables
    after = _installed(auth_database)
    assert set(after) - set(before) == {"added_by_a_later_migration"}
    assert {table: after[table] for table in before} == before
    listener = _listening(auth_database)
    try:
        _assert_counted(
            listener, lambda: _run(auth_database, "INSERT INTO added_by_a_later_migration VALUES (1)"), "insert"
        )
    finally:
        listener.stop()


def test_two_installs_at_once_both_succeed_with_one_trigger_per_table(postgres_server: str) -> None:
    """Two prepares racing on a database without triggers (stacks sharing an auth database do not share the
    migration lock, which lives in each tracking database): the second waits for the first, then finds nothing to
    do."""
    uri = create_database(postgres_server)
    store = SqlAlchemyStore()
    store.init_db(uri)
    store.engine.dispose()
    first_engine, second_engine = sqlalchemy.create_engine(uri), sqlalchemy.create_engine(uri)
    outcome: list[object] = []
    try:
        with first_engine.begin() as first:
            auth_changes.install_change_triggers(first)
            # The first has installed, not committed yet: the second starts now.
            racing = threading.Thread(target=lambda: outcome.append(_install(second_engine)), daemon=True)
            racing.start()
            time.sleep(1)
            assert not outcome, "the second install did not wait for the first"
            assert set(_triggers(uri).values()) == {0}  # from outside: nothing is visible yet
        racing.join(timeout=30)
        assert outcome and not isinstance(outcome[0], BaseException), outcome
        watched = {table: count for table, count in _triggers(uri).items() if not table.startswith("alembic_version")}
        assert "users" in watched and set(watched.values()) == {1}, watched
    finally:
        first_engine.dispose()
        second_engine.dispose()


def _install(engine: sqlalchemy.engine.Engine) -> object:
    try:
        with engine.begin() as connection:
            return auth_changes.install_change_triggers(connection)
    except Exception as error:  # reported to the test's thread
        return error


@pytest.fixture
def oidc_database(postgres_server: str) -> Iterator[tuple[str, Any]]:
    """mlflow-oidc-auth's database (migrated by its store) with the triggers prepare installs there; (URI, the
    plugin's store writing to it, as another server or the plugin's admin API would)."""
    import os

    os.environ.setdefault("CONFIG_PROVIDERS", "env")  # the plugin reads its configuration at import
    os.environ.setdefault("SECRET_KEY", secrets.token_hex(16))
    from mlflow_oidc_auth.sqlalchemy_store import SqlAlchemyStore as PluginStore

    uri = create_database(postgres_server)
    store = PluginStore()
    store.init_db(uri)
    notify_auth_changes(uri, auth_changes.OIDC_UNWATCHED_COLUMNS)
    yield uri, store
    store.engine.dispose()


def test_the_plugins_changes_are_counted_but_a_tokens_last_use_is_not(oidc_database: tuple[str, Any]) -> None:
    """Every change of mlflow-oidc-auth's users, tokens, groups and grants moves the generation on (and the time it
    was counted at); the plugin's own refresh of a token's last_used_at, alone, does not."""
    from datetime import UTC, datetime, timedelta

    uri, store = oidc_database
    engine = sqlalchemy.create_engine(uri, isolation_level="AUTOCOMMIT")
    listener = _listening(uri)

    def sql(statement: str) -> Any:
        def run() -> None:
            with engine.connect() as connection:
                connection.execute(sqlalchemy.text(statement))

        return run

    expires = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=1)
    changes = [
        ("user created", lambda: store.create_user("alice", "alice", is_admin=False, is_service_account=False)),
        ("token issued", lambda: store.create_user_token("alice", "t", expires, "test")),
        ("token's expiry changed", sql("UPDATE user_tokens SET expires_at = expires_at - interval '1 hour'")),
        ("token's expiry and last use changed", sql("UPDATE user_tokens SET expires_at = expires_at, last_used_at = now()")),
        ("grant given", lambda: store.create_experiment_permission("1", "alice", "EDIT")),
        ("grant removed", lambda: store.delete_experiment_permission("1", "alice")),
        ("group membership", lambda: store.set_user_groups("alice", ["team"])),
        ("deactivated", lambda: store.update_user("alice", active=False)),
        ("token revoked", lambda: store.delete_user_tokens("alice")),
    ]  # fmt: skip
    try:
        store.populate_groups(["team"])
        generation = _wait_listening(listener)
        for change, make in changes:
            make()
            counted = generation

            def moved_on(counted: int = counted) -> bool:
                return listener.generation() not in (counted, None)

            wait_until(moved_on, 5, f"{change}: not counted", interval=0.001)
            now = listener.generation_since()
            assert now is not None and time.monotonic() - now[1] < 1, (change, now)
            generation = now[0]
        store.update_user("alice", active=True)
        store.create_user_token("alice", "t2", expires, "test")
        time.sleep(NOTIFIED_SECONDS)
        generation = _wait_listening(listener)
        sql("UPDATE user_tokens SET last_used_at = now()")()
        time.sleep(3 * auth_changes.HEARTBEAT_SECONDS)  # a heartbeat after the update has come back
        assert listener.generation() == generation
    finally:
        listener.stop()
        engine.dispose()


def test_a_second_install_on_the_plugins_database_changes_nothing_and_a_column_list_change_is_installed(
    oidc_database: tuple[str, Any],
) -> None:
    """The trigger with an UPDATE OF list (user_tokens) counts as installed when its columns are the ones asked for:
    a second prepare rewrites nothing; asking to watch every column re-creates that trigger only."""
    uri, _ = oidc_database
    before = _installed(uri)
    assert "user_tokens" in before, before
    notify_auth_changes(uri, auth_changes.OIDC_UNWATCHED_COLUMNS)
    assert _installed(uri) == before
    notify_auth_changes(uri)
    after = _installed(uri)
    assert {table for table in before if after[table] != before[table]} == {"user_tokens"}, (before, after)
