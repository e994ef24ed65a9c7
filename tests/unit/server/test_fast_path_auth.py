"""The fast path's authorization step (fast_http._authorized_run, fast_path_auth.RunExperiments): a refusal is sent
as the auth app words it, and any failure of the hook hands the request to MLflow's app, unwritten. And the memory
of "allowed" decisions (fast_path_auth.remember_allowances, credential_key): only allowances, only per login,
route and run, only for the configured seconds."""

from __future__ import annotations

import functools
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from mlflow_stack_server import fast_http, fast_path_auth
from mlflow_stack_server.fast_path_auth import (
    HandToMlflowError,
    Refusal,
    RunExperiments,
    allow_everyone,
    authorization_hook,
    credential_key,
    remember_allowances,
    remember_reads,
    run_experiments,
)
from mlflow_stack_server.settings import Settings

SCOPE: dict[str, Any] = {"type": "http", "method": "POST", "path": "/api/2.0/mlflow/runs/set-tag", "headers": []}


def _decide(authorize: Any) -> tuple[Any, list[str]]:
    """(what _authorized_run returns, the writes it made)."""
    written: list[str] = []

    def write() -> fast_http.Answer:
        written.append("written")
        return 200, b"{}"

    return fast_http._authorized_run(authorize, SCOPE, b"{}", "r", write), written


def test_allowed_writes_and_answers_json() -> None:
    assert _decide(allow_everyone) == ((200, fast_http.JSON_HEADERS, b"{}"), ["written"])


def test_a_refusal_is_sent_as_the_auth_app_words_it_and_nothing_is_written() -> None:
    refusal: Refusal = (
        401,
        [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", b"9"), (b"www-authenticate", b"Basic")],
        b"no login!",
    )
    reply, written = _decide(lambda scope, body, run_id: refusal)
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
    def authorize(scope: Any, body: bytes, run_id: str) -> Refusal | None:
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
    runs = RunExperiments(store, run_experiments())
    assert [runs.get_run("r").info.experiment_id for _ in range(3)] == ["7", "7", "7"]
    for _ in range(2):
        with pytest.raises(MlflowException, match="not found"):
            runs.get_run("unknown")
    assert store.loaded == ["r", "unknown", "unknown"]
    assert runs.get_experiment("7") == "experiment 7"  # everything else: the store's own


# ---- remember_allowances: "allowed" reused per key for a few seconds, nothing else ------------------------------

FORBIDDEN: Refusal = (403, [(b"content-type", b"text/html; charset=utf-8")], b"Permission denied")
SECONDS = 1.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class AuthApp:
    """Stands in for the auth app: answers `answer` (None: allowed) and counts its decisions."""

    def __init__(self, clock: Clock | None = None, takes: float = 0.0) -> None:
        self.answer: Refusal | None = None
        self.decisions = 0
        self.clock, self.takes = clock, takes

    def __call__(self, scope: Any, body: bytes, run_id: str) -> Refusal | None:
        self.decisions += 1
        if self.clock is not None:
            self.clock.now += self.takes  # the decision's own duration
        return self.answer


def _by_run(scope: Any, body: bytes, run_id: str) -> Hashable | None:
    return run_id


def _remembering(app: AuthApp, clock: Clock, key: Any = _by_run, seconds: float = SECONDS, kept: int = 100) -> Any:
    return remember_allowances(app, key, seconds, kept=kept, clock=clock)


def test_an_allowance_is_reused_for_the_same_key() -> None:
    app, clock = AuthApp(), Clock()
    authorize = _remembering(app, clock)
    assert [authorize(SCOPE, b"{}", "r") for _ in range(5)] == [None] * 5
    assert app.decisions == 1
    assert authorize(SCOPE, b"{}", "other run") is None
    assert app.decisions == 2


def test_a_refusal_is_never_reused_and_a_grant_counts_at_the_next_request() -> None:
    app, clock = AuthApp(), Clock()
    authorize = _remembering(app, clock)
    app.answer = FORBIDDEN
    assert [authorize(SCOPE, b"{}", "r") for _ in range(3)] == [FORBIDDEN] * 3
    assert app.decisions == 3
    app.answer = None  # granted
    assert authorize(SCOPE, b"{}", "r") is None
    assert app.decisions == 4


def test_a_hand_off_is_never_reused() -> None:
    decisions = []

    def hands_off(scope: Any, body: bytes, run_id: str) -> Refusal | None:
        decisions.append(run_id)
        raise HandToMlflowError("the auth app answered 500")

    authorize = remember_allowances(hands_off, _by_run, SECONDS, clock=Clock())
    for _ in range(2):
        with pytest.raises(HandToMlflowError):
            authorize(SCOPE, b"{}", "r")
    assert decisions == ["r", "r"]


def test_an_allowance_expires_after_the_seconds_and_a_revocation_then_counts() -> None:
    app, clock = AuthApp(), Clock()
    authorize = _remembering(app, clock)
    assert authorize(SCOPE, b"{}", "r") is None
    app.answer = FORBIDDEN  # revoked after the decision: the allowance may still be served, within SECONDS
    clock.now += SECONDS - 0.01
    assert authorize(SCOPE, b"{}", "r") is None
    assert app.decisions == 1
    clock.now += 0.01
    assert authorize(SCOPE, b"{}", "r") == FORBIDDEN
    assert app.decisions == 2
    assert authorize(SCOPE, b"{}", "r") == FORBIDDEN  # and stays refused
    assert app.decisions == 3


def test_an_allowances_age_counts_from_before_the_decision() -> None:
    # A decision that takes 0.8 s read the grants at its start: at 1 s from then it is decided again.
    clock = Clock()
    app = AuthApp(clock, takes=0.8)
    authorize = _remembering(app, clock)
    assert authorize(SCOPE, b"{}", "r") is None
    clock.now += 0.2
    assert authorize(SCOPE, b"{}", "r") is None
    assert app.decisions == 2


def test_a_refusal_forgets_an_allowance_remembered_during_the_decision() -> None:
    # Two requests with one key decided at once: the older decision's "allowed" lands while the newer one
    # refuses. The refusal wins: the next request is decided again.
    clock = Clock()
    answers: list[Refusal | None] = [None, FORBIDDEN]  # popped: the outer request refuses, the inner one allows
    decisions = []

    def auth_app(scope: Any, body: bytes, run_id: str) -> Refusal | None:
        answer = answers.pop() if answers else FORBIDDEN
        decisions.append(answer)
        if answer is FORBIDDEN and len(decisions) == 1:
            assert authorize(scope, body, run_id) is None  # the concurrent request, allowed meanwhile
        return answer

    authorize = remember_allowances(auth_app, _by_run, SECONDS, clock=clock)
    assert authorize(SCOPE, b"{}", "r") == FORBIDDEN
    assert authorize(SCOPE, b"{}", "r") == FORBIDDEN
    assert decisions == [FORBIDDEN, None, FORBIDDEN]


class Generation:
    """Stands in for auth_changes.ChangeListener.generation: None while not listening."""

    def __init__(self) -> None:
        self.now: int | None = 1

    def __call__(self) -> int | None:
        return self.now


def test_a_change_of_the_auth_database_forgets_every_allowance_at_once() -> None:
    app, clock, generation = AuthApp(), Clock(), Generation()
    authorize = remember_allowances(app, _by_run, 60, clock=clock, generation=generation)
    for run in ("r", "s", "r", "s"):
        assert authorize(SCOPE, b"{}", run) is None
    assert app.decisions == 2
    app.answer = FORBIDDEN  # revoked, and notified: the next request is decided again, long before 60 s
    generation.now = 2
    assert authorize(SCOPE, b"{}", "r") == FORBIDDEN
    assert authorize(SCOPE, b"{}", "s") == FORBIDDEN
    assert app.decisions == 4


def test_an_allowance_lives_up_to_the_cap_while_nothing_changes() -> None:
    app, clock, generation = AuthApp(), Clock(), Generation()
    authorize = remember_allowances(app, _by_run, 60, clock=clock, generation=generation)
    authorize(SCOPE, b"{}", "r")
    clock.now += 59.9
    authorize(SCOPE, b"{}", "r")
    assert app.decisions == 1
    clock.now += 0.1
    authorize(SCOPE, b"{}", "r")
    assert app.decisions == 2


def test_while_not_listening_nothing_is_reused_nor_remembered() -> None:
    app, clock, generation = AuthApp(), Clock(), Generation()
    authorize = remember_allowances(app, _by_run, 60, clock=clock, generation=generation)
    authorize(SCOPE, b"{}", "r")
    generation.now = None  # connection lost: a change may go unnoticed
    for _ in range(3):
        assert authorize(SCOPE, b"{}", "r") is None
    assert app.decisions == 4
    generation.now = 2  # listening again, on a new connection: a new generation, nothing from before counts
    authorize(SCOPE, b"{}", "r")
    assert app.decisions == 5
    authorize(SCOPE, b"{}", "r")
    assert app.decisions == 5


def test_an_allowance_decided_while_a_change_arrives_is_not_reused() -> None:
    # The generation is read before the decision: a change notified while the auth app decides makes the answer
    # stale at once (the auth app may have read the rows from before the change).
    generation = Generation()

    def changes_meanwhile(scope: Any, body: bytes, run_id: str) -> Refusal | None:
        decisions.append(run_id)
        generation.now = (generation.now or 0) + 1
        return None

    decisions: list[str] = []
    authorize = remember_allowances(changes_meanwhile, _by_run, 60, clock=Clock(), generation=generation)
    authorize(SCOPE, b"{}", "r")
    authorize(SCOPE, b"{}", "r")
    assert decisions == ["r", "r"]


def test_without_a_key_every_request_is_decided() -> None:
    app, clock = AuthApp(), Clock()
    authorize = _remembering(app, clock, key=lambda scope, body, run_id: None)
    for _ in range(3):
        assert authorize(SCOPE, b"{}", "r") is None
    assert app.decisions == 3


def test_zero_seconds_is_the_auth_app_itself() -> None:
    app = AuthApp()
    assert remember_allowances(app, _by_run, 0) is app


def test_the_least_recently_used_allowance_is_dropped_beyond_the_bound() -> None:
    app, clock = AuthApp(), Clock()
    authorize = _remembering(app, clock, kept=2)
    for run in ("a", "b", "a", "c"):  # "a" used again after "b": "b" is the one dropped for "c"
        authorize(SCOPE, b"{}", run)
    assert app.decisions == 3
    for run in ("a", "c"):
        authorize(SCOPE, b"{}", run)
    assert app.decisions == 3
    authorize(SCOPE, b"{}", "b")
    assert app.decisions == 4


def test_many_threads_at_once_get_every_answer_and_the_bound_holds() -> None:
    app, clock = AuthApp(), Clock()
    authorize = _remembering(app, clock, kept=8)

    def write(i: int) -> Refusal | None:
        return authorize(SCOPE, b"{}", f"run-{i % 50}")

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert set(pool.map(write, range(4000))) == {None}
    # With room for 8 of 50 runs, most writes in a round-robin over them were decided again.
    assert app.decisions > 2000


def _scope(authorization: list[bytes], path: str = "/api/2.0/mlflow/runs/log-batch", query: bytes = b"") -> Any:
    headers = [(b"content-type", b"application/json"), *((b"authorization", value) for value in authorization)]
    return {"type": "http", "method": "POST", "path": path, "query_string": query, "headers": headers}


ALICE = b"Basic YWxpY2U6c2VjcmV0LXBhc3N3b3Jk"  # alice:secret-password


def test_the_credential_key_separates_logins_routes_queries_and_runs() -> None:
    key = credential_key(b"k" * 32)
    alice = key(_scope([ALICE]), b"{}", "r")
    assert alice == key(_scope([ALICE]), b'{"other": "body"}', "r")  # the body's run id comes as run_id
    different = [
        key(_scope([b"Basic Ym9iOnNlY3JldC1wYXNzd29yZA=="]), b"{}", "r"),  # another user
        key(_scope([ALICE + b"x"]), b"{}", "r"),  # another password
        key(_scope([ALICE], "/api/2.0/mlflow/runs/set-tag"), b"{}", "r"),
        key(_scope([ALICE], "/ajax-api/2.0/mlflow/runs/log-batch"), b"{}", "r"),
        key(_scope([ALICE], query=b"run_id=s"), b"{}", "r"),
        key(_scope([ALICE]), b"{}", "s"),
    ]
    assert alice is not None and alice not in different and len(set(different)) == len(different)


def test_the_credential_key_holds_no_password_and_none_without_one_login() -> None:
    key = credential_key(b"k" * 32)
    alice = key(_scope([ALICE]), b"{}", "r")
    assert isinstance(alice, tuple) and ALICE not in alice and b"secret-password" not in repr(alice).encode()
    assert alice != credential_key(b"j" * 32)(_scope([ALICE]), b"{}", "r")  # a per-worker key: no shared table
    assert key(_scope([]), b"{}", "r") is None
    assert key(_scope([ALICE, ALICE]), b"{}", "r") is None


def test_with_different_logins_an_allowance_is_not_shared() -> None:
    refused = b"Basic bWFsbG9yeTpndWVzcw=="

    def auth_app(scope: Any, body: bytes, run_id: str) -> Refusal | None:
        return None if (b"authorization", ALICE) in scope["headers"] else FORBIDDEN

    authorize = remember_allowances(auth_app, credential_key(b"k" * 32), SECONDS, clock=Clock())
    assert authorize(_scope([ALICE]), b"{}", "r") is None
    assert authorize(_scope([refused]), b"{}", "r") == FORBIDDEN
    assert authorize(_scope([]), b"{}", "r") == FORBIDDEN


def test_no_logins_means_nothing_to_decide_or_remember() -> None:
    settings = Settings.from_environment({"MLFLOW_AUTH": "none"}, server=False)
    assert authorization_hook(settings) is allow_everyone


# ---- remember_reads: the auth store's reads during fast-path decisions, per generation ---------------------------


class Reads:
    def __init__(self) -> None:
        self.made: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> list[str]:
        self.made.append(args)
        if args[0] == "missing":
            raise MlflowException("User with username=missing not found", RESOURCE_DOES_NOT_EXIST)
        return [f"grant of {args[0]}"]


def test_a_read_is_reused_per_arguments_until_a_change_is_notified() -> None:
    reads, generation = Reads(), Generation()
    read = remember_reads(reads, generation, 60, clock=Clock())
    assert read(1, "default", {"experiment"}) == read(1, "default", {"experiment"}) == ["grant of 1"]
    read(2, "default", {"experiment"})
    assert len(reads.made) == 2
    generation.now = 2
    read(1, "default", {"experiment"})
    assert len(reads.made) == 3


def test_a_read_is_made_every_time_while_not_listening_and_errors_are_never_reused() -> None:
    reads, generation = Reads(), Generation()
    read = remember_reads(reads, generation, 60, clock=Clock())
    generation.now = None
    read(1)
    read(1)
    generation.now = 1
    for _ in range(2):
        with pytest.raises(MlflowException):
            read("missing")
    assert len(reads.made) == 4


def test_a_remembered_list_is_a_copy_for_each_caller() -> None:
    read = remember_reads(Reads(), Generation(), 60, clock=Clock())
    read(1).append("changed by a caller")
    assert read(1) == ["grant of 1"]


def test_at_most_kept_reads_are_remembered_the_least_recently_used_dropped_first() -> None:
    reads = Reads()
    read = remember_reads(reads, Generation(), 60, kept=2, clock=Clock())
    read(1), read(2), read(1), read(3)  # 2 is the least recently used when 3 comes
    made = len(reads.made)
    read(1), read(3)
    assert len(reads.made) == made
    read(2)
    assert len(reads.made) == made + 1


def test_reads_are_remembered_during_the_auth_apps_before_request_check_only() -> None:
    reads, plain = Reads(), Reads()
    read = fast_path_auth._during_decisions(remember_reads(reads, Generation(), 60, clock=Clock()), plain)
    read(1)
    checking = fast_path_auth._BEFORE_REQUEST.set(True)
    try:
        read(1)
        read(1)
    finally:
        fast_path_auth._BEFORE_REQUEST.reset(checking)
    read(1)  # after the check (a handler, an after-request hook): the store's own read
    assert (len(plain.made), len(reads.made)) == (2, 1)


# ---- what a decision would otherwise load: a created run's experiment, the before-request check's reads -----------

CREATE_PATHS = {"/api/2.0/mlflow/runs/create", "/ajax-api/2.0/mlflow/runs/create"}
CREATED = {"run": {"info": {"run_id": "r1", "experiment_id": "7"}, "data": {}}}


def test_a_run_is_learned_from_a_successful_create_run_answer_only() -> None:
    def created(path: str, method: str = "POST", status: int = 200, answer: Any = CREATED) -> Any:
        return fast_path_auth.created_run(path, method, status, lambda: answer, CREATE_PATHS)

    assert created("/api/2.0/mlflow/runs/create") == ("r1", "7")
    assert created("/ajax-api/2.0/mlflow/runs/create") == ("r1", "7")
    assert created("/api/2.0/mlflow/runs/update") is None
    assert created("/api/2.0/mlflow/runs/create", method="GET") is None
    assert created("/api/2.0/mlflow/runs/create", status=403) is None
    for answer in (None, {}, {"run": None}, {"run": {"info": {"run_id": "r1"}}}, {"run": {"info": {"run_id": 5}}}):
        assert created("/api/2.0/mlflow/runs/create", answer=answer) is None


def test_a_run_learned_at_its_creation_is_decided_without_loading_it() -> None:
    import flask

    app = flask.Flask("created-runs")
    known = run_experiments()

    @app.post("/api/2.0/mlflow/runs/create")
    def create() -> Any:
        return CREATED

    @app.post("/api/2.0/mlflow/runs/refused")
    def refused() -> Any:
        return {"run": {"info": {"run_id": "r2", "experiment_id": "8"}}}, 403

    client = app.test_client()
    assert client.post("/api/2.0/mlflow/runs/refused", json={}).status_code == 403  # served before the hook is built
    fast_path_auth.learn_created_runs(app, known)
    assert client.post("/api/2.0/mlflow/runs/create", json={}).status_code == 200
    assert client.post("/api/2.0/mlflow/runs/refused", json={}).status_code == 403
    assert len(known) == 1 and known.get("r1") == "7"
    store = CountingStore()
    assert RunExperiments(store, known).get_run("r1").info.experiment_id == "7"
    assert store.loaded == []


def test_flasks_check_reads_from_memory_on_create_run_only_and_the_handler_never() -> None:
    import flask

    app = flask.Flask("checked")
    seen: list[tuple[str, bool]] = []

    def before_request() -> None:
        seen.append(("check", fast_path_auth._BEFORE_REQUEST.get()))

    def other_hook() -> None:
        seen.append(("other hook", fast_path_auth._BEFORE_REQUEST.get()))

    app.before_request(before_request)
    app.before_request(other_hook)

    @app.route("/api/2.0/mlflow/runs/create", methods=["GET", "POST"])
    @app.post("/api/2.0/mlflow/experiments/get")
    def view() -> str:
        seen.append(("handler", fast_path_auth._BEFORE_REQUEST.get()))
        return "ok"

    fast_path_auth._remember_reads_in_flasks_check(app, before_request, {"/api/2.0/mlflow/runs/create"})
    client = app.test_client()
    assert client.post("/api/2.0/mlflow/runs/create").status_code == 200
    assert seen == [("check", True), ("other hook", False), ("handler", False)]
    for method, path in (("POST", "/api/2.0/mlflow/experiments/get"), ("GET", "/api/2.0/mlflow/runs/create")):
        seen.clear()
        assert client.open(path, method=method).status_code == 200
        assert seen == [("check", False), ("other hook", False), ("handler", False)]


def test_routes_mlflow_decides_with_one_validator_share_an_allowance() -> None:
    import mlflow.server.auth as mlflow_auth

    route = fast_path_auth.validator_of_route(mlflow_auth._find_validator, mlflow_auth.is_unprotected_route)
    key = credential_key(b"k" * 32, route)
    login = [b"Basic dTpw"]

    def key_of(path: str, method: str = "POST") -> Any:
        return key({**_scope(login, path), "method": method}, b"{}", "r")

    set_tag, update = key_of("/api/2.0/mlflow/runs/set-tag"), key_of("/api/2.0/mlflow/runs/update")
    assert set_tag == update == key_of("/ajax-api/2.0/mlflow/runs/update")  # validate_can_update_run
    assert key_of("/api/2.0/mlflow/runs/log-batch") not in (set_tag, None)  # validate_can_log_batch
    assert key_of("/api/2.0/mlflow/runs/set-tag", "GET") != set_tag  # the method stays in the key
    assert key(_scope(login, "/api/2.0/mlflow/runs/set-tag", b"run_id=s"), b"{}", "r") != set_tag  # and the query
    assert key(_scope(login, "/api/2.0/mlflow/runs/set-tag"), b"{}", "s") != set_tag  # and the run
    assert key(_scope([ALICE], "/api/2.0/mlflow/runs/set-tag"), b"{}", "r") != set_tag  # and the login
    # A path the auth app has no validator for, or does not protect, stands for itself.
    assert key_of("/api/2.0/mlflow/runs/no-such-route")[2] == "/api/2.0/mlflow/runs/no-such-route"
    assert key_of("/health")[2] == "/health"


def test_a_route_the_lookup_cannot_place_stands_for_itself() -> None:
    def lookup(request: Any) -> Any:
        return request.view_args  # more than the method and path: not there

    route = fast_path_auth.validator_of_route(lookup, lambda path: False)
    assert route("POST", "/api/2.0/mlflow/runs/set-tag") == "/api/2.0/mlflow/runs/set-tag"


def test_anything_but_allowed_from_remembered_reads_is_decided_again_on_the_databases_rows() -> None:
    remembered_grant = {"alice": "NO_PERMISSIONS"}  # read before the grant below; its notification not arrived
    current_grant = {"alice": "EDIT"}
    asked: list[bool] = []

    def check(user: str) -> Any:
        from_memory = fast_path_auth._BEFORE_REQUEST.get()
        asked.append(from_memory)
        if user == "raises" and from_memory:
            raise RuntimeError("a remembered row that no longer fits")
        grant = (remembered_grant if from_memory else current_grant).get(user)
        return None if grant == "EDIT" else FORBIDDEN

    for user, answer, passes in (
        ("alice", None, [True, False]),  # the grant just given counts at once
        ("bob", FORBIDDEN, [True, False]),  # refused on the current rows too
        ("raises", FORBIDDEN, [True, False]),
    ):
        asked.clear()
        assert fast_path_auth.reads_from_memory_first(functools.partial(check, user))() == answer
        assert asked == passes
    remembered_grant["alice"] = "EDIT"
    asked.clear()
    assert fast_path_auth.reads_from_memory_first(lambda: check("alice"))() is None
    assert asked == [True]  # allowed from memory: one pass


def test_a_401_from_the_password_check_is_final() -> None:
    import flask

    passes: list[bool] = []

    def wrong_password() -> Any:
        passes.append(fast_path_auth._BEFORE_REQUEST.get())
        return flask.Response("You are not authenticated.", status=401)

    assert fast_path_auth.reads_from_memory_first(wrong_password)().status_code == 401
    assert passes == [True]


def test_mlflows_validators_of_the_fast_paths_writes_decide_by_the_runs_experiment_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why basic auth's allowance for log-batch, set-tag and runs/update names the run's experiment instead of the
    run: MLflow's validators of those routes hand `authorize` the same user, anchor and requirements for any two runs
    of one experiment, whichever of the three routes. An MLflow release that decides on the run itself (a grant on
    one run) hands it something else, and fails here."""
    import mlflow.server.auth as mlflow_auth
    from flask import Flask

    experiments = {"r1": "7", "r2": "7", "r3": "8"}
    asked: list[tuple[str, Any, str]] = []

    class Runs:
        def get_run(self, run_id: str) -> Any:
            return SimpleNamespace(info=SimpleNamespace(run_id=run_id, experiment_id=experiments[run_id]))

    def authorize(username: str, anchor: Any, requirements: Any) -> bool:
        asked.append((username, anchor, repr(requirements)))
        return True

    monkeypatch.setattr(mlflow_auth, "_get_tracking_store", Runs)
    monkeypatch.setattr(mlflow_auth, "authenticate_request", lambda: SimpleNamespace(username="alice"))
    monkeypatch.setattr(mlflow_auth, "authorize", authorize)
    app = Flask(__name__)
    bodies: dict[str, dict[str, Any]] = {
        "log-batch": {"metrics": [{"key": "m", "value": 1.0, "timestamp": 1, "step": 0}], "params": []},
        "set-tag": {"key": "t", "value": "v"},
        "update": {"status": "FINISHED", "end_time": 2},
    }
    validators: set[Any] = set()
    for route, body in bodies.items():
        for prefix in ("/api", "/ajax-api"):
            path = f"{prefix}/2.0/mlflow/runs/{route}"
            validator: Any = mlflow_auth._find_validator(SimpleNamespace(method="POST", path=path))  # type: ignore[arg-type]
            validators.add(validator)
            for run_id in experiments:
                with app.test_request_context(path, method="POST", json={"run_id": run_id, **body}):
                    assert validator() is True
    assert validators == {mlflow_auth.validate_can_log_batch, mlflow_auth.validate_can_update_run}
    decided: dict[str, set[tuple[str, Any, str]]] = {experiment: set() for experiment in experiments.values()}
    for question, run_id in zip(asked, list(experiments) * 6, strict=True):
        decided[experiments[run_id]].add(question)
    assert all(len(asks) == 1 for asks in decided.values()), decided  # one question per experiment
    assert decided["7"] != decided["8"]


def test_basic_auths_writes_to_the_runs_of_one_experiment_share_an_allowance() -> None:
    known = run_experiments()
    known.put("r1", "7")
    known.put("r2", "7")
    known.put("r3", "8")
    route = fast_path_auth.experiment_keyed(lambda method, path: ("validator", path.rsplit("/", 1)[-1]),
                                            frozenset({("validator", "log-batch"), ("validator", "update")}))  # fmt: skip
    key = credential_key(b"k" * 32, route, fast_path_auth.experiment_subject(known.get))
    login = [b"Basic dTpw"]

    def key_of(route_name: str, run_id: str) -> Any:
        return key(_scope(login, f"/api/2.0/mlflow/runs/{route_name}"), b"{}", run_id)

    assert key_of("log-batch", "r1") == key_of("update", "r2") == key_of("log-batch", "r2")
    assert key_of("log-batch", "r3") != key_of("log-batch", "r1")  # another experiment
    assert key_of("log-batch", "unknown") is None  # not known yet: decided, and so learned
    assert key_of("other", "r1") != key_of("other", "r2")  # any other route: the run
