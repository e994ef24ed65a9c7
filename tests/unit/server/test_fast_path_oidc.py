"""The allowance key of an oidc fast-path decision (fast_path_oidc.oidc_decision_key): everything the plugin's
decision on a fast-path write depends on besides the grants, and no key where that is not clear."""

from __future__ import annotations

import json

from mlflow_oidc_auth.entities.auth_context import AUTH_CONTEXT_KEY, AuthContext

from mlflow_stack_server.fast_path_oidc import oidc_decision_key

PATH = "/api/2.0/mlflow/runs/log-batch"


def scope(username: str | None = "bob", query: bytes = b"") -> dict[str, object]:
    found = {} if username is None else {AUTH_CONTEXT_KEY: AuthContext(username=username, is_admin=False)}
    return {"type": "http", "method": "POST", "path": PATH, "query_string": query, "headers": [], **found}


def test_the_key_is_caller_method_path_and_run() -> None:
    body = json.dumps({"run_id": "r1", "metrics": []}).encode()
    assert oidc_decision_key(scope(), body) == ("bob", "POST", PATH, "r1")
    assert oidc_decision_key(scope("alice"), body) != oidc_decision_key(scope(), body)
    other_run = json.dumps({"run_id": "r2"}).encode()
    assert oidc_decision_key(scope(), other_run) == ("bob", "POST", PATH, "r2")


def test_no_key_where_the_decision_could_read_more() -> None:
    body = json.dumps({"run_id": "r1"}).encode()
    assert oidc_decision_key(scope(None), body) is None  # nobody signed in: the plugin answers
    assert oidc_decision_key(scope(query=b"run_id=r2"), body) is None  # a second place a run id is read from
    for odd in (b"not json", b"[]", json.dumps({"run_id": 5}).encode(), json.dumps({"run_id": ""}).encode()):
        assert oidc_decision_key(scope(), odd) is None, odd
