"""Change notifications of an auth database (Postgres: MLflow's basic-auth one, mlflow-oidc-auth's): every worker learns within milliseconds that a user,
a password, an admin flag, a grant or a role changed, so that the "allowed" decisions it remembers for the fast path
(fast_path_auth.remember_allowances, fast_path_oidc.TokenAllowances) can live long and still never outlast a change.

- `prepare` installs, on every table of the auth database but alembic's, a statement-level trigger that sends
  `NOTIFY mlflow_stack_auth_changed` (no payload: any change forgets everything) on INSERT, UPDATE, DELETE and
  TRUNCATE. Checked at every prepare, after MLflow's auth migrations: a table without it (a table a later
  migration adds, a trigger dropped by hand) or with a different one gets it, and the function is replaced only
  when its body differs; a table whose trigger is as it should be is not touched, so that a prepare takes no lock
  on the tables other replicas serve from. The notification is sent when the changing transaction commits, by
  whichever server (or psql) wrote it.
- Each worker runs a ChangeListener: a thread with a connection of its own that LISTENs, and counts a new
  generation at every notification. Remembered allowances carry the generation they were decided in and count only
  while it is the current one.
- The listener proves it is listening: every HEARTBEAT_SECONDS it notifies a channel of its own and waits for that
  notification to come back. Postgres delivers a database's notifications to each listener in commit order, so
  once its heartbeat is back every change committed before the heartbeat was sent has been counted. While the last
  heartbeat that came back was sent more than LIVENESS_SECONDS ago (not connected yet, connection lost or hung,
  LISTEN not reaching the database as behind a transaction-pooling proxy), `generation()` is None and nothing
  remembered is used: every write is decided by MLflow's auth app. A new connection starts a new generation.
- A connection whose database lacks the trigger on some table (a server started without this prepare) is not
  listening either: the listener retries, with backoff, until prepare has installed them.
"""

from __future__ import annotations

import contextlib
import secrets
import select
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import tenacity

CHANNEL = "mlflow_stack_auth_changed"
FUNCTION = "mlflow_stack_notify_auth_changed"
TRIGGER = "mlflow_stack_auth_changed"
# Alembic's bookkeeping (alembic_version_auth for MLflow's auth schema): written by migrations only, which run in
# prepare before the triggers are installed again.
UNWATCHED_PREFIX = "alembic_version"
HEARTBEAT_SECONDS = 0.25
# Within the stack's 2 s revocation promise even when every notification after the last heartbeat is lost.
LIVENESS_SECONDS = 1.0
FIRST_RETRY_SECONDS = 0.5  # doubled after each failed connection, up to
LONGEST_RETRY_SECONDS = 5.0
# The listener's connection gives up on a silent network within seconds (TCP keepalives; unset in the URI only).
CONNECTION_DEFAULTS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
}

# Held (per transaction, in the auth database) while the triggers are checked and installed: two installers at
# once (replicas' prepares, which already queue on the migration lock in the tracking database, or two stacks
# sharing one auth database) must not both create a missing trigger. Not MIGRATION_LOCK_KEY: with the auth tables
# in the tracking database itself, prepare's own migration lock would block this one.
INSTALL_LOCK_KEY = 0x6D6C666C6F7761  # "mlflowa"
_FUNCTION_BODY = f"""
BEGIN
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END
"""
_FUNCTION_SQL = f"CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $${_FUNCTION_BODY}$$"
# The function in the connection's current schema (where CREATE FUNCTION without a schema puts it).
_FUNCTION_OID_SQL = f"""
SELECT p.oid FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = current_schema() AND p.proname = '{FUNCTION}' AND p.pronargs = 0
"""
_FUNCTION_AS_INSTALLED_SQL = f"""
SELECT p.prosrc = :body AND p.prorettype = 'trigger'::regtype AND l.lanname = 'plpgsql' AND NOT p.proretset
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
WHERE n.nspname = current_schema() AND p.proname = '{FUNCTION}' AND p.pronargs = 0
"""
# pg_trigger.tgtype bits (Postgres' include/catalog/pg_trigger.h): INSERT 4, DELETE 8, UPDATE 16, TRUNCATE 32;
# ROW 1, BEFORE 2 and INSTEAD 64 unset: AFTER, FOR EACH STATEMENT.
_TRIGGER_TYPE = 4 | 8 | 16 | 32
_TRIGGER_SQL = (
    "CREATE TRIGGER {trigger} AFTER INSERT OR {update} OR DELETE OR TRUNCATE ON {table} "
    "FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
)
# Per watched table (every table and partitioned table of the connection's current schema but alembic's):
# whether its trigger is the one _TRIGGER_SQL creates (event, timing, level, function, arguments, no WHEN condition
# or transition table, not a constraint trigger, enabled; NULL when missing), and the columns of its UPDATE OF list
# (empty: every update).
_INSTALLED_TRIGGERS_SQL = f"""
SELECT c.relname,
       t.tgenabled = 'O' AND t.tgtype = {_TRIGGER_TYPE} AND t.tgfoid = ({_FUNCTION_OID_SQL}) AND t.tgnargs = 0
       AND t.tgqual IS NULL AND t.tgconstraint = 0 AND t.tgoldtable IS NULL AND t.tgnewtable IS NULL,
       t.tgattr::int2[]
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_trigger t ON t.tgrelid = c.oid AND t.tgname = '{TRIGGER}'
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND c.relname NOT LIKE '{UNWATCHED_PREFIX}%'
ORDER BY c.relname
"""
_UNWATCHED_TABLES_SQL = f"""
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND c.relname NOT LIKE '{UNWATCHED_PREFIX}%'
AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = '{TRIGGER}' AND t.tgenabled <> 'D')
ORDER BY c.relname
"""


def quoted(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


# A table's columns, in order: their numbers (what pg_trigger.tgattr holds) and names.
_COLUMNS_SQL = """
SELECT a.attnum, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relname = :table AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
# mlflow-oidc-auth's database: the plugin refreshes a token's last_used_at (at most once a minute per token) on
# its own; that column decides nothing, and a notification would forget every allowance of every worker.
OIDC_UNWATCHED_COLUMNS: dict[str, frozenset[str]] = {"user_tokens": frozenset({"last_used_at"})}


def _watched_columns(connection: Any, table: str, unwatched: frozenset[str]) -> list[tuple[int, str]]:
    """(number, name) of the columns whose update notifies on `table`; [] for every update (nothing unwatched)."""
    import sqlalchemy

    if not unwatched:
        return []
    columns = connection.execute(sqlalchemy.text(_COLUMNS_SQL), {"table": table}).all()
    return [(int(number), str(name)) for number, name in columns if name not in unwatched]


def install_change_triggers(
    connection: Any, unwatched_columns: Mapping[str, frozenset[str]] | None = None
) -> list[str]:
    """Make sure the notifying trigger is on every table of the auth database but alembic's, in the caller's
    transaction (`connection`: a SQLAlchemy connection); the tables. `unwatched_columns`: per table, columns whose
    updates alone notify nothing (a statement-level `UPDATE OF` the other columns fires when one of them is in the
    SET list). Only a missing or different trigger (or function) is created, so a database already as it should be
    is only read. Needs the tables' owner (the role that ran the auth migrations) and CREATE on the schema."""
    import sqlalchemy

    connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": INSTALL_LOCK_KEY})
    function_as_installed = connection.execute(
        sqlalchemy.text(_FUNCTION_AS_INSTALLED_SQL), {"body": _FUNCTION_BODY}
    ).scalar()
    if not function_as_installed:
        # Replaced in place: the triggers point at the function's OID, which stays.
        connection.execute(sqlalchemy.text(_FUNCTION_SQL))
    installed = {
        str(table): (bool(same), sorted(int(number) for number in columns or []))
        for table, same, columns in connection.execute(sqlalchemy.text(_INSTALLED_TRIGGERS_SQL)).all()
    }
    for table, (same, columns_installed) in installed.items():
        watched = _watched_columns(connection, table, (unwatched_columns or {}).get(table, frozenset()))
        if same and columns_installed == sorted(number for number, _ in watched):
            continue
        update = "UPDATE OF " + ", ".join(quoted(name) for _, name in watched) if watched else "UPDATE"
        connection.execute(sqlalchemy.text(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {quoted(table)}"))
        connection.execute(
            sqlalchemy.text(_TRIGGER_SQL.format(trigger=TRIGGER, update=update, table=quoted(table), function=FUNCTION))
        )
    return sorted(installed)


def prepare_change_notifications(uri: str, unwatched_columns: Mapping[str, frozenset[str]] | None = None) -> list[str]:
    """What prepare runs after the auth migrations on a Postgres auth database (MLflow's basic-auth one, or
    mlflow-oidc-auth's with OIDC_UNWATCHED_COLUMNS); the tables watched."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.begin() as connection:
            return install_change_triggers(connection, unwatched_columns)
    finally:
        engine.dispose()


class TriggersMissingError(Exception):
    """The auth database has tables without the notifying trigger: prepare has not installed them (yet)."""


def psycopg2_connector(uri: str) -> Callable[[], Any]:
    """A function opening a new psycopg2 connection (autocommit) to the database of `uri` (a SQLAlchemy URI: its
    host, credentials and query options such as sslmode carry over)."""
    import psycopg2
    import sqlalchemy

    url = sqlalchemy.engine.make_url(uri)
    dialect = sqlalchemy.create_engine(url).dialect
    arguments, options = dialect.create_connect_args(url)
    for name, value in CONNECTION_DEFAULTS.items():
        options.setdefault(name, value)

    def connect() -> Any:
        connection = psycopg2.connect(*arguments, **options)
        connection.autocommit = True
        return connection

    return connect


class ChangeListener:
    """Counts the auth database's changes (generations) for one worker; see the module."""

    def __init__(
        self,
        connect: Callable[[], Any],
        log: Callable[[str], None],
        heartbeat: float = HEARTBEAT_SECONDS,
        liveness: float = LIVENESS_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect, self._log, self._heartbeat, self._liveness, self._clock = (
            connect,
            log,
            heartbeat,
            liveness,
            clock,
        )
        # (generation, clock time before the last heartbeat that came back, None: not listening; clock time the
        # generation was counted at): one tuple, replaced as a whole, so that a reader never sees one without the
        # others.
        self._state: tuple[int, float | None, float] = (0, None, clock())
        self._alive_channel = f"{CHANNEL}_alive_{secrets.token_hex(8)}"
        self._stopping = threading.Event()
        self._connection: Any = None
        self._thread = threading.Thread(target=self._run, name="auth-change-listener", daemon=True)

    def start(self) -> ChangeListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def generation(self) -> int | None:
        """The current generation; None while a change may go unnoticed (then nothing remembered may be used)."""
        generation, alive, _ = self._state
        if alive is None or self._clock() - alive > self._liveness:
            return None
        return generation

    def generation_since(self) -> tuple[int, float] | None:
        """(the current generation, the clock time it was counted at: no change was notified since); None as
        `generation()`."""
        generation, alive, since = self._state
        if alive is None or self._clock() - alive > self._liveness:
            return None
        return generation, since

    def drop_connection(self) -> None:
        """Close the listening connection from outside (tests: a lost connection)."""
        connection = self._connection
        if connection is not None:
            connection.close()

    def _run(self) -> None:
        def report(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            pause = state.next_action.sleep if state.next_action else 0.0
            self._log(
                f"auth change notifications: not listening ({type(error).__name__}: "
                f"{(str(error).strip().splitlines() or [''])[0][:200]}); "
                f"remembered fast-path allowances unused, retrying in {pause:.1f} s"
            )

        retrying = tenacity.Retrying(
            wait=tenacity.wait_exponential(multiplier=FIRST_RETRY_SECONDS, max=LONGEST_RETRY_SECONDS),
            retry=tenacity.retry_if_exception(lambda error: not self._stopping.is_set()),
            before_sleep=report,
            sleep=self._pause,
        )
        with contextlib.suppress(Exception):  # raised only once stopping
            retrying(self._listen)

    def _pause(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _listen(self) -> None:
        """One connection's life: LISTEN, check the triggers, then count changes and heartbeats until it fails."""
        try:
            self._connection = connection = self._connect()
            with connection.cursor() as cursor:
                cursor.execute(f"LISTEN {CHANNEL}; LISTEN {self._alive_channel}")
                cursor.execute(_UNWATCHED_TABLES_SQL)
                unwatched = [row[0] for row in cursor.fetchall()]
                if unwatched:
                    raise TriggersMissingError(f"no change trigger on {', '.join(unwatched)} (run prepare)")
                # Changes made while nobody listened were missed: everything remembered before is forgotten.
                self._state = (self._state[0] + 1, None, self._clock())
                self._log("auth change notifications: listening")
                sent: dict[str, float] = {}  # heartbeat payload -> clock time before it was sent
                next_beat = 0.0
                while not self._stopping.is_set():
                    now = self._clock()
                    if now >= next_beat:
                        payload = secrets.token_hex(8)
                        sent[payload] = now
                        cursor.execute("SELECT pg_notify(%s, %s)", (self._alive_channel, payload))
                        next_beat = now + self._heartbeat
                        # Heartbeats that never came back (a server restarting mid-call) are not kept forever.
                        for old in [key for key, at in sent.items() if now - at > 10 * self._liveness]:
                            del sent[old]
                    self._take_notifications(connection, sent)
                    readable, _, _ = select.select([connection], [], [], max(0.0, next_beat - self._clock()))
                    if readable:
                        connection.poll()
                        self._take_notifications(connection, sent)
        finally:
            self._state = (self._state[0], None, self._state[2])
            connection, self._connection = self._connection, None
            if connection is not None:
                connection.close()

    def _take_notifications(self, connection: Any, sent: dict[str, float]) -> None:
        # In the order Postgres delivered them: a change before a heartbeat is counted before the heartbeat is.
        while connection.notifies:
            notification = connection.notifies.pop(0)
            generation, alive, since = self._state
            if notification.channel == self._alive_channel:
                at = sent.pop(notification.payload, None)
                if at is not None:
                    self._state = (generation, at, since)
            else:
                self._state = (generation + 1, alive, self._clock())
