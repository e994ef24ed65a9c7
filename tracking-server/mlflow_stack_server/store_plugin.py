"""The `mlflow.tracking_store` entry point for postgresql URIs: the fast store, or MLflow's own when switched off.

MLflow imports entry points while `mlflow.tracking` itself is still being imported, so this module imports
nothing from MLflow at load time (a top-level import here would be circular and MLflow would skip the plugin
with a warning); the store classes are imported when a store is built.
"""

from __future__ import annotations

from typing import Any

from mlflow_stack_server.fast_path_guard import fast_path_state
from mlflow_stack_server.settings import SettingsError, fast_store_enabled, handed_down


def _fast_store_enabled() -> bool:
    """MLFLOW_FAST_STORE, read when MLflow builds a store (MLflow calls this plugin, with no settings of ours)."""
    try:
        return fast_store_enabled()
    except SettingsError as error:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        raise MlflowException(str(error), INVALID_PARAMETER_VALUE) from None


def tracking_store(store_uri: str, artifact_uri: str | None = None) -> Any:
    """Entry point for the `postgresql` scheme: MLflow's own builder, with the fast store unless switched off or
    on an MLflow release it was not verified against (fast_path_guard.py).

    Registered after MLflow's built-in builders, so it replaces theirs for postgresql URIs only; the model
    registry, the auth database and `mlflow db upgrade` do not use this registry.
    """
    from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
    from mlflow.server.constants import READ_REPLICA_BACKEND_STORE_URI_ENV_VAR
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    from mlflow.store.tracking.sqlalchemy_workspace_store import WorkspaceAwareSqlAlchemyStore
    from mlflow.tracking._tracking_service.utils import _SERVER_ARTIFACT_ROOT_ENV_VAR

    from mlflow_stack_server.fast_store import FastSqlAlchemyStore

    if artifact_uri is None:  # as MLflow's builder: inside the server, the server's artifact root
        artifact_uri = handed_down(_SERVER_ARTIFACT_ROOT_ENV_VAR) or DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    read_db_uri = handed_down(READ_REPLICA_BACKEND_STORE_URI_ENV_VAR) or None
    if MLFLOW_ENABLE_WORKSPACES.get():
        return WorkspaceAwareSqlAlchemyStore(store_uri, artifact_uri, read_db_uri=read_db_uri)
    if fast_path_state(_fast_store_enabled()).enabled:
        return FastSqlAlchemyStore(store_uri, artifact_uri, read_db_uri=read_db_uri)
    return SqlAlchemyStore(store_uri, artifact_uri, read_db_uri=read_db_uri)
