"""A faster tracking store for the hot write calls, plugged in through MLflow's `mlflow.tracking_store` hook.

Why: MLflow's SqlAlchemyStore spends most of a log_batch request in SQLAlchemy. Each log_batch loads the run as an
ORM object four times (once per step, each step in a session and transaction of its own, which also holds two
pool connections per request), builds an ORM object per metric, param and latest-metric row, and flushes them
one unit of work at a time. This store does the same writes as a few fixed SQL statements in ONE short
transaction on ONE pooled connection (SQLAlchemy's pool, MLflow's engine): a narrow read of the run's lifecycle
stage, multi-row INSERTs, the latest_metrics rows locked FOR UPDATE in the same key order as MLflow and updated
by the same rule. Statements are plain SQL on the driver's cursor because building and caching SQLAlchemy
statements was itself a third of the remaining CPU.

What stays MLflow's:
- Validation: the very functions MLflow's store calls (same limits, messages, error codes), in the same order,
  before anything is written.
- Every error about the run's or experiment's state, every conflict (a changed param value, a duplicate metric,
  a concurrent insert), every deadlock, every database error, every value the driver refuses (a NUL, a lone
  surrogate): this store rolls its transaction back and hands the call, untouched, to MLflow's own method, which then raises or resolves exactly as it always does. The fast
  path only ever completes the common case in which MLflow would have succeeded without surprises.
- Anything unusual: metrics linked to a LoggedModel, the run-name tag, renaming a run: MLflow's method.
- Every read (get_run, search_runs, metric history) and every other write: inherited unchanged.

Round trips: a write is its statements plus COMMIT and nothing else. The connection is checked out without the
pool's pre-ping `SELECT 1` (see _ping_on_checkout_unless_fast_path), and runs in autocommit mode so that psycopg2
sends no `BEGIN` of its own: the transaction's `BEGIN` travels in the same message as its first statement, and a
write that is one statement (set_tag, update_run_info) is its own transaction without `BEGIN` or `COMMIT`.

PostgreSQL only (SQL below uses ON CONFLICT, = ANY(array) and UPDATE ... FROM VALUES). MLFLOW_FAST_STORE=off
makes the entry point (store_plugin.py) hand out MLflow's plain SqlAlchemyStore instead.
"""

from __future__ import annotations

import re
import select
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import sqlalchemy
import sqlalchemy.event
from mlflow.entities import LifecycleStage, Metric, Param, Run, RunData, RunInfo, RunInputs, RunStatus, RunTag
from mlflow.entities.source_type import SourceType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST, INTERNAL_ERROR
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils import validation
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, _get_run_name_from_tags
from mlflow.utils.name_utils import _generate_random_name
from mlflow.utils.uri import append_to_uri_path

ACTIVE = LifecycleStage.ACTIVE
RUNNING = RunStatus.to_string(RunStatus.RUNNING)
UNKNOWN_SOURCE = SourceType.to_string(SourceType.UNKNOWN)
DECIMAL_ID = re.compile(r"[0-9]+")

RUN_STAGE = "SELECT lifecycle_stage FROM runs WHERE run_uuid = %s"
LOGGED_PARAMS = "SELECT key, value FROM params WHERE run_uuid = %s AND key = ANY(%s)"
INSERT_PARAMS = "INSERT INTO params (key, value, run_uuid) VALUES %s"
INSERT_METRICS = "INSERT INTO metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES %s"
# The same rows MLflow locks, in the same order (run, then key), so concurrent writers cannot deadlock each other.
LOCK_LATEST_METRICS = (
    "SELECT key, value, timestamp, step, is_nan FROM latest_metrics WHERE run_uuid = %s AND key = ANY(%s) "
    "ORDER BY run_uuid, key FOR UPDATE"
)
INSERT_LATEST_METRICS = "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES %s"
UPDATE_LATEST_METRICS = (
    "UPDATE latest_metrics AS l SET value = v.value, timestamp = v.timestamp, step = v.step, is_nan = v.is_nan "
    "FROM (VALUES %s) AS v (key, value, timestamp, step, is_nan, run_uuid) "
    "WHERE l.run_uuid = v.run_uuid AND l.key = v.key"
)
UPDATE_LATEST_METRICS_ROW = "(%s, %s::double precision, %s::bigint, %s::bigint, %s::boolean, %s)"
UPSERT_TAGS = (
    "INSERT INTO tags (key, value, run_uuid) VALUES %s ON CONFLICT (key, run_uuid) DO UPDATE SET value = EXCLUDED.value"
)
# One statement: insert or overwrite the tag, only while the run exists and is active.
SET_TAG = (
    "INSERT INTO tags (key, value, run_uuid) SELECT %s, %s, run_uuid FROM runs "
    "WHERE run_uuid = %s AND lifecycle_stage = 'active' ON CONFLICT (key, run_uuid) DO UPDATE SET value = EXCLUDED.value"
)
EXPERIMENT_FOR_RUN = "SELECT lifecycle_stage, artifact_location FROM experiments WHERE experiment_id = %s"
INSERT_RUN = (
    "INSERT INTO runs (run_uuid, name, artifact_uri, experiment_id, source_type, source_name, entry_point_name, "
    "user_id, status, start_time, end_time, deleted_time, source_version, lifecycle_stage) "
    "VALUES (%s, %s, %s, %s, %s, '', '', %s, %s, %s, NULL, NULL, '', %s)"
)
INSERT_TAGS = "INSERT INTO tags (key, value, run_uuid) VALUES %s"
RUN_INFO = "run_uuid, name, experiment_id, user_id, status, start_time, end_time, lifecycle_stage, artifact_uri"
UPDATE_RUN = (
    "UPDATE runs SET status = COALESCE(%s::varchar, status), end_time = COALESCE(%s::bigint, end_time) "
    # An unnamed run is left alone: MLflow's method reads its name from the tags.
    f"WHERE run_uuid = %s AND lifecycle_stage = 'active' AND name <> '' RETURNING {RUN_INFO}"
)


IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
# Set while the fast path checks a connection out of MLflow's pool (_ping_on_checkout_unless_fast_path).
_FAST_CHECKOUT: ContextVar[bool] = ContextVar("fast_store_checkout", default=False)


class _MlflowPathNeededError(Exception):
    """This call needs MLflow's own method: an error MLflow words, a conflict or a retry it resolves."""


class _BeginWithFirstStatement(psycopg2.extensions.cursor):
    """An autocommit connection's cursor that opens the transaction in the message of its first statement
    (psycopg2 would otherwise send `BEGIN` as a round trip of its own)."""

    begun = False

    def execute(self, query: str | bytes, variables: Any = None) -> None:
        if not self.begun:
            self.begun = True
            query = b"BEGIN;" + query if isinstance(query, bytes) else "BEGIN;" + query
        super().execute(query, variables)


def _ping_on_checkout_unless_fast_path(engine: sqlalchemy.engine.Engine) -> None:
    """Make MLflow's engine ping on checkout from a pool listener instead of its built-in pre-ping, and skip the
    `SELECT 1` round trip when the fast path checks a connection out.

    Why not a pool of the fast store's own: its connections would come on top of MLflow's (a request thread
    falling back to MLflow's method needs two more), one more pool of MLFLOW_REQUEST_THREADS per worker in the
    connection budget (entrypoint.size_connection_pool, the chart's check); sharing MLflow's pool keeps it.

    MLflow's sessions keep what pre-ping gives them: the same `SELECT 1` on every checkout but a new
    connection's first, and a connection that fails it is replaced along with every connection pooled before it
    (SQLAlchemy's own reaction to a failed pre-ping). The fast path instead asks the kernel, without a round trip,
    whether the server has written to the idle connection: a backend that was terminated or a server that shut
    down sends an error and closes the socket, which makes it readable; such a connection is replaced before
    use. One that died silently (a network path gone) fails the write instead, which then rolls back, drops the
    connection and hands the call to MLflow's method (one fallback, with the ping). The fast path returns its
    connections as it found them (not in autocommit, no transaction open, _transaction), so MLflow's sessions
    never see its session state.
    """
    if sqlalchemy.event.contains(engine, "checkout", _ping_unless_fast_path):
        return
    sqlalchemy.event.listen(engine, "checkout", _ping_unless_fast_path)
    engine.pool._pre_ping = False  # the listener pings instead (the pool reads this on each checkout)


def _readable(dbapi_connection: Any) -> bool:
    """Whether the server has written to this connection's socket (poll, not select: a worker with many client
    connections can hold descriptors past select's FD_SETSIZE of 1024)."""
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _ping_unless_fast_path(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    connected_for_this_checkout = record.info.pop("fast_store_connected", False)
    if _FAST_CHECKOUT.get():
        if dbapi_connection.closed or _readable(dbapi_connection):
            # Idle, nothing is due from the server: this is a termination notice or the end of the stream.
            raise sqlalchemy.exc.DisconnectionError("the server closed this pooled connection")
        return
    if connected_for_this_checkout:
        return  # made for this checkout: as pre-ping, nothing to test yet
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except psycopg2.Error as error:
        # As a failed pre-ping: replace this connection and every one pooled before it.
        raise sqlalchemy.exc.InvalidatePoolError(str(error)) from error


def _mark_new_connection(_dbapi_connection: Any, record: Any) -> None:
    record.info["fast_store_connected"] = True


def _release(connection: Any) -> None:
    """Back to the pool as MLflow's sessions expect it (no transaction open, not in autocommit), else dropped."""
    try:
        if connection.dbapi_connection.info.transaction_status != IDLE:
            with connection.cursor() as cursor:
                cursor.execute("ROLLBACK")
        connection.dbapi_connection.autocommit = False
    except psycopg2.Error:
        connection.invalidate()  # a broken connection must not go back to the pool
    else:
        if connection.dbapi_connection.closed:
            connection.invalidate()
    connection.close()  # back to the pool (a no-op once invalidated)


class FastSqlAlchemyStore(SqlAlchemyStore):
    """MLflow's SqlAlchemyStore with log_batch, log_metric, log_param, set_tag, create_run and update_run_info
    written as fixed SQL in one transaction (PostgreSQL only; see the module docstring)."""

    def __init__(self, db_uri: str, default_artifact_root: str, read_db_uri: str | None = None) -> None:
        super().__init__(db_uri, default_artifact_root, read_db_uri=read_db_uri)
        if not sqlalchemy.event.contains(self.engine, "connect", _mark_new_connection):
            sqlalchemy.event.listen(self.engine, "connect", _mark_new_connection)
        _ping_on_checkout_unless_fast_path(self.engine)

    @contextmanager
    def _transaction(self, single_statement: bool = False) -> Iterator[Any]:
        """A cursor on one pooled connection in one transaction; commit on success. With single_statement the
        cursor's one statement is its own transaction (autocommit: no BEGIN, no COMMIT).

        A database error rolls back and becomes _MlflowPathNeededError, so MLflow's method redoes the call on a
        fresh session and answers as MLflow does (a conflict it resolves, an error in its words, in its order). So
        does a value psycopg2 refuses before sending it (ValueError for a NUL, UnicodeEncodeError for a lone
        surrogate): MLflow answers those with its run-state error first (a deleted or unknown run), else with the
        INTERNAL_ERROR its session makes of them. Any other exception is a fault: INTERNAL_ERROR, as MLflow's
        session answers one (mlflow/store/db/utils.py), never a bare exception (Flask's HTML 500).
        """
        fast_checkout = _FAST_CHECKOUT.set(True)
        try:
            connection: Any = self.engine.raw_connection()
        except sqlalchemy.exc.SQLAlchemyError as error:
            # No pooled connection in time ("QueuePool limit ... reached"): MLflow's session answers this with
            # BAD_REQUEST; waiting again on MLflow's path would only double the wait.
            raise MlflowException(message=str(error), error_code=BAD_REQUEST) from error
        finally:
            _FAST_CHECKOUT.reset(fast_checkout)
        try:
            connection.dbapi_connection.autocommit = True  # a flag in psycopg2: no round trip
            cursor_class = psycopg2.extensions.cursor if single_statement else _BeginWithFirstStatement
            with connection.cursor(cursor_factory=cursor_class) as cursor:
                yield cursor
                if connection.dbapi_connection.info.transaction_status != IDLE:
                    cursor.execute("COMMIT")
        except (_MlflowPathNeededError, MlflowException):
            raise
        except (psycopg2.Error, ValueError) as error:  # UnicodeEncodeError is a ValueError
            raise _MlflowPathNeededError from error
        except Exception as error:
            # Anything else is a fault, not an answer to redo: MLflow's session makes it INTERNAL_ERROR.
            raise MlflowException(str(error), INTERNAL_ERROR) from error
        finally:
            _release(connection)  # rolls back whatever is still open

    @staticmethod
    def _require_active_run(cursor: Any, run_id: str) -> None:
        cursor.execute(RUN_STAGE, (run_id,))
        row = cursor.fetchone()
        if row is None or row[0] != ACTIVE:
            raise _MlflowPathNeededError  # not found or not active: MLflow raises its own error

    # ---- log_batch, log_metric, log_param -------------------------------------------------------------

    def log_batch(self, run_id: str, metrics: list[Metric], params: list[Param], tags: list[RunTag]) -> None:
        # The same checks, in the same order, as SqlAlchemyStore.log_batch.
        validation._validate_run_id(run_id)
        metrics, params, tags = validation._validate_batch_log_data(metrics, params, tags)
        validation._validate_batch_log_limits(metrics, params, tags)
        validation._validate_param_keys_unique(params)
        if any(metric.model_id is not None for metric in metrics) or any(tag.key == MLFLOW_RUN_NAME for tag in tags):
            super().log_batch(run_id, metrics, params, tags)
            return
        try:
            self._write(run_id, metrics, params, tags)
        except _MlflowPathNeededError:
            super().log_batch(run_id, metrics, params, tags)

    def log_metric(self, run_id: str, metric: Metric) -> None:
        if metric.model_id is not None:
            super().log_metric(run_id, metric)
            return
        validation._validate_metric(metric.key, metric.value, metric.timestamp, metric.step, path="")
        try:
            self._write(run_id, [metric], [], [])
        except _MlflowPathNeededError:
            super().log_metric(run_id, metric)

    def log_param(self, run_id: str, param: Param) -> None:
        validated = validation._validate_param(param.key, param.value)
        try:
            self._write(run_id, [], [validated], [])
        except _MlflowPathNeededError:
            super().log_param(run_id, param)

    def _write(self, run_id: str, metrics: Sequence[Metric], params: Sequence[Param], tags: Sequence[RunTag]) -> None:
        with self._transaction() as cursor:
            self._require_active_run(cursor, run_id)
            if params:
                self._insert_params(cursor, run_id, params)
            if metrics:
                self._insert_metrics(cursor, run_id, metrics)
            if tags:
                # The last value of a key repeated in one batch wins, as in SqlAlchemyStore._set_tags.
                values = {tag.key: tag.value for tag in tags}
                rows = [(key, value, run_id) for key, value in values.items()]
                psycopg2.extras.execute_values(cursor, UPSERT_TAGS, rows, page_size=len(rows))

    @staticmethod
    def _insert_params(cursor: Any, run_id: str, params: Sequence[Param]) -> None:
        cursor.execute(LOGGED_PARAMS, (run_id, [param.key for param in params]))
        logged = dict(cursor.fetchall())
        if any(logged[param.key] != param.value for param in params if param.key in logged):
            raise _MlflowPathNeededError  # "Changing param values is not allowed", in MLflow's words
        new = [(param.key, param.value, run_id) for param in params if param.key not in logged]
        if new:
            psycopg2.extras.execute_values(cursor, INSERT_PARAMS, new, page_size=len(new))

    def _insert_metrics(self, cursor: Any, run_id: str, metrics: Sequence[Metric]) -> None:
        # Deduplicated exactly as SqlAlchemyStore._log_metrics_once does (by Metric equality).
        rows: list[tuple[str, float, int, int, bool, str]] = []
        seen: set[Metric] = set()
        for metric in metrics:
            if metric not in seen:
                is_nan, value = self.sanitize_metric_value(metric.value)
                rows.append((metric.key, value, metric.timestamp, metric.step, is_nan, run_id))
            seen.add(metric)
        # A row that already exists (a client retrying a batch) violates the primary key: MLflow's path then
        # inserts only the new ones.
        psycopg2.extras.execute_values(cursor, INSERT_METRICS, rows, page_size=len(rows))
        self._update_latest_metrics(cursor, run_id, rows)

    @staticmethod
    def _update_latest_metrics(cursor: Any, run_id: str, rows: list[tuple[str, float, int, int, bool, str]]) -> None:
        """SqlAlchemyStore._update_latest_metrics_if_necessary without ORM objects: same locks, same rule."""
        cursor.execute(LOCK_LATEST_METRICS, (run_id, sorted({row[0] for row in rows})))
        # key -> (key, value, timestamp, step, is_nan)
        latest: dict[str, tuple[Any, ...]] = {row[0]: tuple(row) for row in cursor.fetchall()}
        in_database = set(latest)
        changed: set[str] = set()
        for key, value, timestamp, step, is_nan, _ in rows:
            current = latest.get(key)
            # MLflow's rule: the newer is the greater (step, timestamp, value); NaN is compared as its stored 0.
            if current is None or (step, timestamp, value) > (current[3], current[2], current[1]):
                latest[key] = (key, value, timestamp, step, is_nan)
                changed.add(key)
        inserts = [(*latest[key], run_id) for key in sorted(changed - in_database)]
        updates = [(*latest[key], run_id) for key in sorted(changed & in_database)]
        if inserts:
            psycopg2.extras.execute_values(cursor, INSERT_LATEST_METRICS, inserts, page_size=len(inserts))
        if updates:
            psycopg2.extras.execute_values(
                cursor, UPDATE_LATEST_METRICS, updates, template=UPDATE_LATEST_METRICS_ROW, page_size=len(updates)
            )

    # ---- set_tag ---------------------------------------------------------------------------------------

    def set_tag(self, run_id: str, tag: RunTag) -> None:
        validated = validation._validate_tag(tag.key, tag.value)
        if validated.key == MLFLOW_RUN_NAME:
            super().set_tag(run_id, tag)  # also renames the run
            return
        try:
            with self._transaction(single_statement=True) as cursor:
                cursor.execute(SET_TAG, (validated.key, validated.value, run_id))
                if cursor.rowcount != 1:
                    raise _MlflowPathNeededError  # no such active run: MLflow's error
        except _MlflowPathNeededError:
            super().set_tag(run_id, tag)

    # ---- create_run, update_run_info -------------------------------------------------------------------

    def create_run(
        self,
        experiment_id: str,
        user_id: str | None,
        start_time: int | None,
        tags: list[RunTag] | None,
        run_name: str | None,
    ) -> Run:
        tags = tags.copy() if tags else []
        run_name_tag = _get_run_name_from_tags(tags)
        if not DECIMAL_ID.fullmatch(str(experiment_id or "")) or (
            run_name and run_name_tag and run_name != run_name_tag
        ):
            return super().create_run(experiment_id, user_id, start_time, tags, run_name)
        try:
            with self._transaction() as cursor:
                cursor.execute(EXPERIMENT_FOR_RUN, (int(experiment_id),))
                experiment = cursor.fetchone()
                if experiment is None or experiment[0] != ACTIVE:
                    raise _MlflowPathNeededError  # MLflow's "No Experiment" or "must be active"
                run_id = uuid.uuid4().hex
                name = run_name or run_name_tag or _generate_random_name()
                stored_tags = tags if run_name_tag else [*tags, RunTag(key=MLFLOW_RUN_NAME, value=name)]
                artifact_uri = append_to_uri_path(experiment[1], run_id, SqlAlchemyStore.ARTIFACTS_FOLDER_NAME)
                cursor.execute(
                    INSERT_RUN,
                    (
                        run_id,
                        name,
                        artifact_uri,
                        int(experiment_id),
                        UNKNOWN_SOURCE,
                        user_id,
                        RUNNING,
                        start_time,
                        ACTIVE,
                    ),
                )
                rows = [(tag.key, tag.value, run_id) for tag in stored_tags]
                psycopg2.extras.execute_values(cursor, INSERT_TAGS, rows, page_size=len(rows))
        except _MlflowPathNeededError:
            return super().create_run(experiment_id, user_id, start_time, tags, run_name)
        info = RunInfo(
            run_id=run_id,
            run_name=name,
            experiment_id=str(experiment_id),
            user_id=user_id,  # type: ignore[arg-type]  # stored as given, None included, as MLflow does
            status=RUNNING,
            start_time=start_time,  # type: ignore[arg-type]
            end_time=None,
            lifecycle_stage=ACTIVE,
            artifact_uri=artifact_uri,
        )
        # A run created this instant has no inputs: MLflow's query for them would find none.
        tag_entities = [RunTag(key=tag.key, value=tag.value) for tag in stored_tags]
        return Run(info, RunData(metrics=[], params=[], tags=tag_entities), RunInputs(dataset_inputs=[]))

    def update_run_info(self, run_id: str, run_status: Any, end_time: int | None, run_name: str | None) -> RunInfo:
        if run_name:
            return super().update_run_info(run_id, run_status, end_time, run_name)  # also rewrites the tag
        try:
            status = None if run_status is None else RunStatus.to_string(run_status)
        except Exception:
            return super().update_run_info(run_id, run_status, end_time, run_name)  # MLflow's error, in order
        try:
            with self._transaction(single_statement=True) as cursor:
                cursor.execute(UPDATE_RUN, (status, end_time, run_id))
                row = cursor.fetchone()
                if row is None:
                    # Not found, not active (MLflow's error), or an unnamed run whose name MLflow reads from tags.
                    raise _MlflowPathNeededError
        except _MlflowPathNeededError:
            return super().update_run_info(run_id, run_status, end_time, run_name)
        run_uuid, name, experiment_id, user_id, status, start_time, end_time, stage, artifact_uri = row
        return RunInfo(
            run_id=run_uuid,
            run_name=name,
            experiment_id=str(experiment_id),
            user_id=user_id,
            status=status,
            start_time=start_time,
            end_time=end_time,
            lifecycle_stage=stage,
            artifact_uri=artifact_uri,
        )
