"""The OIDC fast path's remembered allowances (fast_path_oidc.TokenAllowances), answered in front of the plugin's
app: what may be remembered, under which key, and for how long."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Hashable
from typing import Any

import pytest

from mlflow_stack_server.fast_path_auth import (
    EXPERIMENT_UPDATE,
    BoundedMemory,
    HandToMlflowError,
    credential_key,
    experiment_keyed,
    experiment_subject,
)
from mlflow_stack_server.fast_path_oidc import STAMP_KEY, Stamp, TokenAllowances, basic_token_login
from tests.unit.server.test_fast_path_auth import Clock

TOKEN = "mlf_abcdefgh_secret"


def parse_prefix(password: str) -> str | None:
    """The plugin's token format, as far as these tests need it: mlf_<8 characters>_<secret>."""
    parts = password.split("_", 2)
    return parts[1] if len(parts) == 3 and parts[0] == "mlf" and len(parts[1]) == 8 and parts[2] else None


def basic(username: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{username}:{password}".encode())


def request(
    *headers: tuple[bytes, bytes], path: str = "/api/2.0/mlflow/runs/set-tag", query: bytes = b""
) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "query_string": query, "headers": list(headers)}


LOG_BATCH, SET_TAG, UPDATE = (f"/api/2.0/mlflow/runs/{name}" for name in ("log-batch", "set-tag", "update"))
DELETE_TAG = "/api/2.0/mlflow/runs/delete-tag"


def plugin_validator(method: str, path: str) -> Hashable:
    """The plugin's validator of each route, as fast_path_auth.validator_of_route names it (the path for a route
    without one); delete-tag stands for a route whose validator does not decide by the experiment alone."""
    names = {
        LOG_BATCH: "validate_can_log_metrics",
        SET_TAG: "validate_can_update_run",
        UPDATE: "validate_can_update_run",
    }
    return ("validator", names[path]) if path in names else path


EXPERIMENT_DECIDERS = frozenset({("validator", "validate_can_log_metrics"), ("validator", "validate_can_update_run")})


class World:
    """A listener's generation (None: not listening), the token's time left, the user's regex grants; with
    `experiments`, allowances keyed as the server keys them, by the run's experiment (the worker's map of run to
    experiment: `experiments`)."""

    def __init__(self, experiments: dict[str, str] | None = None) -> None:
        self.clock = Clock()
        self.generation: tuple[int, float] | None = (1, 0.0)
        self.left: float | None = 3600.0
        self.regex = False
        self.experiments = experiments
        key = None
        if experiments is not None:
            route = experiment_keyed(plugin_validator, EXPERIMENT_DECIDERS)
            key = credential_key(b"k" * 32, route, experiment_subject(experiments.get))
        self.allowances = TokenAllowances(
            seconds=60, cache_seconds=1, generation_since=lambda: self.generation, parse_prefix=parse_prefix,
            expiry=lambda username, prefix: self.left, has_regex_grants=lambda username: self.regex, key=key,
            kept=100, clock=self.clock,
        )  # fmt: skip

    def front(self, scope: dict[str, Any], run: str = "run-1") -> bool:
        """Whether the front answers the write from memory (else it hands it to the plugin's app)."""
        try:
            return self.allowances.front(scope, b"{}", run) is None
        except HandToMlflowError:
            return False

    def plugin_allows(self, scope: dict[str, Any], username: str = "alice", run: str = "run-1") -> None:
        """The request going through the plugin's app, which allows it (the inner hook records it), reading its
        permission cache."""
        assert not self.front(scope, run)
        self.allowances.record(scope, username, stale=self.allowances.needs_fresh_permissions(scope))


def test_bounded_memory_drops_the_least_recently_used() -> None:
    memory = BoundedMemory(2)
    memory.put("a", 1)
    memory.put("b", 2)
    assert memory.get("a") == 1  # "b" is now the least recently used
    memory.put("c", 3)
    assert (memory.get("a"), memory.get("b"), memory.get("c"), len(memory)) == (1, None, 3, 2)
    memory.forget("a")
    assert memory.get("a") is None


def test_only_a_plugin_token_alone_is_a_rememberable_login() -> None:
    token = (b"authorization", basic("Alice", TOKEN))
    assert basic_token_login(request(token), parse_prefix) == (token[1], "Alice", "abcdefgh")
    refused = {
        "a session cookie besides": request(token, (b"cookie", b"session=x")),
        "two Authorization headers": request(token, (b"authorization", basic("bob", TOKEN))),
        "a bearer token": request((b"authorization", b"Bearer " + TOKEN.encode())),
        "a password, not a token": request((b"authorization", basic("alice", "a-password"))),
        "no login": request(),
        "not base64": request((b"authorization", b"Basic !!!")),
        "no username": request((b"authorization", basic("", TOKEN))),
    }
    assert {name: basic_token_login(scope, parse_prefix) for name, scope in refused.items()} == dict.fromkeys(refused)


def test_an_allowed_write_is_answered_from_memory_until_the_generation_moves_on() -> None:
    world = World()
    scope = request((b"authorization", basic("alice", TOKEN)))
    world.plugin_allows(scope)
    assert isinstance(scope[STAMP_KEY], Stamp)
    assert world.front(request((b"authorization", basic("alice", TOKEN))))
    # Another run, path or token is another key.
    assert not world.front(request((b"authorization", basic("alice", TOKEN))), run="run-2")
    assert not world.front(request((b"authorization", basic("alice", TOKEN)), path="/api/2.0/mlflow/runs/update"))
    assert not world.front(request((b"authorization", basic("alice", TOKEN + "x"))))
    world.generation = (2, 150.0)  # a change of the plugin's database was notified
    assert not world.front(request((b"authorization", basic("alice", TOKEN))))


def test_nothing_remembered_is_used_or_recorded_while_not_listening() -> None:
    world = World()
    world.plugin_allows(request((b"authorization", basic("alice", TOKEN))))
    world.generation = None
    scope = request((b"authorization", basic("alice", TOKEN)))
    assert not world.front(scope)
    assert STAMP_KEY not in scope  # nothing the inner hook could record


def test_an_allowance_lives_at_most_the_window_and_never_past_the_tokens_expiry() -> None:
    world = World()
    world.plugin_allows(request((b"authorization", basic("alice", TOKEN))))
    world.clock.now += 59.9
    assert world.front(request((b"authorization", basic("alice", TOKEN))))
    world.clock.now += 0.2
    assert not world.front(request((b"authorization", basic("alice", TOKEN))))
    world.left = 5.0  # the token expires in 5 s
    world.plugin_allows(request((b"authorization", basic("alice", TOKEN))))
    world.clock.now += 4.9
    assert world.front(request((b"authorization", basic("alice", TOKEN))))
    world.clock.now += 0.2
    assert not world.front(request((b"authorization", basic("alice", TOKEN))))
    for left in (None, -1.0):  # the token is gone, or expired
        world.left = left
        world.plugin_allows(request((b"authorization", basic("alice", TOKEN))))
        assert not world.front(request((b"authorization", basic("alice", TOKEN))))


@pytest.mark.parametrize("reason", ["permission cache", "regex grants", "another user", "refused", "no stamp"])
def test_what_is_not_recorded(reason: str) -> None:
    world = World()
    scope = request((b"authorization", basic("alice", TOKEN)))
    if reason == "permission cache":  # the plugin may have decided on a permission read before the last change
        world.generation = (1, world.clock.now - 0.5)
    if reason == "regex grants":  # they match the experiment's name, which the tracking database holds
        world.regex = True
    assert not world.front(scope)
    if reason == "refused":
        world.allowances.refused(scope)
    elif reason == "no stamp":
        world.allowances.record(request((b"authorization", basic("alice", TOKEN))), "alice", stale=False)
    else:
        stale = world.allowances.needs_fresh_permissions(scope)  # decided from the plugin's permission cache
        assert stale == (reason == "permission cache")
        world.allowances.record(scope, "bob" if reason == "another user" else "alice", stale=stale)
    assert not world.front(request((b"authorization", basic("alice", TOKEN))))
    # The same request recorded as it should be is remembered (each case above can be told apart from it).
    world.generation, world.regex = (1, 0.0), False
    world.plugin_allows(request((b"authorization", basic("alice", TOKEN))))
    assert world.front(request((b"authorization", basic("alice", TOKEN))))


def test_just_after_a_change_only_a_decision_without_the_plugins_permission_cache_is_recorded() -> None:
    world = World()
    world.generation = (1, world.clock.now - 0.5)  # a change notified 0.5 s ago; the plugin caches 1 s
    scope = request((b"authorization", basic("alice", TOKEN)))
    assert not world.front(scope)
    assert world.allowances.needs_fresh_permissions(scope)
    world.allowances.record(scope, "alice", stale=False)  # decided without the plugin's permission cache
    assert world.front(request((b"authorization", basic("alice", TOKEN))))


def test_a_refusal_forgets_the_allowance() -> None:
    """Two requests with one key in flight: one is allowed and remembered, then the plugin refuses the other
    (decided after a change): the allowance is forgotten."""
    world = World()
    refused = request((b"authorization", basic("alice", TOKEN)))
    assert not world.front(refused)
    world.plugin_allows(request((b"authorization", basic("alice", TOKEN))))
    assert world.front(request((b"authorization", basic("alice", TOKEN))))
    world.allowances.refused(refused)
    assert not world.front(request((b"authorization", basic("alice", TOKEN))))


def test_the_username_is_compared_as_the_plugin_folds_it() -> None:
    world = World()
    world.plugin_allows(request((b"authorization", basic("Alice", TOKEN))), username="alice")
    assert world.front(request((b"authorization", basic("Alice", TOKEN))))


# ---- keyed by the run's experiment (the server's key): a run's writes share one allowance, and so do the runs of
# one experiment, for one token; nothing else does -------------------------------------------------------------


def token(path: str = SET_TAG, password: str = TOKEN, query: bytes = b"") -> dict[str, Any]:
    return request((b"authorization", basic("alice", password)), path=path, query=query)


def test_the_runs_of_one_experiment_share_the_allowance_of_any_of_their_writes() -> None:
    route = experiment_keyed(plugin_validator, EXPERIMENT_DECIDERS)
    assert {route("POST", path) for path in (LOG_BATCH, SET_TAG, UPDATE)} == {EXPERIMENT_UPDATE}
    world = World({"run-1": "1", "run-2": "1", "run-3": "2"})
    world.plugin_allows(token(LOG_BATCH), run="run-1")
    assert world.front(token(SET_TAG), run="run-1")  # a run's set-tag and runs/update reuse its log-batch's
    assert world.front(token(UPDATE), run="run-1")
    assert world.front(token(LOG_BATCH), run="run-2")  # a new run in the same experiment, from its first write
    assert world.front(token(UPDATE), run="run-2")


def test_another_experiment_token_query_or_route_is_never_answered_from_this_allowance() -> None:
    world = World({"run-1": "1", "run-2": "1", "run-3": "2", "run-4": "1"})
    world.plugin_allows(token(LOG_BATCH), run="run-1")
    assert not world.front(token(LOG_BATCH), run="run-3")  # experiment 2
    assert not world.front(token(LOG_BATCH, password=TOKEN + "x"), run="run-2")  # another token
    assert not world.front(token(LOG_BATCH, query=b"run_id=run-3"), run="run-2")  # the plugin reads the query too
    # A route whose validator is not UPDATE on the experiment alone stays keyed by its path and run.
    world.plugin_allows(token(DELETE_TAG), run="run-1")
    assert world.front(token(DELETE_TAG), run="run-1")
    assert not world.front(token(DELETE_TAG), run="run-4")


def test_a_run_whose_experiment_the_front_does_not_know_is_remembered_under_the_one_the_plugin_found() -> None:
    world = World({"run-1": "1"})
    scope = token(LOG_BATCH)
    assert not world.front(scope, run="run-2")
    assert scope[STAMP_KEY].key is None  # nothing to look up in front
    assert world.experiments is not None
    world.experiments["run-2"] = "1"  # the plugin's lookup of the run, during its decision
    world.allowances.record(scope, "alice", stale=False)
    assert world.front(token(SET_TAG), run="run-1")  # the experiment's allowance, shared


def test_a_regex_grant_user_is_never_remembered_for_the_experiment() -> None:
    world = World({"run-1": "1", "run-2": "1"})
    world.regex = True  # a regex grant matches the experiment's name, which the tracking database holds
    world.plugin_allows(token(LOG_BATCH), run="run-1")
    assert not world.front(token(LOG_BATCH), run="run-1")
    assert not world.front(token(SET_TAG), run="run-2")


def test_a_refusal_on_any_run_forgets_the_experiments_allowance() -> None:
    world = World({"run-1": "1", "run-2": "1"})
    refused = token(UPDATE)
    assert not world.front(refused, run="run-2")
    world.plugin_allows(token(LOG_BATCH), run="run-1")
    assert world.front(token(LOG_BATCH), run="run-2")
    world.allowances.refused(refused)
    assert not world.front(token(LOG_BATCH), run="run-1")


# What the plugin decides the fast path's writes on, read from the plugin itself (mlflow-oidc-auth, in a fresh
# interpreter: importing it reads its configuration): the validator of each route, the resource types it grants
# on and the sources of an experiment's permission.
PLUGINS_DECISION = """
import json
from types import SimpleNamespace
from mlflow_oidc_auth.hooks import before_request
from mlflow_oidc_auth.utils import permissions
validators = {
    path: before_request._find_validator(SimpleNamespace(method="POST", path=path)).__name__
    for prefix in ("/api", "/ajax-api") for path in (prefix + "/2.0/mlflow/runs/" + name
    for name in ("log-batch", "set-tag", "update"))
}
print(json.dumps([validators, sorted(permissions.PERMISSION_REGISTRY),
                  sorted(permissions.PERMISSION_REGISTRY["experiment"]("1", "alice"))]))
"""


def test_the_plugin_decides_the_fast_paths_writes_by_the_runs_experiment_alone(tmp_path: Any) -> None:
    """Why the key may name the run's experiment instead of the run: the plugin checks log-batch with
    validate_can_log_metrics and set-tag and runs/update with validate_can_update_run (UPDATE on the run's
    experiment; log-batch's logged models are not in the shapes the fast path answers), it has no grant on a run
    (no resource type for runs), and an experiment's permission comes from the user's, its groups' and regex grants
    (regex grant holders are never remembered). A plugin release that grants on runs fails here."""
    answer = subprocess.run(
        [sys.executable, "-c", PLUGINS_DECISION], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    validators, resource_types, sources = json.loads(answer.stdout.strip().splitlines()[-1])
    assert set(validators.values()) == {"validate_can_log_metrics", "validate_can_update_run"}
    assert {validators[f"{p}/2.0/mlflow/runs/log-batch"] for p in ("/api", "/ajax-api")} == {"validate_can_log_metrics"}
    assert not {t for t in resource_types if "run" in t}
    assert sources == ["group", "group-regex", "regex", "user"]
