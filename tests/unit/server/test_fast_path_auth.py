"""The fast path's authorization step (fast_http._authorized_run, fast_path_auth.RunExperiments): a refusal is sent
as the auth app words it, and any failure of the hook hands the request to MLflow's app, unwritten."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from mlflow_stack_server import fast_http
from mlflow_stack_server.fast_path_auth import HandToMlflowError, Refusal, RunExperiments, allow_everyone

SCOPE: dict[str, Any] = {"type": "http", "method": "POST", "path": "/api/2.0/mlflow/runs/set-tag", "headers": []}


def _decide(authorize: Any) -> tuple[Any, list[str]]:
    """(what _authorized_run returns, the writes it made)."""
    written: list[str] = []

    def write() -> fast_http.Answer:
        written.append("written")
        return 200, b"{}"

    return fast_http._authorized_run(authorize, SCOPE, b"{}", write), written


def test_allowed_writes_and_answers_json() -> None:
    assert _decide(allow_everyone) == ((200, fast_http.JSON_HEADERS, b"{}"), ["written"])


def test_a_refusal_is_sent_as_the_auth_app_words_it_and_nothing_is_written() -> None:
    refusal: Refusal = (
        401,
        [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", b"9"), (b"www-authenticate", b"Basic")],
        b"no login!",
    )
    reply, written = _decide(lambda scope, body: refusal)
    # Its own length is recomputed by the sender (fast_http._answer): the auth app's is dropped.
    assert reply == (
        401,
        [(b"content-type", b"text/html; charset=utf-8"), (b"www-authenticate", b"Basic")],
        b"no login!",
    )
    assert written == []


@pytest.mark.parametrize(
    "failure",
    [HandToMlflowError("the auth app answered 500"), RuntimeError("database gone"), MlflowException("odd")],
    ids=["another answer of the auth app", "an unexpected error", "an MLflow error"],
)
def test_any_failure_of_the_hook_hands_the_request_to_mlflows_app(failure: Exception) -> None:
    def authorize(scope: Any, body: bytes) -> Refusal | None:
        raise failure

    assert _decide(authorize) == (None, [])


class CountingStore:
    def __init__(self) -> None:
        self.loaded: list[str] = []

    def get_run(self, run_id: str) -> Any:
        self.loaded.append(run_id)
        if run_id == "unknown":
            raise MlflowException(f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST)
        return type("Run", (), {"info": type("Info", (), {"experiment_id": "7", "run_id": run_id})()})()

    def get_experiment(self, experiment_id: str) -> str:
        return f"experiment {experiment_id}"


def test_a_runs_experiment_is_loaded_once_and_a_missing_run_every_time() -> None:
    store = CountingStore()
    runs = RunExperiments(store, OrderedDict(), threading.Lock())
    assert [runs.get_run("r").info.experiment_id for _ in range(3)] == ["7", "7", "7"]
    for _ in range(2):
        with pytest.raises(MlflowException, match="not found"):
            runs.get_run("unknown")
    assert store.loaded == ["r", "unknown", "unknown"]
    assert runs.get_experiment("7") == "experiment 7"  # everything else: the store's own
