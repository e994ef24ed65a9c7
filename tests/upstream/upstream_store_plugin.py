"""A pytest plugin that points MLflow's own store tests at a throwaway PostgreSQL and at the store under test.

Loaded with `-p upstream_store_plugin` by scripts/upstream-store-tests.sh, inside a checkout of MLflow's tests
(outside this repository: their code is not ours to commit). It is a plugin, not a conftest, because MLflow's
checkout has its own `tests` package and this repository's would shadow it.

- UPSTREAM_STORE=mlflow|fast picks the class MLflow's `store` fixture builds: MLflow's SqlAlchemyStore or
  our FastSqlAlchemyStore. The fixture (tests/store/tracking/sqlalchemy_store/conftest.py upstream) builds
  `SqlAlchemyStore(MLFLOW_TRACKING_URI, ...)` and empties the tables after each test; this plugin sets the URI
  to a migrated database in a fresh container and swaps the class name the fixture looks up.
- UPSTREAM_SELECTED names a file of test names (tests/upstream/selected_tests.txt); only those run, with the
  `workspace-disabled` parameter. A listed name the checkout does not have stops the run: a renamed test must
  be noticed, not silently dropped. Names marked `fast-xfail:` are strict xfails on the fast store only.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
UPSTREAM_STORE_FIXTURES = "tests.store.tracking.sqlalchemy_store.conftest"
STORES = ("mlflow", "fast")
SELECTED = Path(os.environ.get("UPSTREAM_SELECTED", REPO / "tests/upstream/selected_tests.txt"))
XFAIL_FAST = "fast-xfail:"
_containers = ExitStack()


def _our_store_fixtures() -> ModuleType:
    """tests/fast_store/conftest.py of this repository, under a name that cannot clash with MLflow's `tests`."""
    spec = importlib.util.spec_from_file_location("mlflow_stack_store_fixtures", REPO / "tests/fast_store/conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _store_name() -> str:
    name = os.environ.get("UPSTREAM_STORE", "fast")
    if name not in STORES:
        raise pytest.UsageError(f"UPSTREAM_STORE={name!r}; expected one of {', '.join(STORES)}")
    return name


def selected_tests(path: Path = SELECTED) -> dict[str, str | None]:
    """Test name -> the reason the fast store is expected to fail it (None: expected to pass)."""
    selected: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(XFAIL_FAST)
        selected[name.strip()] = reason.strip() or None
    return selected


def pytest_configure(config: pytest.Config) -> None:
    _store_name()
    fixtures = _our_store_fixtures()
    server = _containers.enter_context(fixtures.postgres_container())
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        database = fixtures.create_database(server)
        artifacts = (Path(str(config.rootpath)) / ".upstream-artifacts").as_uri()
        SqlAlchemyStore(database, artifacts).engine.dispose()  # migrates the schema once
        SqlAlchemyStore._engine_map.pop(database, None)
    except BaseException:
        _containers.close()  # pytest does not unconfigure a plugin whose configure failed
        raise
    # MLflow's store fixture reads this at each test and empties the tables afterwards. MLflow's CI sets
    # DISABLE_RESET_MLFLOW_URI_FIXTURE for its database runs too: otherwise its root conftest drops the URI
    # after the first test and the rest run on SQLite.
    os.environ["MLFLOW_TRACKING_URI"] = database
    os.environ["DISABLE_RESET_MLFLOW_URI_FIXTURE"] = "1"


def pytest_unconfigure(config: pytest.Config) -> None:
    _containers.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = selected_tests()
    fast = _store_name() == "fast"
    kept: list[pytest.Item] = []
    found: set[str] = set()
    for item in items:
        name = getattr(item, "originalname", item.name)
        if name in wanted and "workspace-disabled" in item.name:
            kept.append(item)
            found.add(name)
            reason = wanted[name]
            if fast and reason:
                item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
    missing = sorted(set(wanted) - found)
    if missing:
        raise pytest.UsageError(f"selected upstream tests not in this checkout: {', '.join(missing)}")
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


@pytest.fixture(autouse=True)
def _store_under_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """The class MLflow's `store` fixture instantiates (it looks the name up in its module at each call)."""
    upstream: Any = sys.modules[UPSTREAM_STORE_FIXTURES]
    if _store_name() == "fast":
        from mlflow_stack_server.fast_store import FastSqlAlchemyStore

        monkeypatch.setattr(upstream, "SqlAlchemyStore", FastSqlAlchemyStore)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    """Each test really got the store under test, on PostgreSQL (not MLflow's SQLite default)."""
    store = getattr(item, "funcargs", {}).get("store")
    if store is None:
        return
    from mlflow_stack_server.fast_store import FastSqlAlchemyStore

    assert store.db_type == "postgresql", f"{item.nodeid} got a {store.db_type} store"
    assert isinstance(store, FastSqlAlchemyStore) is (_store_name() == "fast"), type(store)


def pytest_report_header(config: pytest.Config) -> str:
    return f"upstream store tests against: {_store_name()} store, PostgreSQL {os.environ.get('POSTGRES_IMAGE', '')}"
