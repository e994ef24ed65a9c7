"""The hot tracking writes answered without Flask (fast_http.py) answer exactly what MLflow's Flask handlers answer.

The same requests, good and bad, go to the stack's server (fast path and fast store) and to a second server of the
same image started with MLFLOW_FAST_STORE=off (MLflow's Flask handlers and MLflow's own store), each on a run of its
own in the same state; status, error_code and message must be equal (run ids masked), and so must the runs they
leave behind. The authenticated side (MLFLOW_AUTH=basic: the fast path asks the basic-auth app first) is in test_auth.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.stack.conftest import MLFLOW_PORT, STACK_URL, compose
from tests.support.prometheus import sample, scrape
from tests.support.waiting import wait_until

# The reference server's port: its own, next to the stack's (MLFLOW_PORT + 7: 5007 in CI).
REFERENCE_PORT = int(os.environ.get("FAST_HTTP_REFERENCE_PORT", str(MLFLOW_PORT + 7)))
REFERENCE_NAME = f"{os.environ.get('COMPOSE_PROJECT_NAME', 'mlflow-stack')}-flask-reference"
UNKNOWN_RUN = "0" * 32
NOW = 1_700_000_000_000


@dataclass(frozen=True)
class Server:
    url: str
    experiment_id: str
    active_run: str
    deleted_run: str

    def post(self, path: str, body: Any = None, raw: bytes | None = None, content_type: str = "application/json",
             prefix: str = "/api/2.0/mlflow") -> requests.Response:  # fmt: skip
        data = raw if raw is not None else json.dumps(body).encode()
        return requests.post(self.url + prefix + path, data=data, headers={"Content-Type": content_type}, timeout=60)

    def mask(self, text: str) -> str:
        return text.replace(self.active_run, "<active>").replace(self.deleted_run, "<deleted>")

    def run(self, run_id: str) -> dict[str, Any]:
        response = requests.get(self.url + "/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=60)
        assert response.status_code == 200, response.text
        return dict(response.json()["run"])


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120, check=False)


def _prepared(url: str) -> Server:
    api = url + "/api/2.0/mlflow"
    experiment = requests.post(api + "/experiments/create", json={"name": f"fast-http-{uuid.uuid4().hex}"}, timeout=60)
    assert experiment.status_code == 200, experiment.text
    experiment_id = experiment.json()["experiment_id"]
    runs = []
    for name in ("active", "deleted"):
        body = {"experiment_id": experiment_id, "start_time": NOW, "run_name": name}
        created = requests.post(api + "/runs/create", json=body, timeout=60)
        assert created.status_code == 200, created.text
        runs.append(created.json()["run"]["info"]["run_id"])
    logged = requests.post(
        api + "/runs/log-parameter", json={"run_id": runs[0], "key": "lr", "value": "0.1"}, timeout=60
    )
    assert logged.status_code == 200, logged.text
    assert requests.post(api + "/runs/delete", json={"run_id": runs[1]}, timeout=60).status_code == 200
    return Server(url, experiment_id, runs[0], runs[1])


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Server, Server]]:
    """(the stack's server, a reference server of the same image with MLFLOW_FAST_STORE=off)."""
    _docker("rm", "-f", REFERENCE_NAME)
    compose(
        "run", "--detach", "--no-deps", "--name", REFERENCE_NAME, "-e", "MLFLOW_FAST_STORE=off",
        "-e", "MLFLOW_WORKERS=1", "--publish", f"127.0.0.1:{REFERENCE_PORT}:5000", "tracking-server",
    )  # fmt: skip
    try:
        reference_url = f"http://localhost:{REFERENCE_PORT}"
        wait_until(
            lambda: requests.get(reference_url + "/health", timeout=5).status_code == 200, 240,
            lambda: _docker("logs", "--tail", "40", REFERENCE_NAME).stdout, interval=1,
            ignoring=(requests.RequestException,),
        )  # fmt: skip
        yield _prepared(STACK_URL), _prepared(reference_url)
    finally:
        _docker("rm", "-f", REFERENCE_NAME)


def _metric(**fields: Any) -> dict[str, Any]:
    return {"key": "loss", "value": 0.5, "timestamp": NOW, "step": 1, **fields}


# (name, path, body): "<active>" / "<deleted>" in the body stand for each server's own runs.
CASES: list[tuple[str, str, Any]] = [
    ("batch: metrics, params and tags", "/runs/log-batch",
     {"run_id": "<active>", "metrics": [_metric(), _metric(step=2, value=0.25), _metric(key="acc", value=1)],
      "params": [{"key": "lr", "value": "0.1"}, {"key": "epochs", "value": "5"}],
      "tags": [{"key": "team", "value": "a"}, {"key": "team", "value": "b"}]}),
    ("batch: same batch again (a client's retry)", "/runs/log-batch",
     {"run_id": "<active>", "metrics": [_metric(), _metric(step=2, value=0.25)]}),
    ("batch: metric without step", "/runs/log-batch",
     {"run_id": "<active>", "metrics": [{"key": "nostep", "value": 3, "timestamp": NOW}]}),
    ("batch: value 0 and negative timestamp", "/runs/log-batch",
     {"run_id": "<active>", "metrics": [_metric(key="zero", value=0, timestamp=-5)]}),
    ("batch: changed param value", "/runs/log-batch", {"run_id": "<active>", "params": [{"key": "lr", "value": "0.2"}]}),
    ("batch: NaN and infinite metrics", "/runs/log-batch",
     {"run_id": "<active>", "metrics": [_metric(key="nan", value="NaN"), _metric(key="inf", value="Infinity")]}),
    ("batch: metric value not a number", "/runs/log-batch", {"run_id": "<active>", "metrics": [_metric(value="abc")]}),
    ("batch: metric value a bool", "/runs/log-batch", {"run_id": "<active>", "metrics": [_metric(value=True)]}),
    ("batch: timestamp a string", "/runs/log-batch", {"run_id": "<active>", "metrics": [_metric(timestamp="x")]}),
    ("batch: step a float", "/runs/log-batch", {"run_id": "<active>", "metrics": [_metric(step=1.5)]}),
    ("batch: step beyond int64", "/runs/log-batch", {"run_id": "<active>", "metrics": [_metric(step=2**63)]}),
    ("batch: timestamp missing", "/runs/log-batch", {"run_id": "<active>", "metrics": [{"key": "a", "value": 1}]}),
    ("batch: metric key invalid", "/runs/log-batch", {"run_id": "<active>", "metrics": [_metric(key="../up")]}),
    ("batch: param value a number", "/runs/log-batch", {"run_id": "<active>", "params": [{"key": "n", "value": 5}]}),
    ("batch: param key too long", "/runs/log-batch", {"run_id": "<active>", "params": [{"key": "k" * 300, "value": "v"}]}),
    ("batch: param value too long", "/runs/log-batch",
     {"run_id": "<active>", "params": [{"key": "long", "value": "v" * 9000}]}),
    ("batch: duplicate param keys", "/runs/log-batch",
     {"run_id": "<active>", "params": [{"key": "d", "value": "1"}, {"key": "d", "value": "2"}]}),
    ("batch: 1001 metrics", "/runs/log-batch",
     {"run_id": "<active>", "metrics": [_metric(step=i) for i in range(1001)]}),
    ("batch: 101 params", "/runs/log-batch",
     {"run_id": "<active>", "params": [{"key": f"p{i}", "value": "v"} for i in range(101)]}),
    ("batch: metrics not a list", "/runs/log-batch", {"run_id": "<active>", "metrics": {"key": "a"}}),
    ("batch: run_id a number", "/runs/log-batch", {"run_id": 123, "metrics": [_metric()]}),
    ("batch: run_id missing", "/runs/log-batch", {"metrics": [_metric()]}),
    ("batch: unknown field", "/runs/log-batch", {"run_id": "<active>", "bogus": 1}),
    ("batch: empty object", "/runs/log-batch", {}),
    ("batch: unknown run", "/runs/log-batch", {"run_id": UNKNOWN_RUN, "metrics": [_metric()]}),
    ("batch: deleted run", "/runs/log-batch", {"run_id": "<deleted>", "metrics": [_metric()]}),
    ("batch: JSON list", "/runs/log-batch", [1, 2]),
    ("tag: set", "/runs/set-tag", {"run_id": "<active>", "key": "stage", "value": "train"}),
    ("tag: overwrite", "/runs/set-tag", {"run_id": "<active>", "key": "stage", "value": "eval"}),
    ("tag: value missing", "/runs/set-tag", {"run_id": "<active>", "key": "empty"}),
    ("tag: key missing", "/runs/set-tag", {"run_id": "<active>", "value": "x"}),
    ("tag: key invalid", "/runs/set-tag", {"run_id": "<active>", "key": "/abs", "value": "x"}),
    ("tag: value a number", "/runs/set-tag", {"run_id": "<active>", "key": "n", "value": 1}),
    ("tag: unknown run", "/runs/set-tag", {"run_id": UNKNOWN_RUN, "key": "a", "value": "b"}),
    ("tag: deleted run", "/runs/set-tag", {"run_id": "<deleted>", "key": "a", "value": "b"}),
    ("update: status unknown", "/runs/update", {"run_id": "<active>", "status": "BOGUS"}),
    ("update: end_time a string", "/runs/update", {"run_id": "<active>", "end_time": "soon"}),
    ("update: unknown run", "/runs/update", {"run_id": UNKNOWN_RUN, "status": "FINISHED"}),
    ("update: deleted run", "/runs/update", {"run_id": "<deleted>", "status": "FINISHED", "end_time": NOW + 1}),
    ("update: finish", "/runs/update", {"run_id": "<active>", "status": "FINISHED", "end_time": NOW + 10}),
    ("update: status only", "/runs/update", {"run_id": "<active>", "status": "FAILED"}),
    ("batch: after the run finished", "/runs/log-batch", {"run_id": "<active>", "metrics": [_metric(step=3)]}),
]  # fmt: skip


def _body_for(server: Server, body: Any) -> Any:
    text = json.dumps(body).replace("<active>", server.active_run).replace("<deleted>", server.deleted_run)
    return json.loads(text)


def _outcome(server: Server, response: requests.Response) -> tuple[int, Any]:
    try:
        payload = response.json()
    except ValueError:
        return response.status_code, server.mask(response.text)
    if isinstance(payload, dict) and "run_info" in payload:
        info = payload["run_info"]  # ids and times differ per server; what the call changed must not
        different = ("run_id", "run_uuid", "experiment_id", "artifact_uri")  # per server by construction
        payload = {"run_info": {k: v for k, v in info.items() if k not in different}}
    if isinstance(payload, dict) and "run_info" not in payload and payload:
        payload = {k: server.mask(str(v)) for k, v in payload.items() if k in ("error_code", "message")}
    return response.status_code, payload


def test_same_answers_as_mlflows_flask_handlers(servers: tuple[Server, Server]) -> None:
    fast, reference = servers
    mismatches = []
    for name, path, body in CASES:
        for prefix in ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow"):  # MLflow serves both
            got = _outcome(fast, fast.post(path, _body_for(fast, body), prefix=prefix))
            expected = _outcome(reference, reference.post(path, _body_for(reference, body), prefix=prefix))
            if got != expected:
                mismatches.append(f"{name} ({prefix}): fast {got} != MLflow's {expected}")
    assert not mismatches, "\n".join(mismatches)


def test_bodies_flask_rejects_before_parsing(servers: tuple[Server, Server]) -> None:
    fast, reference = servers
    for raw, content_type in [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (json.dumps({"run_id": "x"}).encode(), "text/plain"),
        (json.dumps(json.dumps({"run_id": "x", "metrics": []})).encode(), "application/json"),  # double-encoded
    ]:
        got = _outcome(fast, fast.post("/runs/log-batch", raw=raw, content_type=content_type))
        expected = _outcome(reference, reference.post("/runs/log-batch", raw=raw, content_type=content_type))
        assert got == expected, (raw, content_type)


def _comparable(server: Server, run: dict[str, Any]) -> dict[str, Any]:
    data = run["data"]

    def by_key(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {item["key"]: {k: v for k, v in item.items() if k != "key"} for item in items}

    tags = {k: v for k, v in by_key(data.get("tags", [])).items() if not k.startswith("mlflow.")}
    info = {k: run["info"].get(k) for k in ("status", "end_time", "lifecycle_stage")}
    return {"metrics": by_key(data.get("metrics", [])), "params": by_key(data.get("params", [])), "tags": tags,
            "info": info}  # fmt: skip


def test_runs_left_in_the_same_state(servers: tuple[Server, Server]) -> None:
    # After test_same_answers_as_mlflows_flask_handlers: every accepted write, on either path, is stored alike.
    fast, reference = servers
    assert _comparable(fast, fast.run(fast.active_run)) == _comparable(reference, reference.run(reference.active_run))
    history = "/api/2.0/mlflow/metrics/get-history"
    histories = [
        requests.get(s.url + history, params={"run_id": s.active_run, "metric_key": "loss"}, timeout=60).json()
        for s in servers
    ]
    assert histories[0] == histories[1]


def test_fast_path_answers_and_is_counted_per_endpoint(servers: tuple[Server, Server]) -> None:
    """The stack's per-endpoint metrics count the fast path's answers; MLflow's Flask exporter does not see them,
    which shows they were not answered by Flask."""
    fast, _ = servers
    run = requests.post(STACK_URL + "/api/2.0/mlflow/runs/create",
                        json={"experiment_id": fast.experiment_id, "start_time": NOW}, timeout=60).json()  # fmt: skip
    run_id = run["run"]["info"]["run_id"]
    labels = {"method": "POST", "endpoint": "/api/2.0/mlflow/runs/log-batch", "status": "200"}
    before = scrape(STACK_URL)
    for step in range(40):
        assert fast.post("/runs/log-batch", {"run_id": run_id, "metrics": [_metric(step=step)]}).status_code == 200

    def all_counted() -> str | None:  # a worker counts a request after its last byte: wait for the last increments
        text = scrape(STACK_URL)
        counted = sample(text, "mlflow_stack_http_requests_total", **labels)
        return text if counted - sample(before, "mlflow_stack_http_requests_total", **labels) >= 40 else None

    after = wait_until(all_counted, 10, "the fast path's 40 writes are not all counted within 10 s")
    assert (
        sample(after, "mlflow_stack_http_requests_total", **labels)
        - sample(before, "mlflow_stack_http_requests_total", **labels)
        == 40
    )
    # Flask saw at most the healthchecks and the scrapes in between, not the 40 writes.
    flask = sample(after, "mlflow_http_request_total") - sample(before, "mlflow_http_request_total")
    assert flask < 20, f"Flask answered {flask} requests during 40 fast-path writes"
