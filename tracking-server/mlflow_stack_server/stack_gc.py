"""Permanently remove what users deleted: runs, experiments, logged models, and their files in the bucket.

    stack-gc [--older-than 30d]     (inside the tracking-server container: `make gc [OLDER_THAN=30d]`)

`mlflow gc` does the work, run here because this container holds the database URI, and pointed at this
very server (MLFLOW_TRACKING_URI) so that the `mlflow-artifacts:` URIs of proxied artifacts resolve
(mlflow#7558: without it their files stay in S3). Its S3 deletion pages by 1000 keys since 2.x
(mlflow#14654; S3ArtifactRepository.delete_artifacts in 3.17.2).

What `mlflow gc` leaves behind (mlflow#17240): in MLflow 3 a model's files live under
`<experiment>/models/<model id>/`, not under its run, and deleting a run (or a registered version) does
not delete its logged models. So before calling it, this program also removes every logged model whose
source run was deleted (or no longer exists) or whose experiment was deleted, earlier than --older-than,
unless a live registered version still points at it: a deleted version's files go once its run goes, a
champion's files never do.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from contextlib import ExitStack
from datetime import timedelta

import sqlalchemy

from mlflow_stack_server.console import USAGE_ERROR, Console
from mlflow_stack_server.settings import Settings, SettingsError

console = Console("stack-gc:", error_label="", settings_error_code=USAGE_ERROR)
log = console.log

# The same duration grammar `mlflow gc --older-than` accepts (mlflow/cli/__init__.py, gc).
DURATION = re.compile(
    r"^((?P<days>[\.\d]+?)d)?((?P<hours>[\.\d]+?)h)?((?P<minutes>[\.\d]+?)m)?((?P<seconds>[\.\d]+?)s)?$"
)

# Active logged models that nothing alive needs any more. `Deleted_Internal` is the stage a deleted
# registered version keeps (mlflow/store/model_registry/sqlalchemy_store.py, delete_model_version).
ORPHANED_LOGGED_MODELS = sqlalchemy.text(
    """
    SELECT lm.model_id, lm.artifact_location
    FROM logged_models lm
    JOIN experiments e ON e.experiment_id = lm.experiment_id
    LEFT JOIN runs r ON r.run_uuid = lm.source_run_id
    WHERE lm.lifecycle_stage = 'active'
      AND (
        (r.run_uuid IS NOT NULL AND r.lifecycle_stage = 'deleted' AND COALESCE(r.deleted_time, 0) <= :before)
        OR (lm.source_run_id IS NOT NULL AND r.run_uuid IS NULL)
        OR (e.lifecycle_stage = 'deleted' AND COALESCE(e.last_update_time, 0) <= :before)
      )
      AND NOT EXISTS (
        SELECT 1 FROM model_versions mv
        WHERE mv.current_stage <> 'Deleted_Internal'
          AND (mv.storage_location = lm.artifact_location OR mv.source = 'models:/' || lm.model_id)
      )
    ORDER BY lm.model_id
    """
)


def parse_duration(text: str) -> timedelta:
    parts = DURATION.match(text)
    fields = {name: float(value) for name, value in parts.groupdict().items() if value} if parts else {}
    if not fields:
        raise SettingsError(f"--older-than {text!r}: expected a duration like 30d, 12h, 1d6h or 90m")
    return timedelta(**fields)


def remove_orphaned_logged_models(settings: Settings, before_ms: int) -> int:
    """Delete the files (through the server) and then the record of every orphaned logged model."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    engine = sqlalchemy.create_engine(settings.backend_store_uri, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as connection:
        orphans = connection.execute(ORPHANED_LOGGED_MODELS, {"before": before_ms}).all()
    engine.dispose()
    if not orphans:
        return 0
    store = SqlAlchemyStore(settings.backend_store_uri, "mlflow-artifacts:/")
    for model_id, artifact_location in orphans:
        get_artifact_repository(artifact_location).delete_artifacts()
        # The same two steps as `mlflow gc --logged-model-ids` (soft delete first: gc's own precondition).
        store.delete_logged_model(model_id)
        store._hard_delete_logged_model(model_id)
        log(f"logged model {model_id} of a deleted run/experiment: files and record removed")
    return len(orphans)


def run_mlflow_gc(settings: Settings, older_than: str | None) -> None:
    from mlflow.cli import cli

    # In-process, not a subprocess: the URI (with the database password) stays out of `ps`.
    args = ["gc", "--backend-store-uri", settings.backend_store_uri]
    if older_than:
        args += ["--older-than", older_than]
    try:
        cli.main(args=args, prog_name="mlflow", standalone_mode=False)
    except SystemExit as done:
        if done.code not in (0, None):
            raise


def main(argv: list[str] | None = None) -> None:
    """Console script `stack-gc [--older-than 30d]`."""
    parser = argparse.ArgumentParser(prog="stack-gc", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--older-than", default="", help="keep what was deleted less than this long ago (30d, 12h)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    age = console.configured(lambda: parse_duration(args.older_than) if args.older_than else timedelta(0))
    settings = console.configured(Settings.from_environment)
    settings.export_secrets()
    # Handed to MLflow's gc in this process: artifacts are deleted through a tracking server's proxy, where
    # `mlflow-artifacts:` URIs resolve (this container's, or the Service when gc runs in a pod of its own).
    os.environ["MLFLOW_TRACKING_URI"] = settings.gc_tracking_uri or f"http://localhost:{settings.port}"
    if settings.auth == "basic":
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = settings.admin
    before_ms = int((time.time() - age.total_seconds()) * 1000)
    try:
        with ExitStack() as login:
            if settings.auth == "oidc":
                # No admin password exists: an admin service account's token for this run only.
                from mlflow_stack_server.stack_token import admin_token

                user, token = login.enter_context(admin_token(settings))
                os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, token
            models = remove_orphaned_logged_models(settings, before_ms)
            run_mlflow_gc(settings, args.older_than or None)
    except Exception as error:  # one line for the operator; nothing is half-deleted that a rerun cannot finish
        console.fail(f"failed: {type(error).__name__}: {error}")
    log(f"done in {time.monotonic() - started:.1f} s ({models} orphaned logged models removed)")
