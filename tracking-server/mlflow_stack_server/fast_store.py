"""A faster tracking store for the hot write calls, plugged in through MLflow's `mlflow.tracking_store` hook.

Why: MLflow's SqlAlchemyStore spends most of a log_batch request in ORM work. Each log_batch loads the run as
an ORM object four times (once per step, each step in a session and transaction of its own, which also holds
two pool connections per request), builds an ORM object per metric, param and latest-metric row, and flushes
them one unit of work at a time. This store does the same writes with SQLAlchemy Core statements in ONE short
transaction on ONE connection: a narrow read of the run's lifecycle stage, bulk INSERTs, the latest_metrics rows
locked FOR UPDATE in the same key order as MLflow and updated by the same rule.

What stays MLflow's:
- Validation: the very functions MLflow's store calls (same limits, messages, error codes), called in the same
  order, before anything is written.
- Every error about the run's or experiment's state, every conflict (a changed param value, a duplicate metric,
  a concurrent insert), every deadlock: this store rolls its transaction back and hands the call, untouched, to
  MLflow's own method, which then raises or resolves exactly as it always did. The fast path only ever handles
  the common case where MLflow would have succeeded without surprises.
- Anything unusual: metrics linked to a LoggedModel, the run-name tag, renaming a run, other databases than
  PostgreSQL, workspaces: MLflow's method.
- Every read (get_run, search_runs, metric history): inherited unchanged.

MLFLOW_FAST_STORE=off makes the entry point hand out MLflow's plain SqlAlchemyStore instead.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import sqlalchemy
from mlflow.entities import LifecycleStage, Metric, Param, Run, RunData, RunInfo, RunInputs, RunStatus, RunTag
from mlflow.entities.source_type import SourceType
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST, INTERNAL_ERROR, TEMPORARILY_UNAVAILABLE
from mlflow.store.tracking.dbmodels.models import SqlExperiment, SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils import validation
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME, _get_run_name_from_tags
from mlflow.utils.name_utils import _generate_random_name
from mlflow.utils.uri import append_to_uri_path
from sqlalchemy.dialects.postgresql import insert as pg_insert

_logger = logging.getLogger(__name__)

RUNS = SqlRun.__table__
EXPERIMENTS = SqlExperiment.__table__
METRICS = SqlMetric.__table__
LATEST_METRICS = SqlLatestMetric.__table__
PARAMS = SqlParam.__table__
TAGS = SqlTag.__table__
ACTIVE = LifecycleStage.ACTIVE
# MLflow locks latest_metrics rows in batches of this many keys (sorted), so concurrent writers lock in one order.
LATEST_METRICS_KEY_BATCH = 500
# Postgres SQLSTATEs a retry resolves: deadlock_detected, serialization_failure. MLflow's method retries them.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})
DECIMAL_ID = re.compile(r"[0-9]+")
SWITCH = "MLFLOW_FAST_STORE"
RUN_INFO_COLUMNS = (
    RUNS.c.run_uuid,
    RUNS.c.name,
    RUNS.c.experiment_id,
    RUNS.c.user_id,
    RUNS.c.status,
    RUNS.c.start_time,
    RUNS.c.end_time,
    RUNS.c.lifecycle_stage,
    RUNS.c.artifact_uri,
)


@dataclass(frozen=True)
class FastStoreSettings:
    enabled: bool

    @classmethod
    def from_env(cls) -> FastStoreSettings:
        value = os.environ.get(SWITCH, "on").strip().lower() or "on"
        if value not in ("on", "off", "true", "false", "1", "0"):
            raise MlflowException(f"{SWITCH}={value!r}; expected 'on' or 'off'", INTERNAL_ERROR)
        return cls(enabled=value in ("on", "true", "1"))


class _MlflowPathNeededError(Exception):
    """This call needs MLflow's own method: an error MLflow words, a conflict or a retry it resolves."""


def _sqlstate(error: sqlalchemy.exc.DBAPIError) -> str | None:
    return getattr(error.orig, "pgcode", None)


class FastSqlAlchemyStore(SqlAlchemyStore):
    """MLflow's SqlAlchemyStore with log_batch, log_metric, log_param, set_tag, create_run and update_run_info
    written as Core statements in one transaction (PostgreSQL only; see the module docstring)."""

    @contextmanager
    def _transaction(self) -> Iterator[sqlalchemy.Connection]:
        """One connection, one transaction; database errors translated as MLflow's managed session does."""
        try:
            with self.engine.begin() as connection:
                yield connection
        except sqlalchemy.exc.IntegrityError as error:
            raise _MlflowPathNeededError from error  # a duplicate or a concurrent insert: MLflow resolves or words it
        except sqlalchemy.exc.OperationalError as error:
            if _sqlstate(error) in RETRYABLE_SQLSTATES:
                raise _MlflowPathNeededError from error
            raise MlflowException(message=str(error), error_code=TEMPORARILY_UNAVAILABLE) from error
        except sqlalchemy.exc.SQLAlchemyError as error:
            raise MlflowException(message=str(error), error_code=BAD_REQUEST) from error

    @staticmethod
    def _require_active_run(connection: sqlalchemy.Connection, run_id: str) -> None:
        stage = connection.execute(
            sqlalchemy.select(RUNS.c.lifecycle_stage).where(RUNS.c.run_uuid == run_id)
        ).scalar_one_or_none()
        if stage != ACTIVE:
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
        except MlflowException:
            raise
        except Exception as error:
            raise MlflowException(str(error), INTERNAL_ERROR) from error

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
        with self._transaction() as connection:
            self._require_active_run(connection, run_id)
            if params:
                self._insert_params(connection, run_id, params)
            if metrics:
                self._insert_metrics(connection, run_id, metrics)
            if tags:
                self._upsert_tags(connection, run_id, tags)

    @staticmethod
    def _insert_params(connection: sqlalchemy.Connection, run_id: str, params: Sequence[Param]) -> None:
        logged: dict[str, str] = dict(
            connection.execute(
                sqlalchemy.select(PARAMS.c.key, PARAMS.c.value).where(
                    PARAMS.c.run_uuid == run_id, PARAMS.c.key.in_([param.key for param in params])
                )
            ).all()
        )
        if any(logged[param.key] != param.value for param in params if param.key in logged):
            raise _MlflowPathNeededError  # "Changing param values is not allowed", in MLflow's words
        new = [{"run_uuid": run_id, "key": p.key, "value": p.value} for p in params if p.key not in logged]
        if new:
            connection.execute(sqlalchemy.insert(PARAMS), new)

    def _insert_metrics(self, connection: sqlalchemy.Connection, run_id: str, metrics: Sequence[Metric]) -> None:
        # Deduplicated exactly as SqlAlchemyStore._log_metrics_once does (by Metric equality).
        rows: list[dict[str, Any]] = []
        seen: set[Metric] = set()
        for metric in metrics:
            if metric not in seen:
                is_nan, value = self.sanitize_metric_value(metric.value)
                rows.append(
                    {
                        "run_uuid": run_id,
                        "key": metric.key,
                        "value": value,
                        "timestamp": metric.timestamp,
                        "step": metric.step,
                        "is_nan": is_nan,
                    }
                )
            seen.add(metric)
        # A row that already exists (a client retrying a batch) violates the primary key: MLflow's path then
        # inserts only the new ones.
        connection.execute(sqlalchemy.insert(METRICS), rows)
        self._update_latest_metrics(connection, run_id, rows)

    @staticmethod
    def _update_latest_metrics(connection: sqlalchemy.Connection, run_id: str, rows: list[dict[str, Any]]) -> None:
        """SqlAlchemyStore._update_latest_metrics_if_necessary without ORM objects: same locks, same rule."""
        keys = sorted({row["key"] for row in rows})
        latest: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), LATEST_METRICS_KEY_BATCH):
            locked = connection.execute(
                sqlalchemy.select(
                    LATEST_METRICS.c.key,
                    LATEST_METRICS.c.value,
                    LATEST_METRICS.c.timestamp,
                    LATEST_METRICS.c.step,
                    LATEST_METRICS.c.is_nan,
                )
                .where(
                    LATEST_METRICS.c.run_uuid == run_id,
                    LATEST_METRICS.c.key.in_(keys[start : start + LATEST_METRICS_KEY_BATCH]),
                )
                .order_by(LATEST_METRICS.c.run_uuid, LATEST_METRICS.c.key)
                .with_for_update()
            )
            latest.update({row.key: dict(row._mapping) for row in locked})
        in_database = set(latest)
        changed: set[str] = set()
        for row in rows:
            current = latest.get(row["key"])
            # MLflow's rule: the newer is the greater (step, timestamp, value); NaN is compared as its stored 0.
            if current is None or (row["step"], row["timestamp"], row["value"]) > (
                current["step"],
                current["timestamp"],
                current["value"],
            ):
                latest[row["key"]] = {field: row[field] for field in ("key", "value", "timestamp", "step", "is_nan")}
                changed.add(row["key"])
        inserts = [{"run_uuid": run_id, **latest[key]} for key in sorted(changed - in_database)]
        updates = [{"b_key": key, **{f"b_{f}": latest[key][f] for f in ("value", "timestamp", "step", "is_nan")}}
                   for key in sorted(changed & in_database)]  # fmt: skip
        if inserts:
            connection.execute(sqlalchemy.insert(LATEST_METRICS), inserts)
        if updates:
            connection.execute(
                sqlalchemy.update(LATEST_METRICS)
                .where(LATEST_METRICS.c.run_uuid == run_id, LATEST_METRICS.c.key == sqlalchemy.bindparam("b_key"))
                .values(
                    value=sqlalchemy.bindparam("b_value"),
                    timestamp=sqlalchemy.bindparam("b_timestamp"),
                    step=sqlalchemy.bindparam("b_step"),
                    is_nan=sqlalchemy.bindparam("b_is_nan"),
                ),
                updates,
            )

    @staticmethod
    def _upsert_tags(connection: sqlalchemy.Connection, run_id: str, tags: Sequence[RunTag]) -> None:
        # The last value of a key repeated in one batch wins, as in SqlAlchemyStore._set_tags.
        values = {tag.key: tag.value for tag in tags}
        statement = pg_insert(TAGS).values([{"run_uuid": run_id, "key": k, "value": v} for k, v in values.items()])
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=[TAGS.c.key, TAGS.c.run_uuid], set_={"value": statement.excluded.value}
            )
        )

    # ---- set_tag ---------------------------------------------------------------------------------------

    def set_tag(self, run_id: str, tag: RunTag) -> None:
        validated = validation._validate_tag(tag.key, tag.value)
        if validated.key == MLFLOW_RUN_NAME:
            super().set_tag(run_id, tag)  # also renames the run
            return
        try:
            with self._transaction() as connection:
                # One statement: insert or overwrite the tag, only while the run exists and is active.
                source = sqlalchemy.select(
                    sqlalchemy.literal(validated.key, TAGS.c.key.type),
                    sqlalchemy.literal(validated.value, TAGS.c.value.type),
                    RUNS.c.run_uuid,
                ).where(RUNS.c.run_uuid == run_id, RUNS.c.lifecycle_stage == ACTIVE)
                statement = pg_insert(TAGS).from_select(["key", "value", "run_uuid"], source)
                written = connection.execute(
                    statement.on_conflict_do_update(
                        index_elements=[TAGS.c.key, TAGS.c.run_uuid], set_={"value": statement.excluded.value}
                    )
                ).rowcount
                if written != 1:
                    raise _MlflowPathNeededError
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
            with self._transaction() as connection:
                experiment = connection.execute(
                    sqlalchemy.select(EXPERIMENTS.c.lifecycle_stage, EXPERIMENTS.c.artifact_location).where(
                        EXPERIMENTS.c.experiment_id == int(experiment_id)
                    )
                ).one_or_none()
                if experiment is None or experiment.lifecycle_stage != ACTIVE:
                    raise _MlflowPathNeededError
                run_id = uuid.uuid4().hex
                name = run_name or run_name_tag or _generate_random_name()
                stored_tags = tags if run_name_tag else [*tags, RunTag(key=MLFLOW_RUN_NAME, value=name)]
                info = RunInfo(
                    run_id=run_id,
                    run_name=name,
                    experiment_id=str(experiment_id),
                    user_id=user_id,  # type: ignore[arg-type]  # MLflow stores None as given
                    status=RunStatus.to_string(RunStatus.RUNNING),
                    start_time=start_time,  # type: ignore[arg-type]
                    end_time=None,
                    lifecycle_stage=ACTIVE,
                    artifact_uri=append_to_uri_path(
                        experiment.artifact_location, run_id, SqlAlchemyStore.ARTIFACTS_FOLDER_NAME
                    ),
                )
                connection.execute(
                    sqlalchemy.insert(RUNS).values(
                        run_uuid=run_id,
                        name=name,
                        artifact_uri=info.artifact_uri,
                        experiment_id=int(experiment_id),
                        source_type=SourceType.to_string(SourceType.UNKNOWN),
                        source_name="",
                        entry_point_name="",
                        user_id=user_id,
                        status=info.status,
                        start_time=start_time,
                        end_time=None,
                        deleted_time=None,
                        source_version="",
                        lifecycle_stage=ACTIVE,
                    )
                )
                connection.execute(
                    sqlalchemy.insert(TAGS),
                    [{"run_uuid": run_id, "key": t.key, "value": t.value} for t in stored_tags],
                )
        except _MlflowPathNeededError:
            return super().create_run(experiment_id, user_id, start_time, tags, run_name)
        # A run created this instant has no inputs: MLflow's query for them would find none.
        tag_entities = [RunTag(key=t.key, value=t.value) for t in stored_tags]
        return Run(info, RunData(metrics=[], params=[], tags=tag_entities), RunInputs(dataset_inputs=[]))

    def update_run_info(self, run_id: str, run_status: Any, end_time: int | None, run_name: str | None) -> RunInfo:
        if run_name:
            return super().update_run_info(run_id, run_status, end_time, run_name)  # also rewrites the tag
        try:
            values: dict[str, Any] = {}
            if run_status is not None:
                values["status"] = RunStatus.to_string(run_status)
            if end_time is not None:
                values["end_time"] = end_time
        except Exception:
            return super().update_run_info(run_id, run_status, end_time, run_name)  # MLflow's error, in order
        try:
            with self._transaction() as connection:
                where = (RUNS.c.run_uuid == run_id, RUNS.c.lifecycle_stage == ACTIVE)
                statement = (
                    sqlalchemy.update(RUNS).where(*where).values(**values).returning(*RUN_INFO_COLUMNS)
                    if values
                    else sqlalchemy.select(*RUN_INFO_COLUMNS).where(*where)
                )
                row = connection.execute(statement).one_or_none()
                if row is None or not row.name:
                    # Not found, not active (MLflow's error), or an unnamed run whose name MLflow reads from tags.
                    raise _MlflowPathNeededError
        except _MlflowPathNeededError:
            return super().update_run_info(run_id, run_status, end_time, run_name)
        return RunInfo(
            run_id=row.run_uuid,
            run_name=row.name,
            experiment_id=str(row.experiment_id),
            user_id=row.user_id,
            status=row.status,
            start_time=row.start_time,
            end_time=row.end_time,
            lifecycle_stage=row.lifecycle_stage,
            artifact_uri=row.artifact_uri,
        )


def tracking_store(store_uri: str, artifact_uri: str | None = None) -> SqlAlchemyStore:
    """Entry point for the `postgresql` scheme: MLflow's own builder, with the fast store unless switched off.

    Registered after MLflow's built-in builders, so it replaces theirs for postgresql URIs only; the model
    registry, the auth database and `mlflow db upgrade` do not use this registry.
    """
    from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
    from mlflow.server.constants import READ_REPLICA_BACKEND_STORE_URI_ENV_VAR
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_workspace_store import WorkspaceAwareSqlAlchemyStore
    from mlflow.tracking._tracking_service.utils import _SERVER_ARTIFACT_ROOT_ENV_VAR

    if artifact_uri is None:  # as MLflow's builder: inside the server, the server's artifact root
        artifact_uri = os.environ.get(_SERVER_ARTIFACT_ROOT_ENV_VAR, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
    read_db_uri = os.environ.get(READ_REPLICA_BACKEND_STORE_URI_ENV_VAR) or None
    if MLFLOW_ENABLE_WORKSPACES.get():
        return WorkspaceAwareSqlAlchemyStore(store_uri, artifact_uri, read_db_uri=read_db_uri)
    if FastStoreSettings.from_env().enabled:
        return FastSqlAlchemyStore(store_uri, artifact_uri, read_db_uri=read_db_uri)
    return SqlAlchemyStore(store_uri, artifact_uri, read_db_uri=read_db_uri)
