"""Generated differential tests of the fast path with MLFLOW_AUTH=basic: the same generated logins, grants and run
writes, sent to two servers, must get the same answers and leave the same runs.

- fast: the server's basic-auth app (proxied_artifacts.create_app_with_basic_auth) with MLFLOW_FAST_STORE=on: the
  fast HTTP path asks the auth app's own before-request check (fast_path_auth.py), then writes;
- MLflow: the same factory with MLFLOW_FAST_STORE=off: MLflow's basic-auth app and handlers answer everything.

Each is a uvicorn process (test_fast_path_generated.py's harness) with its own tracking and auth databases on the
throwaway Postgres, MLflow's login cache on (as the stack runs it). A Hypothesis state machine sends log-batch,
set-tag, runs/update and runs/create (the calls the fast path answers, in the shapes it answers) as users with
READ, EDIT, MANAGE or DENY on the run's experiment, run-level grants, no grant, admin, a wrong or missing login,
a login of a user deleted or whose password changed, while it grants, revokes, promotes, demotes, deletes and recreates those users
between the writes. Every answer's status, content type, WWW-Authenticate and body (run ids masked) must be
equal, and so must every run after each sequence.

Both auth databases are prepared as the entrypoint's prepare leaves them: MLflow's auth schema and the change
triggers (auth_changes.py). The fast server remembers the auth app's "allowed" as shipped (up to
MLFLOW_AUTH_DECISION_CACHE_SECONDS, forgotten at any change of its auth database): the same write is often sent a
few times in a row, as a trainer's loop does, and those answers must be equal too. A change that may take a
permission away (a grant given, changed or revoked, a demotion, a password change, a deletion) reaches the fast
server's listener as a notification once committed: before the next write the test leaves it NOTIFIED_SECONDS.
A removed permission made through another process is tested on its own (test_a_change_by_another_server_counts_
at_once), and so are a grant whose notification never comes (test_a_grant_counts_at_the_next_request_even_when_no_
notification_says_so) and a listener that is not listening (test_while_not_listening_every_write_is_decided).
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
import sqlalchemy
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

from mlflow_stack_server import auth_changes
from tests.fast_store.conftest import fresh_database
from tests.fast_store.test_auth_changes import NOTIFIED_SECONDS, _terminate_listeners, migrated_auth_database
from tests.fast_store.test_fast_path_generated import (
    NOW,
    START_TIMEOUT,
    UNKNOWN,
    Pair,
    RunPair,
    Server,
    _healthy,
    _log_tail,
    _start,
)
from tests.support.fast_path_counter import COUNT_PATH, FROM_MEMORY
from tests.support.waiting import wait_until

# The server's basic-auth app factory, counting what the fast path answered itself (tests/support).
FACTORY = "tests.support.fast_path_counter:create_app_with_basic_auth"

MINIMUM_WRITES = 150  # generated run writes per CI run (each to both servers), at least
MINIMUM_PER_ANSWER = 15  # of each of 200, 401 and 403
MINIMUM_FROM_MEMORY = 15  # fast-path answers given from remembered allowances, not decided again
REPEATS_BY_STEP = (1, 1, 2, 3)  # how often each generated write is sent in a row, by its step (0 to 3)
EXAMPLES = 12
STEPS = 30
ADMIN = ("stack-admin", "admin-" + secrets.token_hex(8))
# Each user's grant on experiment A at the start (None: no grant: the server's default, READ).
USERS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "reader": (("experiment", "A", "READ"),),
    "editor": (("experiment", "A", "EDIT"),),
    "manager": (("experiment", "A", "MANAGE"),),
    "denied": (("experiment", "A", "DENY"),),
    "nogrant": (),
    # MLflow 3.17's run-level grants: the run tier's grant wins over the experiment's when there is one.
    "run-editor": (("experiment", "A", "READ"), ("run", "*", "EDIT")),
    "run-denied": (("experiment", "A", "EDIT"), ("run", "*", "DENY")),
    "promoted": (),  # made admin at the start
}
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "DENY")
CREDENTIALS = ("right", "right", "right", "right", "right", "right", "right", "none", "wrong password", "unknown user", "previous password", "bearer",
               "malformed basic", "empty password")  # fmt: skip
ENDPOINTS = ("log-batch", "log-batch", "set-tag", "update", "create")
RUNS = ("A active", "A active", "A active", "A deleted", "B active", "unknown")
UNKNOWN_EXPERIMENT = "987654321"  # create-run's experiment for the "unknown" run
# Who writes: every user, those allowed to at the start twice as often (else 200 is rare).
WRITERS = (*sorted(USERS), "editor", "manager", "run-editor", "promoted")


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class Logins:
    """What both servers hold: each user's password (None: deleted) and the one before."""

    def __init__(self) -> None:
        self.password: dict[str, str | None] = {user: f"password-{user}-0" for user in USERS}
        self.previous: dict[str, str] = dict(self.password)  # type: ignore[arg-type]
        self.changes = 0


def _outcome(pair: Pair, side: str, response: Any) -> Any:
    return response.headers.get("www-authenticate"), pair.outcome(side, response)


# Each started server's auth database (by the server's name).
AUTH_DATABASES: dict[str, str] = {}


def _start_with_auth(name: str, fast: bool, factory: str, migrated_server: tuple[str, str], folder: Path) -> Server:
    config = folder / f"{name}-basic_auth.ini"
    AUTH_DATABASES[name] = migrated_auth_database(migrated_server[0])  # as prepare leaves it
    # As the entrypoint writes it (entrypoint.write_auth_config), on a database of this server's own.
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = {AUTH_DATABASES[name].replace('%', '%%')}\n"
        f"admin_username = {ADMIN[0]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "auth_cache_ttl_seconds = 60\n"
    )
    extra = {
        "MLFLOW_AUTH": "basic",
        "_MLFLOW_SGI_NAME": "uvicorn",  # what `mlflow server` hands its workers: the auth app is then FastAPI
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    return _start(name, fresh_database(migrated_server), fast, folder, factory, extra)


@contextmanager
def _running(started: list[Server]) -> Iterator[list[Server]]:
    try:
        for server in started:
            server.session.auth = ADMIN  # set-up calls and reading runs back: as the admin
            wait_until(
                functools.partial(_healthy, server), START_TIMEOUT, functools.partial(_log_tail, server),
                interval=0.5, ignoring=(requests.RequestException,),
            )  # fmt: skip
        yield started
    finally:
        for server in started:
            server.process.terminate()
        for server in started:
            server.process.wait(timeout=30)


@pytest.fixture(scope="module")
def auth_servers(
    migrated_server: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    folder = tmp_path_factory.mktemp("generated-auth")
    started = [_start_with_auth(name, name == "fast", FACTORY, migrated_server, folder) for name in ("fast", "mlflow")]
    with _running(started):
        yield started[0], started[1]


def _call(server: Server, method: str, path: str, body: dict[str, Any], authorization: str | None) -> Any:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    # A session of its own: the server's session logs in as the admin.
    return requests.request(method, server.url + path, data=json.dumps(body), headers=headers, timeout=120)


class AuthorizedWrites(RuleBasedStateMachine):
    pair: Pair  # set by the test
    logins: Logins
    experiments: dict[str, str]  # "A", "B" -> the experiment id (the same on both servers)
    writes = 0
    statuses: ClassVar[Counter[int]] = Counter()  # MLflow's answers to the generated writes
    waited = 0.0  # seconds spent leaving notifications time to arrive after changes
    # When the last change that may take a permission away was answered (None: none since the last write). Over
    # all sequences: the server and its users outlive each one.
    reduced_at: float | None = None

    def _outlive_allowances(self) -> None:
        """Before a write: if a permission may have been taken away, leave the change's notification
        NOTIFIED_SECONDS to reach the fast server's listener (it forgets every allowance then)."""
        if AuthorizedWrites.reduced_at is not None:
            remaining = AuthorizedWrites.reduced_at + NOTIFIED_SECONDS - time.monotonic()
            if remaining > 0:
                time.sleep(remaining)
                AuthorizedWrites.waited += remaining
            AuthorizedWrites.reduced_at = None

    def _on_both(self, method: str, path: str, body: dict[str, Any]) -> Any:
        """An admin call on both servers; their outcomes must be equal; the status."""
        admin = _basic(*ADMIN)
        futures = [
            self.pair.pool.submit(_call, server, method, path, body, admin)
            for server in (self.pair.fast, self.pair.mlflow)
        ]
        fast, mlflow = (future.result() for future in futures)
        assert _outcome(self.pair, "fast", fast) == _outcome(self.pair, "mlflow", mlflow), (path, body)
        return mlflow.status_code

    @initialize()
    def setup(self) -> None:
        self.pair.runs = []
        self.run_pairs: dict[str, RunPair] = {"unknown": UNKNOWN}
        for label, experiment in (("A active", "A"), ("A deleted", "A"), ("B active", "B")):
            body = json.dumps({"experiment_id": self.experiments[experiment], "run_name": label, "start_time": NOW})
            ids = [
                server.post("/runs/create", body.encode(), "application/json").json()["run"]["info"]["run_id"]
                for server in (self.pair.fast, self.pair.mlflow)
            ]
            self.run_pairs[label] = RunPair(*ids)
            self.pair.runs.append(self.run_pairs[label])
        for server, side in ((self.pair.fast, "fast"), (self.pair.mlflow, "mlflow")):
            run_id = getattr(self.run_pairs["A deleted"], side)
            assert server.post("/runs/delete", json.dumps({"run_id": run_id}).encode(), "application/json").ok

    @rule(
        writes=st.lists(
            st.tuples(
                st.sampled_from(WRITERS),
                st.sampled_from(CREDENTIALS),
                st.sampled_from(ENDPOINTS),
                st.sampled_from(RUNS),
                st.sampled_from(["/api/2.0/mlflow", "/api/2.0/mlflow", "/ajax-api/2.0/mlflow"]),
                st.sampled_from(["a", "b", "c"]),
                st.integers(0, 3),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def write(self, writes: list[tuple[str, str, str, str, str, str, int]]) -> None:
        """A few writes in a row (several per step: most steps are writes, as in a trainer's loop), each sent one
        to three times: the repeats the fast server may answer from a remembered allowance. How often follows
        from the write's step (drawn anyway), so that the seed gives the same sequences as without repeats."""
        self._outlive_allowances()
        for one in writes:
            for _ in range(REPEATS_BY_STEP[one[-1]]):
                self._write(*one)

    def _write(self, user: str, credential: str, endpoint: str, run: str, prefix: str, value: str, step: int) -> None:
        password = self.logins.password[user] or self.logins.previous[user]
        authorization = {
            "right": _basic(user, password),
            "none": None,
            "wrong password": _basic(user, password + "x"),
            "unknown user": _basic(f"ghost-{user}", password),
            "previous password": _basic(user, self.logins.previous[user]),
            "bearer": f"Bearer {password}",
            "malformed basic": "Basic !!!not-base64",
            "empty password": _basic(user, ""),
        }[credential]
        bodies: dict[str, dict[str, Any]] = {
            "log-batch": {
                "metrics": [{"key": "loss", "value": step / 2, "timestamp": NOW + step, "step": step}],
                "params": [{"key": "lr", "value": "0.1"}],
                "tags": [{"key": "team", "value": value}],
            },
            "set-tag": {"key": "team", "value": value},
            "update": {"status": "FINISHED" if step % 2 else "RUNNING", "end_time": NOW + step},
        }
        pairs = self.run_pairs[run]
        AuthorizedWrites.writes += 1
        if endpoint == "create":
            # A new run in the write's experiment (the run's: A, B, or one that does not exist), as a trainer starts.
            experiment = UNKNOWN_EXPERIMENT if run == "unknown" else self.experiments[run[0]]
            body = {"experiment_id": experiment, "start_time": NOW + step, "run_name": f"run-{value}"}
            sides = {"fast": body, "mlflow": body}
        else:
            sides = {side: {"run_id": getattr(pairs, side), **bodies[endpoint]} for side in ("fast", "mlflow")}
        futures = [
            self.pair.pool.submit(_call, server, "POST", f"{prefix}/runs/{endpoint}", sides[side], authorization)
            for side, server in (("fast", self.pair.fast), ("mlflow", self.pair.mlflow))
        ]
        responses = [f.result() for f in futures]
        if endpoint == "create" and all(response.status_code == 200 for response in responses):
            # Its stored state is compared with the others' after the sequence.
            created = RunPair(*(response.json()["run"]["info"]["run_id"] for response in responses))
            self.pair.runs.append(created)
        AuthorizedWrites.statuses[responses[1].status_code] += 1
        fast, mlflow = (_outcome(self.pair, side, r) for side, r in zip(("fast", "mlflow"), responses, strict=True))
        assert fast == mlflow, f"{user} ({credential}) {endpoint} on {run}\nfast path: {fast}\nMLflow:    {mlflow}"

    @rule(
        change=st.sampled_from(["grant", "grant", "revoke", "admin", "password", "delete or recreate"]),
        user=st.sampled_from(sorted(USERS)),
        resource=st.sampled_from(["experiment A", "experiment A", "experiment B", "runs"]),
        permission=st.sampled_from(PERMISSIONS),
        admin=st.booleans(),
    )
    def change_user(self, change: str, user: str, resource: str, permission: str, admin: bool) -> None:
        """Between writes, as an admin would: a grant (experiment or run tier, DENY included) given, changed or
        revoked, the admin flag set or cleared, the password changed, the user deleted or created again."""
        kind, _, which = resource.partition(" ")
        # Only a promotion and a user created again cannot take a permission away.
        recreated = change == "delete or recreate" and self.logins.password[user] is None
        reduces = not ((change == "admin" and admin) or recreated)
        target = {"username": user, "resource_type": kind, "resource_id": self.experiments[which] if which else "*"}
        if change == "grant":
            self._on_both("POST", "/api/3.0/mlflow/users/permissions/grant", {**target, "permission": permission})
        elif change == "revoke":
            self._on_both("POST", "/api/3.0/mlflow/users/permissions/revoke", target)
        elif change == "admin":
            self._on_both("PATCH", "/api/2.0/mlflow/users/update-admin", {"username": user, "is_admin": admin})
        elif change == "password":
            self.logins.changes += 1
            new = f"password-{user}-{self.logins.changes}"
            body = {"username": user, "password": new}
            if self._on_both("PATCH", "/api/2.0/mlflow/users/update-password", body) == 200:
                self.logins.previous[user], self.logins.password[user] = self.logins.password[user] or new, new
        elif self.logins.password[user] is None:
            password = self.logins.previous[user]
            if self._on_both("POST", "/api/2.0/mlflow/users/create", {"username": user, "password": password}) == 200:
                self.logins.password[user] = password
        elif self._on_both("DELETE", "/api/2.0/mlflow/users/delete", {"username": user}) == 200:
            self.logins.previous[user], self.logins.password[user] = self.logins.password[user] or "", None
        if reduces:
            AuthorizedWrites.reduced_at = time.monotonic()

    def teardown(self) -> None:
        self.pair.check_runs()


def _set_up_users(pair: Pair, logins: Logins) -> dict[str, str]:
    """Experiments A and B and the users of USERS with their grants, the same on both servers."""
    admin = _basic(*ADMIN)
    experiments = {}
    for name in ("A", "B"):
        created = [
            _call(
                server, "POST", "/api/2.0/mlflow/experiments/create", {"name": f"auth-{name}-{uuid.uuid4().hex}"}, admin
            )
            for server in (pair.fast, pair.mlflow)
        ]
        assert created[0].json() == created[1].json(), [answer.text for answer in created]
        experiments[name] = created[1].json()["experiment_id"]
    for user, grants in USERS.items():
        calls: list[tuple[str, str, dict[str, Any]]] = [
            ("POST", "/api/2.0/mlflow/users/create", {"username": user, "password": logins.password[user]})
        ]
        calls += [
            ("POST", "/api/3.0/mlflow/users/permissions/grant", {
                "username": user, "resource_type": kind, "permission": permission,
                "resource_id": experiments[which] if kind == "experiment" else which})
            for kind, which, permission in grants
        ]  # fmt: skip
        if user == "promoted":
            calls.append(("PATCH", "/api/2.0/mlflow/users/update-admin", {"username": user, "is_admin": True}))
        for method, path, body in calls:
            for server in (pair.fast, pair.mlflow):
                answer = _call(server, method, path, body, admin)
                assert answer.status_code == 200, (path, body, answer.text)
    return experiments


def test_generated_authorized_writes(auth_servers: tuple[Server, Server], tmp_path: Path) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        pair = Pair(*auth_servers, pool)
        logins = Logins()
        AuthorizedWrites.pair, AuthorizedWrites.logins = pair, logins
        AuthorizedWrites.experiments = _set_up_users(pair, logins)
        AuthorizedWrites.writes = 0
        AuthorizedWrites.statuses.clear()
        AuthorizedWrites.waited, AuthorizedWrites.reduced_at = 0.0, None
        run_state_machine_as_test(
            AuthorizedWrites,
            settings=settings(
                max_examples=EXAMPLES, stateful_step_count=STEPS, derandomize=True, database=None, deadline=None,
                suppress_health_check=list(HealthCheck), print_blob=False,
                phases=(Phase.explicit, Phase.reuse, Phase.generate),
            ),
        )  # fmt: skip
    answered_fast = [requests.get(server.url + COUNT_PATH, timeout=30).json() for server in auth_servers]
    from_memory = answered_fast[0].get(FROM_MEMORY, 0)
    print(
        f"{AuthorizedWrites.writes} generated writes in {time.monotonic() - started:.0f} s "
        f"({AuthorizedWrites.waited:.1f} s of it leaving notifications time after changes); MLflow answered "
        f"{dict(AuthorizedWrites.statuses)}, the fast path itself {answered_fast[0]}"
    )
    assert AuthorizedWrites.writes >= MINIMUM_WRITES, f"only {AuthorizedWrites.writes} generated writes"
    # Not a vacuous parity: every decision occurred, and the fast path answered them itself (MLflow's server, with
    # the fast path off, none).
    assert answered_fast[1] == {}, answered_fast
    for status in ("200", "401", "403"):
        assert AuthorizedWrites.statuses[int(status)] >= MINIMUM_PER_ANSWER, AuthorizedWrites.statuses
        assert answered_fast[0].get(status, 0) >= MINIMUM_PER_ANSWER, answered_fast
    # And the memory of allowances was on: parity held for answers the auth app did not decide again.
    assert from_memory >= MINIMUM_FROM_MEMORY, answered_fast


def _fast_path_counts(server: Server) -> Counter[str]:
    return Counter(requests.get(server.url + COUNT_PATH, timeout=30).json())


def _user_writing_to_a_run(fast: Server, admin_user: bool) -> tuple[str, str, Any]:
    """A new user with EDIT on a new experiment (or, `admin_user`, an admin without a grant) and a run in it, whose
    writes the fast path has answered, some from a remembered allowance: (name, experiment id, write)."""
    admin, name = _basic(*ADMIN), f"user-{uuid.uuid4().hex[:8]}"
    experiment = _call(fast, "POST", "/api/2.0/mlflow/experiments/create", {"name": name}, admin).json()
    assert _call(fast, "POST", "/api/2.0/mlflow/users/create", {"username": name, "password": name}, admin).ok
    if admin_user:
        promotion = {"username": name, "is_admin": True}
        assert _call(fast, "PATCH", "/api/2.0/mlflow/users/update-admin", promotion, admin).ok
    else:
        grant = {"username": name, "resource_type": "experiment", "resource_id": experiment["experiment_id"]}
        assert _call(fast, "POST", "/api/3.0/mlflow/users/permissions/grant", {**grant, "permission": "EDIT"}, admin).ok
    run = _call(fast, "POST", "/api/2.0/mlflow/runs/create", experiment, admin).json()["run"]["info"]["run_id"]
    login = _basic(name, name)

    def tag(step: int) -> int:
        body = {"run_id": run, "key": "step", "value": str(step)}
        return int(_call(fast, "POST", "/api/2.0/mlflow/runs/set-tag", body, login).status_code)

    before = _fast_path_counts(fast)
    assert [tag(step) for step in range(5)] == [200] * 5
    counts = _fast_path_counts(fast) - before
    # The fast path answered all five, some from the remembered allowance.
    assert counts["200"] == 5 and counts[FROM_MEMORY] > 0, counts
    return name, experiment["experiment_id"], tag


@pytest.mark.parametrize(
    ("change", "refusal"),
    [("grant removed", 403), ("demoted", 403), ("user deleted", 401), ("password changed", 401)],
    ids=["grant removed", "demoted", "user deleted", "password changed"],
)
def test_a_change_by_another_server_counts_at_once(
    auth_servers: tuple[Server, Server], change: str, refusal: int
) -> None:
    """On the fast server, with a user's writes to a run answered from a remembered allowance: the user's permission
    is taken away by another process on the same auth database (MLflow's auth store in this test process, as a
    worker of another replica writes it). Writes as fast as the test can send them: an allowed answer may come only
    for a write sent within NOTIFIED_SECONDS of the change's commit, and every write after the first refusal is
    refused, by the fast path itself."""
    fast = auth_servers[0]
    name, experiment_id, tag = _user_writing_to_a_run(fast, admin_user=change == "demoted")
    other_server = SqlAlchemyStore()
    other_server.init_db(AUTH_DATABASES[fast.name])
    try:
        before = _fast_path_counts(fast)
        {
            "grant removed": lambda: other_server.delete_experiment_permission(experiment_id, name),
            "demoted": lambda: other_server.update_user(name, is_admin=False),
            "user deleted": lambda: other_server.delete_user(name),
            "password changed": lambda: other_server.update_user(name, password=name + "-changed"),
        }[change]()
        changed = time.monotonic()
        answers: list[tuple[float, int]] = []  # (sent, status), from the change on
        while len(answers) < 1000 and time.monotonic() - changed < 0.5:
            sent = time.monotonic()
            answers.append((sent, tag(len(answers))))
    finally:
        other_server.engine.dispose()
    counts = _fast_path_counts(fast) - before
    statuses = [status for _, status in answers]
    first = next(index for index, status in enumerate(statuses) if status != 200)
    allowed_late = [sent - changed for sent, status in answers if status == 200]
    print(
        f"{change}: the first write after the change got {statuses[0]}; {len(allowed_late)} allowed, the last "
        f"sent {1000 * max(allowed_late, default=0):.1f} ms after the change; {len(answers) - first} refused"
    )
    assert all(late < NOTIFIED_SECONDS for late in allowed_late), allowed_late
    assert statuses[first:] == [refusal] * (len(statuses) - first), statuses
    assert counts[str(refusal)] == len(statuses) - first, counts  # refused by the fast path, not MLflow's app


def test_a_grant_counts_at_the_next_request_even_when_no_notification_says_so(
    auth_servers: tuple[Server, Server],
) -> None:
    """The fast server remembers the auth reads of its decisions (the user, its grants) until a change is notified.
    A grant given while no notification is sent (the trigger disabled around it) leaves those reads stale for as
    long as the allowance cap: the user's next write and create-run, refused on the remembered reads, are decided
    again on the database's rows and allowed, by the fast path and MLflow's Flask path alike."""
    fast = auth_servers[0]
    uri = AUTH_DATABASES[fast.name]
    admin, name = _basic(*ADMIN), f"late-{uuid.uuid4().hex[:8]}"
    experiment = _call(fast, "POST", "/api/2.0/mlflow/experiments/create", {"name": name}, admin).json()
    assert _call(fast, "POST", "/api/2.0/mlflow/users/create", {"username": name, "password": name}, admin).ok
    run = _call(fast, "POST", "/api/2.0/mlflow/runs/create", experiment, admin).json()["run"]["info"]["run_id"]
    login = _basic(name, name)

    def tag() -> int:
        body = {"run_id": run, "key": "k", "value": "v"}
        return int(_call(fast, "POST", "/api/2.0/mlflow/runs/set-tag", body, login).status_code)

    def create_run() -> int:
        return int(_call(fast, "POST", "/api/2.0/mlflow/runs/create", experiment, login).status_code)

    engine = sqlalchemy.create_engine(uri)
    store = SqlAlchemyStore()
    store.init_db(uri)
    time.sleep(NOTIFIED_SECONDS)  # the setup's own changes counted: the reads below are remembered under them
    assert [tag(), tag(), create_run()] == [403, 403, 403]  # the server's default, READ
    tables = auth_changes.prepare_change_notifications(uri)  # installed already: only lists the watched tables

    def triggers(state: str) -> None:
        with engine.begin() as connection:
            for table in tables:
                connection.execute(
                    sqlalchemy.text(f"ALTER TABLE {auth_changes.quoted(table)} {state} TRIGGER {auth_changes.TRIGGER}")
                )

    try:
        triggers("DISABLE")
        store.create_experiment_permission(experiment["experiment_id"], name, "EDIT")
    finally:
        triggers("ENABLE")
        store.engine.dispose()
        engine.dispose()
    before = _fast_path_counts(fast)
    assert [tag(), tag(), create_run()] == [200, 200, 200]
    assert (_fast_path_counts(fast) - before)["200"] == 2  # the writes answered by the fast path itself


def test_while_not_listening_every_write_is_decided(auth_servers: tuple[Server, Server]) -> None:
    """The fast server's listener loses its connection, and its next one finds a table without the change trigger
    (as a server started without prepare would): it is not listening, and every write is decided by the auth app,
    none answered from memory. Once prepare has installed the triggers again it listens and remembers again."""
    fast = auth_servers[0]
    uri = AUTH_DATABASES[fast.name]
    _, _, tag = _user_writing_to_a_run(fast, admin_user=False)
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"DROP TRIGGER {auth_changes.TRIGGER} ON experiment_permissions"))
        assert _terminate_listeners(uri) >= 1
        time.sleep(auth_changes.LIVENESS_SECONDS + 0.2)
        before = _fast_path_counts(fast)
        assert [tag(step) for step in range(20)] == [200] * 20
        counts = _fast_path_counts(fast) - before
        assert counts["200"] == 20 and counts[FROM_MEMORY] == 0, counts
    finally:
        auth_changes.prepare_change_notifications(uri)
        engine.dispose()

    def remembers_again() -> bool:
        before = _fast_path_counts(fast)
        assert [tag(step) for step in range(3)] == [200] * 3
        return (_fast_path_counts(fast) - before)[FROM_MEMORY] > 0

    wait_until(remembers_again, 20, "the listener did not listen again after prepare", interval=0.5)


def test_an_auth_mode_without_a_hook_writes_nothing_through_the_fast_path(
    migrated_server: tuple[str, str], tmp_path: Path
) -> None:
    """MLflow's basic-auth app wrapped as the server wraps it, fast path switched on, but under an auth mode the
    fast path has no hook for: every write the fast path would answer must get the auth app's own decision
    (401 anonymous, 403 for a reader, 200 for an editor), and the fast path must answer none of them."""
    factory = "tests.support.fast_path_counter:create_auth_app_under_a_mode_without_hook"
    with _running([_start_with_auth("unknown-mode", True, factory, migrated_server, tmp_path)]) as (server,):
        admin = _basic(*ADMIN)
        experiment = _call(server, "POST", "/api/2.0/mlflow/experiments/create", {"name": "no-hook"}, admin).json()
        for user, permission in (("reader", "READ"), ("editor", "EDIT")):
            body = {"username": user, "password": f"password-{user}-0"}
            assert _call(server, "POST", "/api/2.0/mlflow/users/create", body, admin).status_code == 200
            grant = {"username": user, "resource_type": "experiment", "permission": permission,
                     "resource_id": experiment["experiment_id"]}  # fmt: skip
            assert _call(server, "POST", "/api/3.0/mlflow/users/permissions/grant", grant, admin).status_code == 200
        run = _call(server, "POST", "/api/2.0/mlflow/runs/create", experiment, admin).json()["run"]["info"]["run_id"]
        writes = {
            "log-batch": {"run_id": run, "metrics": [{"key": "loss", "value": 1, "timestamp": NOW, "step": 0}]},
            "set-tag": {"run_id": run, "key": "team", "value": "a"},
            "update": {"run_id": run, "status": "RUNNING"},
        }
        expected = {"anonymous": 401, "reader": 403, "editor": 200}
        logins = {"anonymous": None, "reader": _basic("reader", "password-reader-0")}
        logins["editor"] = _basic("editor", "password-editor-0")
        answers = {
            (prefix, path, who): _call(server, "POST", f"{prefix}/runs/{path}", body, login).status_code
            for prefix in ("/api/2.0/mlflow", "/ajax-api/2.0/mlflow")
            for path, body in writes.items()
            for who, login in logins.items()
        }
        assert answers == {key: expected[key[2]] for key in answers}
        assert requests.get(server.url + COUNT_PATH, timeout=30).json() == {}
