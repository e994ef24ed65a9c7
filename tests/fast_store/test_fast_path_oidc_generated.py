"""Generated differential tests of the fast path with MLFLOW_AUTH=oidc: the same generated logins (tokens and
signed-in sessions), grants and run writes, sent to two servers, must get the same answers and leave the same runs.

- fast: the server's OIDC app (proxied_artifacts.create_app_with_oidc, mlflow-oidc-auth 10.2.0) with
  MLFLOW_FAST_STORE=on: the fast HTTP path sits inside the plugin's middleware and asks the plugin's own
  before-request hook (fast_path_oidc.py), then writes; a token's allowed write is remembered and answered next
  time in front of the plugin's app, until the plugin's database changes (its triggers installed as prepare does);
- MLflow: the same factory with MLFLOW_FAST_STORE=off: the plugin's middleware and hook, and MLflow's handlers,
  answer everything.

Each is a uvicorn process (test_fast_path_generated.py's harness) with its own tracking and plugin databases on
the throwaway Postgres. No provider is needed: the users, groups, grants, tokens and sessions are written to each
server's plugin database with the plugin's own store, as `mlflow-stack-token` and the plugin's sign-in do. A
session is what the plugin's /callback makes of a sign-in: a row of its session store (`create_auth_session`) and
Starlette's session cookie naming it, signed with the server's secret key (the cookie is made here with
Starlette's own signer). A Hypothesis state machine sends log-batch, set-tag, runs/update and runs/create as
users with READ, EDIT, MANAGE or an explicit NO_PERMISSIONS on the run's experiment, through a group, with no
grant, as an admin and as a service account, with a token, a session, a revoked token or session, a wrong or no
login, while it grants, revokes, promotes, demotes, deactivates and reactivates those users and revokes their
tokens and sessions. The plugin remembers decisions for 1 s (oidc_auth.PERMISSION_CACHE_TTL_SECONDS): after each change
both servers are given that second, so that they decide on the same grants. Every answer's status, content type,
WWW-Authenticate and body (run ids masked) must be equal, and so must every run after each sequence.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
import sqlalchemy
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from mlflow_stack_server import auth_changes
from tests.fast_store.conftest import create_database, fresh_database
from tests.fast_store.test_auth_changes import NOTIFIED_SECONDS, _terminate_listeners
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

FACTORY = "tests.support.fast_path_counter:create_app_with_oidc"
# Both servers sign their session cookies with it (MLFLOW_FLASK_SERVER_SECRET_KEY, the plugin's SECRET_KEY).
SECRET_KEY = secrets.token_hex(16)
CACHE_WAIT = 1.2  # the plugin's permission cache (1 s), and a margin

MINIMUM_WRITES = 150  # generated run writes per CI run (each to both servers), at least
MINIMUM_PER_ANSWER = 15  # of each of 200, 401 and 403 (MLflow's side); 200 and 403 answered by the fast path itself
MINIMUM_PER_LOGIN = 5  # of each of 200 and 403 with a token, and with a session
MINIMUM_FROM_MEMORY = 6  # token writes the fast server answered from memory, in front of the plugin's app
EXAMPLES = 6
STEPS = 30
ADMIN = "stack-admin"
GROUP = "ml-team"
# Each user's grants on experiment A at the start, and whether it belongs to GROUP (which holds EDIT on A).
USERS: dict[str, tuple[str | None, bool]] = {
    "reader": ("READ", False),
    "editor": ("EDIT", False),
    "manager": ("MANAGE", False),
    "denied": ("NO_PERMISSIONS", True),  # an explicit denial for the user, in a group that may edit
    "grouped": (None, True),
    "nogrant": (None, False),
    "promoted": (None, False),  # made admin at the start
    "robot": ("EDIT", False),  # a service account: tokens, never a session
}
SERVICE_ACCOUNTS = frozenset({"robot"})
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
CREDENTIALS = ("token", "token", "token", "session", "session", "session", "none", "revoked token", "revoked session",
               "wrong token", "unknown user", "bearer", "malformed basic", "forged session")  # fmt: skip
CHANGES = ("grant", "grant", "revoke", "group grant", "membership", "admin", "active", "revoke token", "revoke session")
ENDPOINTS = ("log-batch", "log-batch", "set-tag", "update", "create")
RUNS = ("A active", "A active", "A active", "A deleted", "B active", "unknown")
UNKNOWN_EXPERIMENT = "987654321"  # create-run's experiment for the "unknown" run
# Who writes: every user, those allowed to at the start twice as often (else 200 is rare).
WRITERS = (*sorted(USERS), "editor", "manager", "grouped", "promoted", "robot")


def session_cookie(session_id: str, secret_key: str = SECRET_KEY) -> str:
    """The cookie Starlette's SessionMiddleware sets for {"session_id": ...} (the plugin's /callback)."""
    from itsdangerous import TimestampSigner

    data = base64.b64encode(json.dumps({"session_id": session_id}).encode())
    return TimestampSigner(secret_key).sign(data).decode()


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@dataclass
class Side:
    """One server and its plugin store (the plugin's SqlAlchemyStore on that server's database)."""

    server: Server
    store: Any
    tokens: dict[str, str] = field(default_factory=dict)  # user -> the current token
    revoked_tokens: dict[str, str] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)  # user -> the current session id
    revoked_sessions: dict[str, str] = field(default_factory=dict)

    def new_token(self, user: str) -> None:
        expires = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=1)
        self.tokens[user] = self.store.create_user_token(user, f"t-{uuid.uuid4().hex[:8]}", expires, "test")[1]

    def new_session(self, user: str) -> None:
        self.sessions[user] = self.store.create_auth_session(user, datetime.now(UTC) + timedelta(days=1))

    def revoke_token(self, user: str, active: bool) -> None:
        """Revoked, and a new one issued (the plugin issues none to a deactivated user: the old one stays, dead)."""
        self.store.delete_user_tokens(user)
        self.revoked_tokens[user] = self.tokens[user]
        if active:
            self.new_token(user)

    def revoke_session(self, user: str, active: bool) -> None:
        """Revoked, and signed in again (a deactivated user cannot: the old session stays, dead)."""
        self.store.revoke_all_auth_sessions(user)
        self.revoked_sessions[user] = self.sessions[user]
        if active:
            self.new_session(user)

    def login(self, user: str, credential: str) -> tuple[dict[str, str], dict[str, str]]:
        """(headers, cookies) of one write's login."""
        token = self.tokens[user]
        cookie = {
            "session": {"session": session_cookie(self.sessions[user])},
            "revoked session": {"session": session_cookie(self.revoked_sessions.get(user, "never-issued"))},
            "forged session": {"session": session_cookie(self.sessions[user], "not-the-servers-key")},
        }.get(credential, {})
        authorization = {
            "token": _basic(user, token),
            "revoked token": _basic(user, self.revoked_tokens.get(user, token + "x")),
            "wrong token": _basic(user, token[:-4] + "zzzz"),
            "unknown user": _basic(f"ghost-{user}", token),
            "bearer": f"Bearer {token}",
            "malformed basic": "Basic !!!not-base64",
        }.get(credential)
        return ({"Authorization": authorization} if authorization else {}), cookie


def _plugin_store(uri: str) -> Any:
    """The plugin's store class on one database (its migrations run here, before the server starts)."""
    # The plugin reads its configuration at import: from this environment only, with the servers' key.
    os.environ.setdefault("CONFIG_PROVIDERS", "env")
    os.environ.setdefault("SECRET_KEY", SECRET_KEY)
    from mlflow_oidc_auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(uri)
    return store


def _start_with_oidc(name: str, fast: bool, migrated_server: tuple[str, str], folder: Path) -> tuple[Server, Any]:
    from mlflow_stack_server.oidc_auth import plugin_environment
    from mlflow_stack_server.settings import Settings

    database = fresh_database(migrated_server)
    users = create_database(migrated_server[0])
    store = _plugin_store(users)
    # As prepare leaves the plugin's database: the change triggers the fast server's listener needs.
    auth_changes.prepare_change_notifications(users, auth_changes.OIDC_UNWATCHED_COLUMNS)
    stack = {
        "MLFLOW_AUTH": "oidc",
        "MLFLOW_BACKEND_STORE_URI": database,
        "MLFLOW_ARTIFACTS_DESTINATION": (folder / f"{name}-artifacts").as_uri(),  # as _start sets it
        "MLFLOW_OIDC_DATABASE_URI": users,
        # Never contacted: tokens and sessions live in the plugin's database.
        "MLFLOW_OIDC_ISSUER": "https://idp.invalid",
        "MLFLOW_OIDC_CLIENT_ID": "mlflow",
        "MLFLOW_OIDC_CLIENT_SECRET": "not-used",
        "MLFLOW_OIDC_REDIRECT_URI": "http://127.0.0.1/callback",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": SECRET_KEY,
        "MLFLOW_UI_WORKFLOW": "",
        "_MLFLOW_SGI_NAME": "uvicorn",
    }
    environment = {**stack, **plugin_environment(Settings.from_environment(stack), None), "LOG_LEVEL": "WARNING"}
    return _start(name, database, fast, folder, FACTORY, environment), store


@pytest.fixture(scope="module")
def oidc_sides(migrated_server: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Side]]:
    folder = tmp_path_factory.mktemp("generated-oidc")
    sides = [Side(*_start_with_oidc(name, name == "fast", migrated_server, folder)) for name in ("fast", "mlflow")]
    try:
        for side in sides:
            side.store.create_user(ADMIN, ADMIN, is_admin=True, is_service_account=True)
            side.new_token(ADMIN)
            side.server.session.auth = (ADMIN, side.tokens[ADMIN])  # set-up calls and reading runs back
            wait_until(
                functools.partial(_healthy, side.server), START_TIMEOUT, functools.partial(_log_tail, side.server),
                interval=0.5, ignoring=(requests.RequestException,),
            )  # fmt: skip
        yield sides
    finally:
        for side in sides:
            side.server.process.terminate()
        for side in sides:
            side.server.process.wait(timeout=30)
            side.store.engine.dispose()


def _outcome(pair: Pair, side: str, response: Any) -> Any:
    return response.headers.get("www-authenticate"), pair.outcome(side, response)


def _call(side: Side, path: str, body: dict[str, Any], headers: dict[str, str], cookies: dict[str, str]) -> Any:
    # No session object: a cookie or a login of this request only.
    return requests.post(
        side.server.url + path,
        data=json.dumps(body),
        headers={"Content-Type": "application/json", **headers},
        cookies=cookies,
        timeout=120,
    )


WRITES = st.lists(
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
    max_size=5,
)


# A fixed sequence (derandomized runs would follow this module's source, and edits would reshuffle which of the
# minimums below a run meets); one that meets them all.
@seed(20)
class OidcWrites(RuleBasedStateMachine):
    pair: Pair  # set by the test
    sides: list[Side]
    experiments: dict[str, str]  # "A", "B" -> the experiment id (the same on both servers)
    writes = 0
    statuses: ClassVar[Counter[int]] = Counter()  # MLflow's answers to the generated writes
    by_login: ClassVar[Counter[tuple[str, int]]] = Counter()  # the same, by the kind of login

    @initialize()
    def setup(self) -> None:
        self.pair.runs = []
        # The plugin's databases outlive a sequence: everyone active again, with a fresh token and session.
        self.active = dict.fromkeys(USERS, True)
        for side in self.sides:
            for user in USERS:
                side.store.update_user(user, active=True)
                side.new_token(user)
                side.new_session(user)
        self.run_pairs: dict[str, RunPair] = {"unknown": UNKNOWN}
        for label, experiment in (("A active", "A"), ("A deleted", "A"), ("B active", "B")):
            body = json.dumps({"experiment_id": self.experiments[experiment], "run_name": label, "start_time": NOW})
            ids = [
                side.server.post("/runs/create", body.encode(), "application/json").json()["run"]["info"]["run_id"]
                for side in self.sides
            ]
            self.run_pairs[label] = RunPair(*ids)
            self.pair.runs.append(self.run_pairs[label])
        for side, name in zip(self.sides, ("fast", "mlflow"), strict=True):
            run_id = getattr(self.run_pairs["A deleted"], name)
            assert side.server.post("/runs/delete", json.dumps({"run_id": run_id}).encode(), "application/json").ok

    @rule(writes=WRITES)
    def write(self, writes: list[tuple[str, str, str, str, str, str, int]]) -> None:
        """A few writes in a row (several per step: most steps are writes, as in a trainer's loop)."""
        for one in writes:
            self._write(*one)

    @rule(writes=WRITES)
    def more_writes(self, writes: list[tuple[str, str, str, str, str, str, int]]) -> None:
        """The same as `write`: two steps in three are writes (each change then waits out the plugin's cache)."""
        self.write(writes)

    def _write(self, user: str, credential: str, endpoint: str, run: str, prefix: str, value: str, step: int) -> None:
        # A token's allowed write is sent again, as a trainer's loop repeats it: the second one may be answered
        # from the fast server's memory, in front of the plugin's app.
        if self._write_once(user, credential, endpoint, run, prefix, value, step) == 200 and credential == "token":
            self._write_once(user, credential, endpoint, run, prefix, value, step)

    def _write_once(
        self, user: str, credential: str, endpoint: str, run: str, prefix: str, value: str, step: int
    ) -> int:
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
        OidcWrites.writes += 1
        if endpoint == "create":
            # A new run in the write's experiment (the run's: A, B, or one that does not exist), as a trainer starts.
            experiment = UNKNOWN_EXPERIMENT if run == "unknown" else self.experiments[run[0]]
            body = {"experiment_id": experiment, "start_time": NOW + step, "run_name": f"run-{value}"}
            sent = {"fast": body, "mlflow": body}
        else:
            sent = {name: {"run_id": getattr(pairs, name), **bodies[endpoint]} for name in ("fast", "mlflow")}
        futures = [
            self.pair.pool.submit(_call, side, f"{prefix}/runs/{endpoint}", sent[name], *side.login(user, credential))
            for name, side in zip(("fast", "mlflow"), self.sides, strict=True)
        ]
        responses = [f.result() for f in futures]
        if endpoint == "create" and all(response.status_code == 200 for response in responses):
            # Its stored state is compared with the others' after the sequence.
            self.pair.runs.append(RunPair(*(response.json()["run"]["info"]["run_id"] for response in responses)))
        OidcWrites.statuses[responses[1].status_code] += 1
        OidcWrites.by_login[credential, responses[1].status_code] += 1
        fast, mlflow = (_outcome(self.pair, side, r) for side, r in zip(("fast", "mlflow"), responses, strict=True))
        assert fast == mlflow, f"{user} ({credential}) {endpoint} on {run}\nfast path: {fast}\nMLflow:    {mlflow}"
        return int(responses[1].status_code)

    @rule(
        change=st.sampled_from(CHANGES),
        user=st.sampled_from(sorted(USERS)),
        experiment=st.sampled_from(["A", "A", "B"]),
        permission=st.sampled_from(PERMISSIONS),
        flag=st.booleans(),
    )
    def change_user(self, change: str, user: str, experiment: str, permission: str, flag: bool) -> None:
        """Between writes, as an admin or the provider would, on both servers alike; then the plugin's cache time."""
        from mlflow.exceptions import MlflowException

        experiment_id = self.experiments[experiment]
        for side in self.sides:
            store = side.store
            if change == "grant":
                try:
                    store.update_experiment_permission(experiment_id, user, permission)
                except MlflowException:
                    store.create_experiment_permission(experiment_id, user, permission)
            elif change == "revoke":
                with contextlib.suppress(MlflowException):  # no grant to remove: nothing changes, on either
                    store.delete_experiment_permission(experiment_id, user)
            elif change == "group grant":
                try:
                    store.update_group_experiment_permission(GROUP, experiment_id, permission)
                except MlflowException:
                    store.create_group_experiment_permission(GROUP, experiment_id, permission)
            elif change == "membership":
                store.set_user_groups(user, [GROUP] if flag else [])
            elif change == "admin":
                store.update_user(user, is_admin=flag)
            elif change == "active":
                store.update_user(user, active=flag)  # deactivating also revokes the user's sessions
                if flag and not self.active[user]:
                    side.new_token(user)  # issued again, and signed in again
                    side.new_session(user)
            elif change == "revoke token":
                side.revoke_token(user, self.active[user])
            else:
                side.revoke_session(user, self.active[user])
        if change == "active":
            self.active[user] = flag
        time.sleep(CACHE_WAIT)

    def teardown(self) -> None:
        self.pair.check_runs()


def _set_up_users(sides: list[Side]) -> dict[str, str]:
    """Experiments A and B (GROUP may edit A) and the users of USERS with their grants, the same on both."""
    experiments = {}
    for name in ("A", "B"):
        body = json.dumps({"name": f"oidc-{name}-{uuid.uuid4().hex}"}).encode()
        created = [side.server.post("/experiments/create", body, "application/json") for side in sides]
        assert created[0].json() == created[1].json(), [answer.text for answer in created]
        experiments[name] = created[1].json()["experiment_id"]
    for side in sides:
        store = side.store
        store.populate_groups([GROUP])
        store.create_group_experiment_permission(GROUP, experiments["A"], "EDIT")
        for user, (permission, member) in USERS.items():
            store.create_user(user, user, is_admin=user == "promoted", is_service_account=user in SERVICE_ACCOUNTS)
            if permission:
                store.create_experiment_permission(experiments["A"], user, permission)
            if member:
                store.set_user_groups(user, [GROUP])
            side.new_token(user)
            side.new_session(user)
    return experiments


def test_generated_oidc_writes(oidc_sides: list[Side]) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        pair = Pair(oidc_sides[0].server, oidc_sides[1].server, pool)
        OidcWrites.pair, OidcWrites.sides = pair, oidc_sides
        OidcWrites.experiments = _set_up_users(oidc_sides)
        OidcWrites.writes = 0
        OidcWrites.statuses.clear()
        OidcWrites.by_login.clear()
        run_state_machine_as_test(
            OidcWrites,
            settings=settings(
                max_examples=EXAMPLES, stateful_step_count=STEPS, derandomize=True, database=None, deadline=None,
                suppress_health_check=list(HealthCheck), print_blob=False,
                phases=(Phase.explicit, Phase.reuse, Phase.generate),
            ),
        )  # fmt: skip
    answered_fast = [requests.get(side.server.url + COUNT_PATH, timeout=30).json() for side in oidc_sides]
    print(
        f"{OidcWrites.writes} generated writes in {time.monotonic() - started:.0f} s; MLflow answered "
        f"{dict(OidcWrites.statuses)}, the fast path itself {answered_fast[0]}; by login "
        f"{dict(sorted(OidcWrites.by_login.items()))}"
    )
    assert OidcWrites.writes >= MINIMUM_WRITES, f"only {OidcWrites.writes} generated writes"
    # Not a vacuous parity: every decision occurred, and the fast path answered the plugin's 200 and 403 itself
    # (MLflow's server, with the fast path off, none). A 401 is the plugin's AuthMiddleware's, before the fast path.
    assert answered_fast[1] == {}, answered_fast
    for code in (200, 401, 403):
        assert OidcWrites.statuses[code] >= MINIMUM_PER_ANSWER, OidcWrites.statuses
    for status in ("200", "403"):
        assert answered_fast[0].get(status, 0) >= MINIMUM_PER_ANSWER, answered_fast
    # Repeated token writes were answered in front of the plugin's app, from a remembered allowance.
    assert answered_fast[0].get(FROM_MEMORY, 0) >= MINIMUM_FROM_MEMORY, answered_fast
    # Both login kinds were let in and refused on their grants (not only turned away at the door).
    for login in ("token", "session"):
        for code in (200, 403):
            assert OidcWrites.by_login[login, code] >= MINIMUM_PER_LOGIN, OidcWrites.by_login


def _fast_path_counts(side: Side) -> Counter[str]:
    return Counter(requests.get(side.server.url + COUNT_PATH, timeout=30).json())


def _token_writer(side: Side, user: str, permission: str = "EDIT") -> tuple[str, Any]:
    """A new user with `permission` on a new experiment, a token, and a run in it: (experiment id, set-tag with the
    user's current token, or `token`; its status)."""
    body = json.dumps({"name": f"oidc-cache-{uuid.uuid4().hex}"}).encode()
    experiment_id = side.server.post("/experiments/create", body, "application/json").json()["experiment_id"]
    side.store.create_user(user, user, is_admin=False, is_service_account=False)
    side.store.create_experiment_permission(experiment_id, user, permission)
    body = json.dumps({"experiment_id": experiment_id, "start_time": NOW}).encode()
    run_id = side.server.post("/runs/create", body, "application/json").json()["run"]["info"]["run_id"]
    side.new_token(user)

    def set_tag(token: str | None = None) -> Any:
        headers = {"Authorization": _basic(user, token or side.tokens[user])}
        tag = {"run_id": run_id, "key": "team", "value": "a"}
        return _call(side, "/api/2.0/mlflow/runs/set-tag", tag, headers, {})

    return experiment_id, set_tag


def _until_remembered(side: Side, write: Any) -> Any:
    """Writes until one is answered from memory in front of the plugin's app (the plugin's permission cache must
    first have outlived the last change: up to about 1 s); that answer."""
    answers: list[Any] = []

    def remembered() -> bool:
        before = _fast_path_counts(side)[FROM_MEMORY]
        answers.append(write())
        assert answers[-1].status_code == 200, answers[-1].text
        return _fast_path_counts(side)[FROM_MEMORY] == before + 1

    wait_until(remembered, 20, "no write was answered from memory", interval=0.1)
    return answers[-1]


def test_a_revoked_token_or_deactivated_user_is_refused_at_the_next_fast_write(oidc_sides: list[Side]) -> None:
    """Writes answered from memory in front of the plugin's app; then a token deleted, or its user deactivated,
    through another process (this test's own plugin store): once the change's notification has reached the
    server's listener, the next write is refused (the plugin decides it again)."""
    side = oidc_sides[0]
    user = f"cache-{uuid.uuid4().hex[:8]}"
    _, set_tag = _token_writer(side, user)
    _until_remembered(side, set_tag)
    side.store.delete_user_tokens(user)
    time.sleep(NOTIFIED_SECONDS)
    assert set_tag().status_code == 401
    side.new_token(user)
    _until_remembered(side, set_tag)
    side.store.update_user(user, active=False)
    time.sleep(NOTIFIED_SECONDS)
    assert set_tag().status_code == 401


def test_a_removed_grant_is_never_answered_from_memory(oidc_sides: list[Side]) -> None:
    """A grant removed: from its notification on, no write is answered from memory; the plugin itself refuses once
    its own 1-second permission cache has passed."""
    side = oidc_sides[0]
    user = f"grant-{uuid.uuid4().hex[:8]}"
    experiment_id, set_tag = _token_writer(side, user)
    _until_remembered(side, set_tag)
    side.store.delete_experiment_permission(experiment_id, user)
    time.sleep(NOTIFIED_SECONDS)
    before = _fast_path_counts(side)[FROM_MEMORY]
    deadline = time.monotonic() + CACHE_WAIT
    while time.monotonic() < deadline:
        set_tag()  # the plugin's own cache may still allow it for up to 1 s: never from memory
    assert _fast_path_counts(side)[FROM_MEMORY] == before
    assert set_tag().status_code == 403


def test_an_expired_token_is_refused_without_any_change(oidc_sides: list[Side]) -> None:
    """A token that expires within seconds: remembered no longer than its expiry, though nothing is notified."""
    side = oidc_sides[0]
    user = f"expiry-{uuid.uuid4().hex[:8]}"
    _, set_tag = _token_writer(side, user)
    expires = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=4)  # naive UTC, as the plugin stores it
    short = side.store.create_user_token(user, f"short-{uuid.uuid4().hex[:8]}", expires, "test")[1]
    _until_remembered(side, lambda: set_tag(short))
    while datetime.now(UTC).replace(tzinfo=None) < expires:
        time.sleep(0.05)
    time.sleep(0.05)
    assert set_tag(short).status_code == 401
    assert set_tag().status_code == 200  # the user's other token still works


def test_a_write_from_memory_answers_as_the_plugins_path_does(oidc_sides: list[Side]) -> None:
    """The same write answered through the plugin's app and in front of it: the same status, headers (but the
    date) and body."""
    side = oidc_sides[0]
    _, set_tag = _token_writer(side, f"parity-{uuid.uuid4().hex[:8]}")
    through_plugin = set_tag()
    from_memory = _until_remembered(side, set_tag)

    def answer(response: Any) -> Any:
        return response.status_code, sorted((k, v) for k, v in response.headers.items() if k != "date"), response.text

    assert answer(from_memory) == answer(through_plugin)


def test_while_not_listening_nothing_remembered_is_used(oidc_sides: list[Side]) -> None:
    """The server's listener on the plugin's database loses its connection and finds a table without the change
    trigger when it reconnects: nothing is answered from memory. Once the triggers are back it remembers again."""
    side = oidc_sides[0]
    uri = side.store.engine.url.render_as_string(hide_password=False)
    _, set_tag = _token_writer(side, f"listen-{uuid.uuid4().hex[:8]}")
    _until_remembered(side, set_tag)
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"DROP TRIGGER {auth_changes.TRIGGER} ON experiment_permissions"))
        assert _terminate_listeners(uri) >= 1
        time.sleep(auth_changes.LIVENESS_SECONDS + 0.2)
        before = _fast_path_counts(side)
        assert [set_tag().status_code for _ in range(20)] == [200] * 20
        counts = _fast_path_counts(side) - before
        assert counts["200"] == 20 and counts[FROM_MEMORY] == 0, counts
    finally:
        auth_changes.prepare_change_notifications(uri, auth_changes.OIDC_UNWATCHED_COLUMNS)
        engine.dispose()
    _until_remembered(side, set_tag)
