"""Who may write through the fast HTTP path (fast_http.py): one authorization hook per MLFLOW_AUTH mode.

Why: the fast path answers run writes without Flask, so without a hook it would also skip the permission checks
that an auth app runs inside Flask. The fast path serves a request only when the active auth mode has a hook
here; any other mode (one added to Settings later, one wrapped differently) serves nothing, everything goes to
MLflow's app, and the reason shows in the log, /metrics and `make status` (fast_path_guard.py).

A hook runs in a worker thread (it reads the database) before the write, is given the request (scope, body)
and the run it writes to, and returns None (allowed), or the refusal to answer (401, 403) in the auth app's own
words; an exception hands the request to MLflow's app, which then authorizes and answers it itself.

- `none`: no logins: everyone may write, as MLflow's plain app lets them. Nothing to decide, nothing cached.
- `basic`: MLflow's basic-auth app decides, with its own functions and store: its `_before_request` (the login,
  the admin check, the validator of the route: `validate_can_log_batch`, `validate_can_update_run`, with
  run-level grants and explicit DENY) runs inside a Flask request context built from the same method, path,
  headers and body. The login goes through MLflow's login cache (re-checked against the user's row on every
  hit, login_cache.py), so the password hash is paid once per changed login, as on MLflow's own path. Nothing
  is decided here: a copy of the rules would drift from MLflow's at the next release. Two things are cached:
  - the run's experiment, which the validators read through the tracking store's `get_run` (six queries
    loading the whole run, on every write). A run never moves to another experiment, so while the auth app
    decides for the fast path, `get_run` answers from a per-worker map of run to experiment (RunExperiments),
    filled by the first lookup or by MLflow's create-run answer when the run was created through this worker (a
    trainer's first call: its first write then loads nothing); every other caller gets the store itself. A run
    removed for good (`make gc`) stays known to a worker until it restarts, so a non-admin's write to it gets the
    store's "not found" (404) where MLflow's path answers 403.
  - the auth app's "allowed" (remember_allowances), per worker, keyed by the credentials (an HMAC of the
    Authorization header under a per-worker random key: no password is kept), the method, the route, the query
    and what the route is decided on. The route is the validator MLflow's own `_find_validator` maps the path to
    (validator_of_route). log-batch's validate_can_log_batch (with no logged model named: the fast path answers
    no metric with a model_id) and set-tag's and runs/update's validate_can_update_run all end in the same
    `authorize(user, the run's experiment, [READ on the experiment, UPDATE on runs "*" falling back to the
    experiment])`: nothing of the run itself but its experiment enters the decision (MLflow's run grants are
    wildcard grants within an experiment). So those three share one allowance per login and experiment
    (EXPERIMENT_UPDATE), and a trainer's new run in an experiment it already wrote to is answered from memory
    from its first write; a run whose experiment the worker does not know yet is decided (and so learned).
    Most writes skip the auth app's database reads and its Flask request context. Refusals and hand-offs are
    never remembered: a grant given, a password set or a user created counts at the next request. Every
    remembered allowance is forgotten at any change of the auth database, notified by Postgres
    (auth_changes.py: triggers installed by prepare, a listener per worker), so
    a revoked or lowered grant, a DENY, a demotion, a changed password or a deleted user counts as soon as the
    notification arrives (milliseconds); while the listener cannot prove it receives them, nothing remembered
    is used. The auth database reads the auth app's before-request check makes (the login's row, the user, its
    grants) are remembered the same way (remember_reads), during that check only, for fast-path decisions and
    MLflow's Flask create-run (ROUTES_CHECKED_FROM_MEMORY: a trainer's other call), so that a decision not
    remembered yet (a new run, another route) makes no database round trip either; every other route of MLflow's
    reads the database at every request. Only an "allowed" is answered from remembered reads: anything else is
    decided again on the database's rows (reads_from_memory_first), so a permission just given counts at the next
    request. MLflow's handlers and after-request hooks always read the database: they change it and read it back
    in the same request, before the change's notification arrives.
    An allowance lives at most MLFLOW_AUTH_DECISION_CACHE_SECONDS (60 s) while nothing changes;
    without notifications (an auth database that is not Postgres) at most UNNOTIFIED_SECONDS (1 s). MLflow's
    basic auth has nothing that changes with time alone: users, passwords, admin flags, grants and roles are
    all rows of that database.
- `oidc`: mlflow-oidc-auth decides, with its own `before_request_hook`, for the caller its middlewares found
  (fast_path_oidc.py; the fast path then sits inside the plugin's app, after those middlewares). Its "allowed" for
  a request that logs in with one of the plugin's access tokens (nothing else: a session or an IdP's bearer token
  depends on more than the plugin's database) is remembered per worker like basic auth's, keyed by the run's
  experiment (which alone decides the plugin's answer on these writes), under the same
  MLFLOW_AUTH_DECISION_CACHE_SECONDS, capped by the token's expiry, forgotten at any change of the plugin's
  database (its own change notifications), and answered in front of the plugin's app (fast_path_oidc.py).

This module imports nothing from MLflow at load (fast_path_guard.py imports it while MLflow is being imported).
"""

from __future__ import annotations

import contextvars
import functools
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from types import SimpleNamespace
from typing import Any

from mlflow_stack_server.asgi import Scope
from mlflow_stack_server.settings import Settings

# (status, headers, body): the auth app's answer, sent as it is.
Refusal = tuple[int, list[tuple[bytes, bytes]], bytes]
# (scope, body, run id) -> None to allow, a Refusal, or raise to hand the request to MLflow's app.
Authorize = Callable[[Scope, bytes, str], Refusal | None]
# (scope, body, run id) -> what an "allowed" is remembered under: everything the decision depends on besides the
# auth database's rows; None: not remembered (this request is decided every time).
DecisionKey = Callable[[Scope, bytes, str], Hashable | None]
# The statuses a hook may answer itself; anything else the auth app says goes to MLflow's app.
REFUSALS = (401, 403)


class HandToMlflowError(Exception):
    """The auth app answered something other than "allowed", 401 or 403: MLflow's app answers the request."""


def allow_everyone(scope: Scope, body: bytes, run_id: str) -> Refusal | None:
    return None


def no_login_hook(settings: Settings) -> Authorize:
    return allow_everyone


ALLOWANCES_KEPT = 10_000  # remembered "allowed" decisions per worker (a few MB), the least recently used dropped


class BoundedMemory:
    """A thread-safe map of at most `kept` entries, the least recently used dropped first (a worker's memory of
    decisions: bounded whatever the callers send)."""

    def __init__(self, kept: int) -> None:
        self._kept = kept
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        """The entry (now the most recently used), or None."""
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            return value

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self._kept:
                self._entries.popitem(last=False)

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


def unchanging() -> int | None:
    """The generation of a memory that nothing invalidates: allowances expire with their age only."""
    return 0


def remember_allowances(
    authorize: Authorize,
    key: DecisionKey,
    seconds: float,
    kept: int = ALLOWANCES_KEPT,
    clock: Callable[[], float] = time.monotonic,
    generation: Callable[[], int | None] = unchanging,
) -> Authorize:
    """`authorize`, whose "allowed" answers are reused for `seconds` per `key`, while `generation()` stays the one
    they were decided in; 0 seconds: `authorize` itself.

    `generation` (auth_changes.ChangeListener) moves on at every change of the auth database; None: changes may go
    unnoticed, so nothing is reused or remembered. Both an allowance's generation and its age are read before
    `authorize` reads anything: a change made during the decision makes it stale at once (its notification moves
    the generation on) or `seconds` after that change.
    Only "allowed" is remembered: a refusal, or an exception (a hand-off to MLflow's app), is decided again at
    the next request, so a permission given counts at once. A refusal also forgets the key's allowance (another
    thread may have remembered it meanwhile).
    Concurrent requests with the same key are each decided while nothing is remembered: none waits for another.
    """
    if seconds <= 0:
        return authorize
    allowed = BoundedMemory(kept)  # key -> (when its decision started, generation)

    def remembering(scope: Scope, body: bytes, run_id: str) -> Refusal | None:
        which = key(scope, body, run_id)
        current = generation()
        if which is None or current is None:
            return authorize(scope, body, run_id)
        started = clock()
        decided = allowed.get(which)
        if decided is not None and started - decided[0] < seconds and decided[1] == current:
            return None
        # A stale allowance is replaced or forgotten below.
        refusal = authorize(scope, body, run_id)
        if refusal is not None:
            allowed.forget(which)
            return refusal
        allowed.put(which, (started, current))
        return None

    remembering.__wrapped__ = authorize  # type: ignore[attr-defined]
    return remembering


def the_path(method: str, path: str) -> Hashable:
    return path


def the_run(route: Hashable, run_id: str) -> Hashable | None:
    return run_id


def credential_key(
    secret: bytes,
    route: Callable[[str, str], Hashable] = the_path,
    subject: Callable[[Hashable, str], Hashable | None] = the_run,
) -> DecisionKey:
    """A request's decision key for a login sent in the Authorization header (basic auth): an HMAC of the header
    under `secret` (never the password itself), the method, the route (`route(method, path)`: the path, or what the
    auth app decides the path with, validator_of_route), the query and what the route is decided on
    (`subject(route, run id)`: the run, or the run's experiment when that alone decides, experiment_subject; None:
    not known, no key). None without exactly one such header: nothing to remember for an anonymous request, and
    two would leave it to the auth app which counts.
    The rest of the body does not enter the auth app's decision on these writes: its validators read the run id,
    and log-batch's only other input, a metric's model_id, is not in the shapes the fast path answers
    (fast_http.METRIC_FIELDS)."""

    def key(scope: Scope, body: bytes, run_id: str) -> Hashable | None:
        credentials = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(credentials) != 1:
            return None
        method = scope["method"]
        which = route(method, scope["path"])
        decided_on = subject(which, run_id)
        if decided_on is None:
            return None
        login = hmac.digest(secret, credentials[0], "sha256")
        return login, method, which, scope.get("query_string", b""), decided_on

    return key


ROUTES_KEPT = 256  # (method, path) -> validator answers per worker; the fast path serves six paths


def validator_of_route(
    find_validator: Callable[[Any], Any], unprotected: Callable[[str], bool]
) -> Callable[[str, str], Hashable]:
    """The route as MLflow's basic-auth app decides it: the validator its own `_find_validator` maps the method and
    path to (set-tag and runs/update share validate_can_update_run, /api and /ajax-api share theirs), so that the
    routes it checks with one function share their allowances. The path itself for a route that has no validator,
    that the auth app does not protect, or that its lookup cannot place from the method and path alone (the
    before-request check then depends on more than its validator)."""

    @functools.lru_cache(maxsize=ROUTES_KEPT)
    def route(method: str, path: str) -> Hashable:
        if unprotected(path):
            return path
        try:
            validator = find_validator(SimpleNamespace(method=method, path=path))
        except Exception:
            return path
        return path if validator is None else ("validator", validator)

    return route


# The route of the validators that decide a run write by one permission on the run's experiment alone (MLflow's
# basic auth and mlflow-oidc-auth alike, for log-batch, set-tag and runs/update).
EXPERIMENT_UPDATE = ("UPDATE on the run's experiment",)


def experiment_keyed(
    route: Callable[[str, str], Hashable], experiment_deciders: frozenset[Hashable]
) -> Callable[[str, str], Hashable]:
    """`route` (validator_of_route on the auth app's validator lookup), with the validators that decide by UPDATE on
    the run's experiment alone (`experiment_deciders`) folded into EXPERIMENT_UPDATE."""

    def keyed(method: str, path: str) -> Hashable:
        which = route(method, path)
        return EXPERIMENT_UPDATE if which in experiment_deciders else which

    return keyed


def experiment_subject(experiment_of: Callable[[str], str | None]) -> Callable[[Hashable, str], Hashable | None]:
    """What a route is decided on (credential_key's subject): for EXPERIMENT_UPDATE the run's experiment
    (`experiment_of(run)`; None: not known yet), the run for any other route."""

    def subject(route: Hashable, run_id: str) -> Hashable | None:
        if route != EXPERIMENT_UPDATE:
            return run_id
        experiment_id = experiment_of(run_id)
        return None if experiment_id is None else ("experiment", experiment_id)

    return subject


# Set while the auth app decides for the fast path (in the worker thread that runs the hook).
_DECIDING = contextvars.ContextVar("fast_path_deciding", default=False)
# Set while the auth app decides whether a request may go on (its before-request check, for the fast path or on
# MLflow's own Flask path): the auth store's reads may then be answered from memory (remember_reads). Never set
# while a handler or an after-request hook runs: those change the auth database and read it back at once.
_BEFORE_REQUEST = contextvars.ContextVar("auth_before_request", default=False)
RUN_EXPERIMENTS_KEPT = 100_000  # runs remembered per worker (a few MB), the least recently used dropped


class RunExperiments:
    """The tracking store as the auth app's validators see it during a fast-path decision: `get_run` answers
    a run's experiment from memory after the first lookup (the whole run is loaded then, with MLflow's errors
    for a run that does not exist); everything else is the store's own."""

    def __init__(self, store: Any, known: BoundedMemory) -> None:
        self._store, self._known = store, known

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def get_run(self, run_id: str) -> Any:
        experiment_id = self._known.get(run_id)
        if experiment_id is None:
            run = self._store.get_run(run_id)
            self._known.put(run_id, run.info.experiment_id)
            return run
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id, experiment_id=experiment_id))


def _cache_run_experiments() -> BoundedMemory:
    """Route the auth app's tracking-store lookups through RunExperiments, during fast-path decisions only; the
    worker's map of run to experiment they answer from."""
    from mlflow.server import app as flask_app
    from mlflow.server import auth

    # The name the auth app's validators call (imported from mlflow.server.handlers into its module).
    store_of_mlflow: Callable[[], Any] = getattr(auth, "_get_tracking_store")  # noqa: B009
    known = worker_runs()
    if getattr(store_of_mlflow, "fast_path_decisions", False):
        return known  # already in place (a second app built in this process)

    def tracking_store() -> Any:
        store = store_of_mlflow()
        return RunExperiments(store, known) if _DECIDING.get() else store

    tracking_store.fast_path_decisions = True  # type: ignore[attr-defined]
    setattr(auth, "_get_tracking_store", tracking_store)  # noqa: B010
    learn_created_runs(flask_app, known)
    return known


def run_experiments() -> BoundedMemory:
    """A map of run id to experiment id (a run never moves to another experiment)."""
    return BoundedMemory(RUN_EXPERIMENTS_KEPT)


@functools.cache
def worker_runs() -> BoundedMemory:
    """This worker's map of run id to experiment id: the one the auth hooks' run lookups answer from, filled by those
    lookups and by the runs created through this worker (the fast path's create-run, MLflow's Flask create-run)."""
    return run_experiments()


def created_run(path: str, method: str, status: int, answer: Callable[[], Any], create_paths: set[str]) -> Any:
    """(run id, experiment id) of a run MLflow's create-run handler answered as created; else None. `answer`: the
    response's JSON, parsed only for a successful create-run."""
    if method != "POST" or status != 200 or path not in create_paths:
        return None
    info = ((answer() or {}).get("run") or {}).get("info") or {}
    run_id, experiment_id = info.get("run_id"), info.get("experiment_id")
    if type(run_id) is not str or type(experiment_id) is not str or not run_id or not experiment_id:
        return None
    return run_id, experiment_id


def learn_created_runs(flask_app: Any, known: BoundedMemory) -> None:
    """A run created through this worker (MLflow's create-run, a trainer's first call) is known to RunExperiments
    from its creation (the experiment in the answer is the one the store wrote), so that the first fast-path
    decision on it loads nothing (else the whole run: six queries)."""
    from flask import Response, request
    from mlflow.server import handlers

    create_paths = set(handlers._get_paths("/mlflow/runs/create"))

    def learn_created_run(response: Response) -> Response:
        created = created_run(
            request.path, request.method, response.status_code, lambda: response.get_json(silent=True), create_paths
        )
        if created is not None:
            known.put(*created)
        return response

    # Appended as Flask's after_request does, without its check that no request was served yet: the hook may be
    # built in a process whose Flask app already answered (a second app factory call, tests).
    flask_app.after_request_funcs.setdefault(None, []).append(learn_created_run)


def decide_in_flask(
    decide: Callable[[], Any], scope: Scope, body: bytes, environ_overrides: dict[str, Any] | None = None
) -> Refusal | None:
    """`decide` (an auth app's before-request hook) in a Flask request context built from the request's method,
    path, query, headers and body: None when it allows, its 401 or 403 as it words it; any other answer hands the
    request to MLflow's app."""
    from flask import Response
    from mlflow.server import app as flask_app

    headers = [(key.decode("latin-1"), value.decode("latin-1")) for key, value in scope["headers"]]
    with flask_app.test_request_context(
        scope["path"],
        method=scope["method"],
        headers=headers,
        data=body,
        query_string=scope.get("query_string", b""),
        environ_overrides=environ_overrides,
    ):
        answer: Any = decide()
    if answer is None:
        return None
    if not isinstance(answer, Response) or answer.status_code not in REFUSALS:
        raise HandToMlflowError(f"the auth app answered {answer!r}")
    kept = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in answer.headers.items()]
    return answer.status_code, kept, answer.get_data()


def basic_auth_hook(settings: Settings) -> Authorize:
    """MLflow's basic-auth app's own before-request decision, for one request, its "allowed" remembered for
    MLFLOW_AUTH_DECISION_CACHE_SECONDS. Built once per worker, after the auth app itself (its module reads the auth
    configuration and opens its store at import)."""
    from mlflow.server.auth import (
        _before_request,
        _find_validator,
        auth_config,
        authenticate_request_basic_auth,
        get_auth_func,
        is_unprotected_route,
        validate_can_log_batch,
        validate_can_update_run,
    )

    known = _cache_run_experiments()
    # The key holds what MLflow's basic-auth login reads (the Authorization header); another authorization
    # function, set in the auth config, may read anything: then every request is decided, its reads made.
    remembering = get_auth_func(auth_config.authorization_function) is authenticate_request_basic_auth
    seconds = settings.auth_decision_cache_seconds
    listener = _change_listener() if remembering else None
    check = _before_request
    if listener is not None and seconds > 0:
        _remember_auth_reads(listener.generation, seconds)
        check = reads_from_memory_first(_before_request)

    def before_request() -> Any:
        deciding = _DECIDING.set(True)
        try:
            return check()
        finally:
            _DECIDING.reset(deciding)

    def authorize(scope: Scope, body: bytes, run_id: str) -> Refusal | None:
        return decide_in_flask(before_request, scope, body)

    if not remembering:
        return authorize
    # log-batch, set-tag and runs/update: their validators decide by UPDATE on the run's experiment alone (see the
    # module), so the runs of one experiment share one allowance per login.
    deciders = frozenset(("validator", validator) for validator in (validate_can_log_batch, validate_can_update_run))
    route = experiment_keyed(validator_of_route(_find_validator, is_unprotected_route), deciders)
    key = credential_key(secrets.token_bytes(32), route, experiment_subject(known.get))
    if listener is None:
        return remember_allowances(authorize, key, min(seconds, UNNOTIFIED_SECONDS))
    return remember_allowances(authorize, key, seconds, generation=listener.generation)


AUTH_READS_KEPT = 10_000  # remembered answers per read of the auth store per worker, the least recently used dropped


def _hashable(value: Any) -> Hashable:
    if isinstance(value, (set, frozenset)):
        return frozenset(value)
    if isinstance(value, list):
        return tuple(value)
    return value


def remember_reads(
    read: Callable[..., Any],
    generation: Callable[[], int | None],
    seconds: float,
    kept: int = AUTH_READS_KEPT,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[..., Any]:
    """`read` (a read of the auth store), whose answers are reused per arguments while `generation()` stays the one
    they were read in, for at most `seconds`; None: read every time. Errors are never remembered; a list answered is
    copied for each caller."""
    answers = BoundedMemory(kept)  # arguments -> (when read, generation, answer)

    def remembering(*args: Any, **kwargs: Any) -> Any:
        current = generation()
        if current is None:
            return read(*args, **kwargs)
        which = (tuple(_hashable(a) for a in args), tuple(sorted((k, _hashable(v)) for k, v in kwargs.items())))
        started = clock()
        known = answers.get(which)
        if known is not None and known[1] == current and started - known[0] < seconds:
            value = known[2]
        else:
            value = read(*args, **kwargs)
            answers.put(which, (started, current, value))
        return list(value) if isinstance(value, list) else value

    return remembering


def _during_decisions(remembering: Callable[..., Any], plain: Callable[..., Any]) -> Callable[..., Any]:
    """`remembering` while the auth app's before-request check runs (for the fast path or on MLflow's Flask path),
    `plain` for every other caller (MLflow's own handlers and after-request hooks change the auth database and
    read it back in the same request, before the change's notification has arrived)."""

    def read(*args: Any, **kwargs: Any) -> Any:
        return remembering(*args, **kwargs) if _BEFORE_REQUEST.get() else plain(*args, **kwargs)

    return read


def reads_from_memory_first(before_request: Callable[[], Any]) -> Callable[[], Any]:
    """The auth app's before-request check with the auth store's reads answered from memory; any answer but
    "allowed" or 401 (a 403, an error, an exception) is decided again on the database's current rows. Remembered
    reads may lag a change until its notification arrives: a permission taken away counts from then on (as a
    remembered allowance would), while a permission just given (a grant, the MANAGE MLflow gives the creator of
    an experiment, a user created) counts at the very next request, on every worker. A 401 is MLflow's password
    check failing, which reads the database itself (store.authenticate_user is never remembered): deciding it again
    would only pay a wrong password's hash twice."""

    def checking() -> Any:
        token = _BEFORE_REQUEST.set(True)
        try:
            answer = before_request()
        except Exception:
            answer = "decided again"
        finally:
            _BEFORE_REQUEST.reset(token)
        if answer is None or getattr(answer, "status_code", None) == 401:
            return answer
        return before_request()

    checking.reads_from_memory = True  # type: ignore[attr-defined]
    return checking


# MLflow's Flask routes whose before-request check may read from memory (with MLflow's /api and /ajax-api prefixes):
# a trainer's call besides the three fast-path writes, so that a login on the trainer's path makes no auth read.
# Every other route keeps reading the auth database at every request: there a change counts at the next request.
ROUTES_CHECKED_FROM_MEMORY = ("/mlflow/runs/create",)


def _remember_reads_in_flasks_check(flask_app: Any, before_request: Callable[[], Any], paths: set[str]) -> None:
    """The auth app's before-request hook as Flask runs it for a POST to one of `paths` (create-run), with the auth
    store's reads answered from memory like a fast-path decision's: the login's row, the user (its admin flag) and
    its grants, while no change of the auth database was notified; anything but "allowed" decided again on the
    database's rows (reads_from_memory_first). Any other request: the hook itself."""
    from flask import request

    def checking() -> Any:
        if request.method == "POST" and request.path in paths:
            return from_memory_first()
        return before_request()

    from_memory_first = reads_from_memory_first(before_request)
    checking.reads_from_memory = True  # type: ignore[attr-defined]
    hooks = flask_app.before_request_funcs.get(None, [])
    for index, hook in enumerate(hooks):
        if hook is before_request:
            hooks[index] = checking


def _remember_auth_reads(generation: Callable[[], int | None], seconds: float) -> None:
    """During the auth app's before-request check (fast-path decisions and MLflow's Flask create-run): the auth
    database reads it makes (the login's row, the user, its grants) answered from memory while no change of that
    database was notified (the same bound as allowances), so that a decision not yet remembered (a new run, another
    route) and a create-run cost no database round trip for the login."""
    from mlflow.server import app as flask_app
    from mlflow.server import auth, handlers

    from mlflow_stack_server import login_cache

    store = auth.store
    if getattr(store, "fast_path_reads", False):
        return  # already in place (a second app built in this process)
    for name in ("get_user", "list_grants"):
        plain = getattr(store, name)
        setattr(store, name, _during_decisions(remember_reads(plain, generation, seconds), plain))
    setattr(store, "fast_path_reads", True)  # noqa: B010
    # The login's row, which install_revalidated_logins re-reads at every login answered from MLflow's cache.
    plain_row = login_cache.row_for_this_request
    login_cache.row_for_this_request = _during_decisions(remember_reads(plain_row, generation, seconds), plain_row)
    paths = {path for route in ROUTES_CHECKED_FROM_MEMORY for path in handlers._get_paths(route)}
    _remember_reads_in_flasks_check(flask_app, auth._before_request, paths)


# How long an allowance is reused when the auth database sends no change notifications (not Postgres).
UNNOTIFIED_SECONDS = 1.0


def _change_listener() -> Any:
    """This worker's auth_changes.ChangeListener on MLflow's auth database, started; None when that database is not
    Postgres (no notifications: allowances then expire after UNNOTIFIED_SECONDS), or when the auth app reads from a
    replica (read_database_uri): a decision made after a notification could read the replica's rows from before
    the change, and be remembered as current."""
    from mlflow.server.auth import store

    from mlflow_stack_server import auth_changes
    from mlflow_stack_server.console import Console

    if store.engine.dialect.name != "postgresql" or getattr(store, "read_engine", None) is not None:
        return None
    uri = store.engine.url.render_as_string(hide_password=False)
    return auth_changes.ChangeListener(auth_changes.psycopg2_connector(uri), Console("[tracking-server]").log).start()


def oidc_hook(settings: Settings) -> Authorize:
    """mlflow-oidc-auth's own decision (fast_path_oidc.py; imported here only when the mode is oidc), nothing
    remembered. The server's OIDC app (proxied_artifacts.create_app_with_oidc) builds it with the worker's
    fast_path_oidc.TokenAllowances instead, which it also hands to the front of the plugin's app."""
    from mlflow_stack_server.fast_path_oidc import oidc_hook as plugin_decision

    return plugin_decision(settings)


# The auth modes whose hook exists, and how each is built. A mode missing here gets no fast path.
HOOKS: dict[str, Callable[[Settings], Authorize]] = {"none": no_login_hook, "basic": basic_auth_hook, "oidc": oidc_hook}


def has_hook(auth_mode: str) -> bool:
    return auth_mode in HOOKS


def authorization_hook(settings: Settings) -> Authorize | None:
    """The hook of settings.auth, built from the settings; None: the mode has none."""
    factory = HOOKS.get(settings.auth)
    return None if factory is None else factory(settings)
