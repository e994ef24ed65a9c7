"""MLFLOW_FAST_STORE picks the store that MLflow's registry builds for postgresql URIs."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

from tests.fast_store.conftest import REPO, fresh_database


def test_entry_point_replaces_mlflows_postgresql_builder() -> None:
    project = tomllib.loads((REPO / "tracking-server" / "pyproject.toml").read_text())
    # MLflow resolves `postgresql+psycopg2://` to the scheme `postgresql` (mlflow.utils.uri.get_uri_scheme).
    target = project["project"]["entry-points"]["mlflow.tracking_store"]["postgresql"]
    module, function = target.split(":")
    from mlflow_stack_server import store_plugin

    assert module == store_plugin.__name__ and callable(getattr(store_plugin, function))


def test_plugin_module_loads_before_mlflow() -> None:
    # MLflow loads entry points halfway through importing mlflow.tracking: the plugin must not import MLflow.
    code = "import sys; import mlflow_stack_server.store_plugin; print(sorted(m for m in sys.modules if m.startswith('mlflow.')))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO / "tracking-server", capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(("value", "fast"), [(None, True), ("on", True), ("off", False), ("OFF", False)])
def test_switch(
    migrated_server: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None, fast: bool
) -> None:
    from mlflow_stack_server.fast_store import FastSqlAlchemyStore
    from mlflow_stack_server.store_plugin import tracking_store

    if value is None:
        monkeypatch.delenv("MLFLOW_FAST_STORE", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_FAST_STORE", value)
    store = tracking_store(fresh_database(migrated_server), tmp_path.as_uri())
    assert isinstance(store, SqlAlchemyStore)
    assert isinstance(store, FastSqlAlchemyStore) is fast


def test_switch_refuses_unknown_value(
    migrated_server: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow_stack_server.store_plugin import tracking_store

    monkeypatch.setenv("MLFLOW_FAST_STORE", "fast")
    with pytest.raises(MlflowException, match="MLFLOW_FAST_STORE='fast'; expected 'on' or 'off'"):
        tracking_store(fresh_database(migrated_server), tmp_path.as_uri())
