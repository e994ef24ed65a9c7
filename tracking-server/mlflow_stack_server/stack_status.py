"""What the tracking server holds, as one JSON object on stdout (for `make status`, scripts/status.py).

Counted in the database (exact and fast at any size, including what is deleted but not yet collected by
`make gc`), read in this container because it is the one that holds the database URI.
"""

from __future__ import annotations

import json

import mlflow
import sqlalchemy

from mlflow_stack_server.console import USAGE_ERROR, Console
from mlflow_stack_server.fast_path_guard import VERIFIED_MLFLOW_VERSIONS, fast_path_state
from mlflow_stack_server.settings import Settings

CHAMPION = "champion"
# `Deleted_Internal` is the stage a deleted registered version keeps (MLflow's SQL registry).
COUNTS = {
    "experiments": "SELECT lifecycle_stage = 'active', count(*) FROM experiments GROUP BY 1",
    "runs": "SELECT lifecycle_stage = 'active', count(*) FROM runs GROUP BY 1",
    "model_versions": "SELECT current_stage <> 'Deleted_Internal', count(*) FROM model_versions GROUP BY 1",
    "logged_models": "SELECT lifecycle_stage = 'active', count(*) FROM logged_models GROUP BY 1",
}
CHAMPIONS = sqlalchemy.text("SELECT name, version FROM registered_model_aliases WHERE alias = :alias ORDER BY name")


def main() -> None:
    """Console script `stack-status`."""
    settings = Console("stack-status:", settings_error_code=USAGE_ERROR).configured(Settings.from_environment)
    engine = sqlalchemy.create_engine(settings.backend_store_uri, poolclass=sqlalchemy.pool.NullPool)
    fast_path = fast_path_state(settings.fast_store, mlflow.__version__, auth_mode=settings.auth)
    report: dict[str, object] = {
        "mlflow_version": mlflow.__version__,
        "fast_path": {
            "enabled": fast_path.enabled,
            "reason": fast_path.reason,
            "verified_mlflow_versions": list(VERIFIED_MLFLOW_VERSIONS),
            "summary": fast_path.describe(),
        },
    }
    with engine.connect() as connection:
        report["postgres_version"] = connection.execute(sqlalchemy.text("SHOW server_version")).scalar()
        for name, query in COUNTS.items():
            rows: dict[bool, int] = dict(connection.execute(sqlalchemy.text(query)).tuples().all())
            report[name] = {"live": rows.get(True, 0), "deleted": rows.get(False, 0)}
        report["champions"] = {
            model: version for model, version in connection.execute(CHAMPIONS, {"alias": CHAMPION}).tuples()
        }
    engine.dispose()
    print(json.dumps(report))
