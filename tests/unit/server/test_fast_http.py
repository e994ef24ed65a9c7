"""fast_http's request reading: plain bodies give the entities MLflow's handler builds through protobuf; anything
else is handed to MLflow's app (None). The answers over HTTP are compared with Flask's in tests/stack/test_fast_http.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.json_format import ParseDict
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.protos.service_pb2 import LogBatch, UpdateRun

from mlflow_stack_server import fast_http
from mlflow_stack_server.fast_path_auth import allow_everyone

PLAIN_BATCHES: list[dict[str, Any]] = [
    {"run_id": "r", "metrics": [{"key": "loss", "value": 0.5, "timestamp": 1, "step": 2}]},
    {"run_id": "r", "metrics": [{"key": "acc", "value": 1, "timestamp": -3}]},  # int value, no step
    {"run_id": "r", "metrics": [{"key": "big", "value": 1e308, "timestamp": 2**63 - 1, "step": -(2**63)}]},
    {"run_id": "r", "params": [{"key": "lr", "value": "0.1"}], "tags": [{"key": "t", "value": ""}]},
    {"run_id": "r"},
]
FOR_MLFLOW: list[Any] = [
    {"run_id": "r", "metrics": [{"key": "x", "value": "NaN", "timestamp": 1}]},
    {"run_id": "r", "metrics": [{"key": "x", "value": True, "timestamp": 1}]},
    {"run_id": "r", "metrics": [{"key": "x", "value": 1, "timestamp": "1"}]},
    {"run_id": "r", "metrics": [{"key": "x", "value": 1, "timestamp": 1, "step": 2**63}]},
    {"run_id": "r", "metrics": [{"key": "x", "value": 1, "timestamp": 1, "model_id": "m"}]},
    {"run_id": "r", "metrics": [{"key": "", "value": 1, "timestamp": 1}]},
    {"run_id": "r", "params": [{"key": "p", "value": 1}]},
    {"run_id": "r", "params": [{"key": "p"}]},
    {"run_id": "r", "tags": {"key": "t", "value": "v"}},
    {"run_id": "r", "metrics": [{"key": "x", "value": 10**400, "timestamp": 1}]},  # beyond a double
    {"run_id": "r", "tags": [{"key": "t", "value": "a\ud800"}]},  # a lone surrogate: protobuf stops there
    {"run_id": "r", "params": [{"key": "\udfff", "value": "v"}]},
    {"run_id": "r\ud800"},
    {"run_uuid": "r"},
    {"run_id": ""},
    {"run_id": 5},
]


def mlflows_entities(body: dict[str, Any]) -> tuple[list[Metric], list[Param], list[RunTag]]:
    """What MLflow's _log_batch handler hands the store for this body."""
    message = ParseDict(body, LogBatch())
    return (
        [Metric.from_proto(m) for m in message.metrics],
        [Param.from_proto(p) for p in message.params],
        [RunTag.from_proto(t) for t in message.tags],
    )


@pytest.mark.parametrize("body", PLAIN_BATCHES)
def test_plain_batches_give_mlflows_entities(body: dict[str, Any]) -> None:
    assert fast_http.log_batch(body) is not None
    metrics = fast_http._metrics(body.get("metrics", []))
    params = fast_http._string_pairs(body.get("params", []), Param)
    tags = fast_http._string_pairs(body.get("tags", []), RunTag)
    expected = mlflows_entities(body)
    assert metrics == expected[0]
    assert [(p.key, p.value) for p in params or []] == [(p.key, p.value) for p in expected[1]]
    assert [(t.key, t.value) for t in tags or []] == [(t.key, t.value) for t in expected[2]]


@pytest.mark.parametrize("body", FOR_MLFLOW)
def test_anything_else_goes_to_mlflows_app(body: Any) -> None:
    assert fast_http.log_batch(body) is None


def test_update_statuses_are_protobufs() -> None:
    for name in ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"):
        assert fast_http.update_run({"run_id": "r", "status": name}) is not None
        assert ParseDict({"status": name}, UpdateRun()).status == RunStatus.from_string(name)
    for odd in ({"run_id": "r", "status": "finished"}, {"run_id": "r", "status": 3}, {"run_id": "r", "run_name": "n"}):
        assert fast_http.update_run(odd) is None


def test_set_tag_needs_all_three_strings() -> None:
    assert fast_http.set_tag({"run_id": "r", "key": "k", "value": ""}) is not None
    for odd in ({"run_id": "r", "key": "k"}, {"run_id": "r", "key": "k", "value": 1}, {"run_uuid": "r", "key": "k"},
                {"run_id": "r", "key": "k", "value": "a\ud800b"}):  # fmt: skip
        assert fast_http.set_tag(odd) is None


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,  # RecursionError in json.loads
        b'{"run_id": "r", "metrics": [{"key": "k", "value": 1' + b"0" * 400 + b', "timestamp": 1}]}',
        b'{"run_id": "\xff"}',  # not UTF-8
        b'{"run_id": "r", "tags": [{"key": "t", "value": "\\ud800"}]}',
    ],
    ids=["nested too deep", "400 digits", "not UTF-8", "lone surrogate"],
)
def test_bodies_it_cannot_read_plainly_go_to_mlflows_app(body: bytes) -> None:
    writes = fast_http.FastTrackingWrites(None, allow_everyone)  # type: ignore[arg-type]
    scope = {"headers": [(b"content-type", b"application/json")], "path": "/api/2.0/mlflow/runs/log-batch"}
    assert writes._fast_call(scope, body) is None


def test_create_run_answers_a_clients_plain_shape_decided_on_its_experiment() -> None:
    plain = {"experiment_id": "3", "start_time": 1, "user_id": "u", "run_name": "", "tags": [{"key": "k", "value": ""}]}
    for body in (plain, {"experiment_id": "3", "start_time": 0}):
        made = fast_http.create_run(body)
        assert made is not None and made[0] == "3"
    for odd in (
        {"start_time": 1},  # no experiment: MLflow's error
        {"experiment_id": "3"},  # no start_time: protobuf's default, MLflow's app
        {"experiment_id": 3, "start_time": 1},
        {"experiment_id": "", "start_time": 1},
        {"experiment_id": "3", "start_time": "1"},
        {"experiment_id": "3", "start_time": 2**63},
        {"experiment_id": "3", "start_time": True},
        {"experiment_id": "3", "start_time": 1, "run_name": None},
        {"experiment_id": "3", "start_time": 1, "user_id": 7},
        {"experiment_id": "3", "start_time": 1, "tags": [{"key": "", "value": "v"}]},
        {"experiment_id": "3", "start_time": 1, "tags": {"k": "v"}},
        {"experiment_id": "3", "start_time": 1, "run_name": "\ud800"},
        {"experiment_id": "3", "start_time": 1, "experimentId": "3"},  # an alias: MLflow's app
    ):
        assert fast_http.create_run(odd) is None, odd


def test_a_created_run_is_learned_and_answered_as_mlflow_builds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.entities import Run, RunData, RunInfo, RunInputs
    from mlflow.protos.service_pb2 import CreateRun
    from mlflow.server import handlers
    from mlflow.utils.proto_json_utils import message_to_json

    info = RunInfo("r1", "3", "u", "RUNNING", 1, None, "active", artifact_uri="s3://b/3/r1/artifacts", run_name="n")
    run = Run(info, RunData(metrics=[], params=[], tags=[RunTag("mlflow.runName", "n")]), RunInputs([]))
    asked: list[dict[str, Any]] = []

    class Store:
        def create_run(self, **fields: Any) -> Run:
            asked.append(fields)
            return run

    monkeypatch.setattr(handlers, "_get_tracking_store", Store)
    learned: list[tuple[str, str]] = []
    made = fast_http.create_run({"experiment_id": "3", "start_time": 1}, learn=lambda *pair: learned.append(pair))
    assert made is not None
    status, body = made[1]()
    assert (status, body) == (200, message_to_json(CreateRun.Response(run=run.to_proto())).encode())
    assert asked == [{"experiment_id": "3", "user_id": "", "start_time": 1, "tags": [], "run_name": ""}]
    assert learned == [("r1", "3")]


FAST_PATHS = [f"{prefix}/2.0/mlflow/runs/{name}" for prefix in ("/api", "/ajax-api")
              for name in ("create", "log-batch", "set-tag", "update")]  # fmt: skip


def test_mlflows_basic_auth_has_no_after_request_handler_for_the_fast_paths_calls() -> None:
    """The fast path answers these calls without Flask, so Flask's after-request hooks do not run for them: a
    release of MLflow's auth app that does something after one of them (a grant to a run's creator, say) fails
    here."""
    import mlflow.server.auth as mlflow_auth

    for path in FAST_PATHS:
        assert mlflow_auth.AFTER_REQUEST_HANDLERS.get((path, "POST")) is None, path
        assert not [rule for (rule, method) in mlflow_auth.PARAMETERIZED_AFTER_REQUEST_HANDLERS
                    if method == "POST" and rule.fullmatch(path)], path  # fmt: skip


PLUGINS_AFTER_REQUEST = """
import json
from mlflow_oidc_auth.hooks import after_request
paths = [p + "/2.0/mlflow/runs/" + n for p in ("/api", "/ajax-api") for n in ("create", "log-batch", "set-tag", "update")]
print(json.dumps([after_request.AFTER_REQUEST_HANDLERS.get((path, "POST")) is None for path in paths]))
"""


def test_the_oidc_plugin_has_no_after_request_handler_for_the_fast_paths_calls(tmp_path: Any) -> None:
    """As above, for mlflow-oidc-auth (imported in its own interpreter: importing it reads its configuration)."""
    import json
    import subprocess
    import sys

    answer = subprocess.run(
        [sys.executable, "-c", PLUGINS_AFTER_REQUEST], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert json.loads(answer.stdout.strip().splitlines()[-1]) == [True] * 8
