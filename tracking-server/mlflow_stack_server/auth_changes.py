"""Change notifications of an auth database (Postgres: MLflow's basic-auth one, mlflow-oidc-auth's): every worker learns within milliseconds that a user,
a password, an admin flag, a grant or a role changed, so that the "allowed" decisions it remembers for the fast path
(fast_path_auth.remember_allowances, fast_path_oidc.TokenAllowances) can live long and still never outlast a change.

- `prepare` installs, on every table of the auth database but alembic's, a statement-level trigger that sends
  `NOTIFY mlflow_stack_auth_changed` (no payload: any change forgets everything) on INSERT, UPDATE, DELETE and
  TRUNCATE. Re-installed at every prepare, after MLflow's auth migrations: a table a later migration adds gets
  it too. The notification is sent when the changing transaction commits, by whichever server (or psql) wrote it.
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

_FUNCTION_SQL = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{CHANNEL}', '');
    RETURN NULL;
END
$$
"""
# Tables (and partitioned tables) of the schema MLflow's auth store writes to (the connection's current schema).
_WATCHED_TABLES_SQL = f"""
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
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


_COLUMNS_SQL = """
SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relname = :table AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
# mlflow-oidc-auth's database: the plugin refreshes a token's last_used_at (at most once a minute per token) on
# its own; that column decides nothing, and a notification would forget every allowance of every worker.
OIDC_UNWATCHED_COLUMNS: dict[str, frozenset[str]] = {"user_tokens": frozenset({"last_used_at"})}


def _events(connection: Any, table: str, unwatched: frozenset[str]) -> str:
    """The statements that notify on `table`: every INSERT, DELETE and TRUNCATE, and an UPDATE that sets any
    column but `unwatched` (a statement-level `UPDATE OF` fires when one of its columns is in the SET list)."""
    import sqlalchemy

    if not unwatched:
        return "INSERT OR UPDATE OR DELETE OR TRUNCATE"
    columns = [str(row[0]) for row in connection.execute(sqlalchemy.text(_COLUMNS_SQL), {"table": table})]
    watched = [quoted(column) for column in columns if column not in unwatched]
    return f"INSERT OR UPDATE OF {', '.join(watched)} OR DELETE OR TRUNCATE"


def install_change_triggers(
    connection: Any, unwatched_columns: Mapping[str, frozenset[str]] | None = None
) -> list[str]:
    """Install (again) the notifying trigger on every table of the auth database but alembic's, in the caller's
    transaction (`connection`: a SQLAlchemy connection); the tables. `unwatched_columns`: per table, columns
    whose updates alone notify nothing. Needs the tables' owner (the role that ran the auth migrations) and
    CREATE on the schema."""
    import sqlalchemy

    connection.execute(sqlalchemy.text(_FUNCTION_SQL))
    tables = [str(row[0]) for row in connection.execute(sqlalchemy.text(_WATCHED_TABLES_SQL))]
    for table in tables:
        events = _events(connection, table, (unwatched_columns or {}).get(table, frozenset()))
        connection.execute(sqlalchemy.text(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {quoted(table)}"))
        connection.execute(
            sqlalchemy.text(
                f"CREATE TRIGGER {TRIGGER} AFTER {events} ON {quoted(table)} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
            )
        )
    return tables


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
