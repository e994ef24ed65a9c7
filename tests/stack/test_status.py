"""`make status`: services, versions, volumes, what the server holds, the champion, the newest backup."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from mlflow import MlflowClient

from tests.stack.conftest import REPO, Names, compose, object_store


def test_status_reports_the_running_stack(client: MlflowClient, names: Names, tmp_path: Path) -> None:
    # Something of ours to find: a model whose version 1 is the champion, and a backup taken 2 hours ago.
    model = f"{names.model}-status"
    experiment_id = client.create_experiment(f"{names.experiment}-status")
    run = client.create_run(experiment_id)
    client.create_registered_model(model)
    client.create_model_version(model, f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias(model, "champion", "1")
    two_hours_ago = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 7200))
    (tmp_path / two_hours_ago).mkdir()

    started = time.monotonic()
    result = subprocess.run(
        ["make", "--no-print-directory", "status"], cwd=REPO, capture_output=True, text=True, timeout=300,
        check=False, env={**os.environ, "STATUS_BACKUP_DIR": str(tmp_path)},
    )  # fmt: skip
    print(f"make status: {time.monotonic() - started:.1f} s")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    store = object_store()
    for service in ("postgres", store, "tracking-server"):
        assert re.search(rf"^  {service} +running +healthy ", out, re.MULTILINE), out
    assert re.search(r"^  tracking-server +running +healthy +mlflow 3\.17\.2$", out, re.MULTILINE), out
    assert re.search(r"^  postgres +running +healthy +postgres \(PostgreSQL\) \d+\.", out, re.MULTILINE), out
    project = os.environ.get("COMPOSE_PROJECT_NAME", "mlflow-stack")
    if store == "seaweedfs":
        assert re.search(r"^  seaweedfs +running +healthy +seaweedfs \d+\.\d+$", out, re.MULTILINE), out
    for volume in ("postgres-data", f"{store}-data", "secrets"):
        assert re.search(rf"^  {project}_{volume} +\d+(\.\d)? (B|KiB|MiB|GiB)$", out, re.MULTILINE), out
    assert f"{model} v1" in out
    assert re.search(r"^  fast path +on \(MLflow 3\.17\.2, a verified version\)$", out, re.MULTILINE), out
    assert f"newest                   {two_hours_ago} (2.0 h old)" in out

    # The counts are the server's own (compared with the API, right after, nothing else deleting meanwhile).
    held = json.loads(compose("exec", "-T", "tracking-server", "stack-status").stdout)
    assert held["experiments"]["live"] == len(client.search_experiments(max_results=1000))
    assert held["champions"][model] == 1
    assert re.search(rf"^  experiments +{held['experiments']['live']} \(\+\d+ deleted", out, re.MULTILINE), out


def test_status_exits_1_without_a_stack(tmp_path: Path) -> None:
    result = subprocess.run(
        ["python3", str(REPO / "scripts/status.py")], cwd=REPO, capture_output=True, text=True, timeout=120,
        check=False, env={**os.environ, "COMPOSE_PROJECT_NAME": os.environ.get("COMPOSE_PROJECT_NAME", "mlflow-stack") + "-nothing", "STATUS_BACKUP_DIR": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the stack is not running" in result.stdout
    assert "none (`make backup`)" in result.stdout
