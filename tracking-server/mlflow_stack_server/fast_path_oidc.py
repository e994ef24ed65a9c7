"""MLFLOW_AUTH=oidc on the fast HTTP path (fast_http.py): mlflow-oidc-auth's own decision, for one request.

Who the caller is: the plugin's middlewares have found out before the fast path sees the request. The fast path
sits inside the plugin's FastAPI app, after its ProxyHeaders, Session, WorkspaceContext, Auth and permission
middlewares (`install_inside`): AuthMiddleware checks the session cookie, the token (the basic-auth password) or
the bearer, answers 401 itself when there is none or it is refused, and puts the caller in the ASGI scope
(AUTH_CONTEXT_KEY). What the caller may do: the plugin's Flask `before_request_hook` (the route's validator:
`validate_can_log_metrics`, `validate_can_update_run`, the group and user grants through the plugin's 1-second
permission cache), run in a Flask request context built from the same method, path, query, headers and body
(the validators read run_id from the JSON body) with the caller in its environ, as the plugin's WSGI bridge puts
it there. Nothing is decided here: None allows the write, a 401 or 403 is answered in the plugin's words (status,
headers, body), anything else (a run that does not exist, a 400) goes to MLflow's app, whose Flask hook then
answers it. No caller in the scope (a route the plugin leaves open) also goes to MLflow's app.

The plugin's validators look a run's experiment up with one query of the run's row (its `get_run_experiment_id`).
While the plugin decides for the fast path, that lookup answers from the worker's map of run to experiment
(fast_path_auth's, as with basic auth: a run never moves), filled by the lookup itself and by MLflow's create-run
answers through this worker; every other caller gets the plugin's own lookup. A run removed for good (`make gc`)
stays known to a worker until it restarts: a write to it is then decided on its former experiment (a caller allowed
there gets the store's "not found", 404; any other the plugin's 403), where the plugin's path answers "not found".

Remembered allowances, answered in front of the plugin's app (TokenAllowances). Most of an OIDC write's cost is
the plugin's middlewares around the fast path, so a trainer's repeated write is answered before them: the fast path
is also wrapped around the plugin's whole app (`front_hook`, proxied_artifacts.create_app_with_oidc), inside the
worker's thread cap, answering only what the inner hook remembered as allowed; anything else goes, body replayed,
through the plugin's app unchanged. What is remembered, and for how long:

- Only a login whose validity rests on nothing but rows of the plugin's database and the token's expiry: one of
  the plugin's access tokens sent as the basic-auth password (Authorization: Basic user:token, the token in the
  plugin's current format). The plugin's AuthMiddleware reads the first Authorization header and, when it is
  Basic, decides on it alone; a session cookie (signed state, the session's lifetime, the provider's refresh)
  and a Bearer token (the provider's keys, time) are decided through the plugin every time, and so is a request
  with a Cookie header or more than one Authorization header (which credential wins would be the plugin's call).
- The key: an HMAC (a random key per worker) of the Authorization header, the method, the route, the query and
  what the plugin decides the route on. For log-batch, set-tag and runs/update that is UPDATE on the run's
  experiment and nothing of the run itself (validate_can_log_metrics, validate_can_update_run: the plugin has no
  grant on a run, and log-batch's logged models are not in the shapes the fast path answers), so the key is the
  experiment (EXPERIMENT_UPDATE): a run's set-tag and runs/update reuse its log-batch's allowance, and a new run of
  the experiment is answered from its first write. A run whose experiment the front does not know yet is handed
  on and remembered under the experiment the plugin's decision looked up. runs/create is decided by
  validate_can_update_experiment on the experiment_id it sends (the plugin registers nothing after it): its key is
  that experiment, so a trainer's next run in the experiment is created from memory too.
  An allowance holds the generation of the plugin database's change notifications (auth_changes.py, a
  listener per worker) read in front of the plugin's app, BEFORE its middlewares read the token, the user and
  the grants. Any change committed after that read moves the generation on and the allowance is never used.
- The plugin's permission cache (PERMISSION_CACHE_TTL_SECONDS) may hold a permission read before the last
  notified change while that change is younger than the cache's lifetime: a write stamped then is decided without
  reading that cache (its permissions read from the database, after the generation was), so what is remembered
  is never older than the generation it carries. Recorded only for a user who holds no regex grant on
  experiments, directly or through a group: those match the experiment's name, which lives in the tracking
  database, not the plugin's.
- Used for at most MLFLOW_AUTH_DECISION_CACHE_SECONDS (0: nothing remembered) and never past the token's
  `expires_at` (read from the plugin's database when recording: naive UTC, as the plugin stores it); never while
  the listener cannot prove it is listening (nothing remembered is used then); not at all when the plugin's
  database is not Postgres (no notifications).
- A write answered in front of the plugin does not refresh the token's `last_used_at` (the plugin refreshes it
  at most once a minute when it sees the token): it lags by up to that window more.

This module imports nothing from MLflow or the plugin at load (fast_path_auth.py lists its hook factory).
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import logging
import secrets
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from mlflow_stack_server.asgi import Scope
from mlflow_stack_server.fast_path_auth import (
    ALLOWANCES_KEPT,
    Authorize,
    BoundedMemory,
    DecisionKey,
    HandToMlflowError,
    Refusal,
    credential_key,
    decide_in_flask,
    experiment_keyed,
    experiment_subject,
    learn_created_runs,
    validator_of_route,
    worker_runs,
)
from mlflow_stack_server.settings import Settings

_logger = logging.getLogger(__name__)
# In the ASGI scope of a write the front did not answer: what the inner hook records an allowance under (Stamp).
STAMP_KEY = "mlflow_stack.fast_path_allowance"


@dataclass(frozen=True)
class Stamp:
    key: Hashable | None  # None: the run's experiment is not known yet (found by the plugin's decision)
    run_id: str
    username: str  # as the header names it
    prefix: str  # the token's lookup prefix
    generation: int
    since: float  # clock time the generation was counted at
    started: float  # clock time the generation was read at


@dataclass(frozen=True)
class Allowance:
    generation: int
    until: float  # clock time


def basic_token_login(scope: Scope, parse_prefix: Callable[[str], str | None]) -> tuple[bytes, str, str] | None:
    """(the Authorization header, username, token prefix) of a request that logs in with one of the plugin's
    access tokens and nothing else; None for any other request (see the module)."""
    credentials = []
    for name, value in scope["headers"]:
        if name == b"cookie":
            return None
        if name == b"authorization":
            credentials.append(value)
    if len(credentials) != 1 or not credentials[0].startswith(b"Basic "):
        return None
    try:
        username, password = base64.b64decode(credentials[0][6:], validate=True).decode().split(":", 1)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    prefix = parse_prefix(password)
    return None if prefix is None or not username else (credentials[0], username, prefix)


class TokenAllowances:
    """A worker's remembered "allowed" decisions for the plugin's access tokens (see the module).

    `generation_since`: auth_changes.ChangeListener.generation_since on the plugin's database. `expiry(username,
    prefix)`: seconds the token has left (None: no such token). `has_regex_grants(username)`: whether the user
    holds a regex grant on experiments. `cache_seconds`: the plugin's permission cache."""

    def __init__(
        self,
        seconds: float,
        cache_seconds: float,
        generation_since: Callable[[], tuple[int, float] | None],
        parse_prefix: Callable[[str], str | None],
        expiry: Callable[[str, str], float | None],
        has_regex_grants: Callable[[str], bool],
        key: DecisionKey | None = None,
        kept: int = ALLOWANCES_KEPT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds, self.cache_seconds = seconds, cache_seconds
        self._generation_since, self._parse_prefix = generation_since, parse_prefix
        self._expiry, self._has_regex_grants = expiry, has_regex_grants
        self._clock = clock
        self._key = credential_key(secrets.token_bytes(32)) if key is None else key
        self.memory = BoundedMemory(kept)

    def front(self, scope: Scope, body: bytes, run_id: str) -> Refusal | None:
        """The front's hook: None for a remembered allowance; otherwise HandToMlflowError (the plugin's app then
        answers), the request stamped with the generation read now when it may be remembered."""
        login = basic_token_login(scope, self._parse_prefix)
        current = self._generation_since()
        if login is None or current is None:
            raise HandToMlflowError("not answered from memory")
        _, username, prefix = login
        started = self._clock()
        key = self._key(scope, body, run_id)  # None: the run's experiment is not known yet
        allowance = None if key is None else self.memory.get(key)
        if allowance is not None:
            if allowance.generation == current[0] and started < allowance.until:
                return None
            self.memory.forget(key)
        scope[STAMP_KEY] = Stamp(key, run_id, username, prefix, current[0], current[1], started)
        raise HandToMlflowError("not remembered")

    def needs_fresh_permissions(self, scope: Scope) -> bool:
        """Whether the plugin must decide this stamped write without its permission cache for the allowance to be
        remembered: the cache may hold a permission read before the last notified change."""
        stamp = scope.get(STAMP_KEY)
        return isinstance(stamp, Stamp) and stamp.started - stamp.since < self.cache_seconds

    def record(self, scope: Scope, username: str, stale: bool) -> None:
        """After the plugin allowed a write the front stamped: remember it, if it may be (see the module).
        `username`: the caller the plugin's AuthMiddleware found; `stale`: the decision may have read a permission
        older than the stamp's generation (needs_fresh_permissions said so, and the plugin read its cache)."""
        stamp = scope.get(STAMP_KEY)
        if not isinstance(stamp, Stamp) or stamp.username.lower() != username:
            return
        if stale or self._has_regex_grants(username):
            return
        key = self._stamped_key(scope, stamp)
        left = self._expiry(username, stamp.prefix)
        if key is None or left is None:
            return
        until = stamp.started + min(self.seconds, left)
        if until > self._clock():
            self.memory.put(key, Allowance(stamp.generation, until))

    def refused(self, scope: Scope) -> None:
        stamp = scope.get(STAMP_KEY)
        if isinstance(stamp, Stamp):
            key = self._stamped_key(scope, stamp)
            if key is not None:
                self.memory.forget(key)

    def _stamped_key(self, scope: Scope, stamp: Stamp) -> Hashable | None:
        """The stamp's key; for a run whose experiment the front did not know, the key the plugin's decision has
        made known meanwhile (it looked the run up; a run never moves to another experiment)."""
        return stamp.key if stamp.key is not None else self._key(scope, b"", stamp.run_id)


def _plugin_store() -> Any:
    from mlflow_oidc_auth.store import store

    return store._get_instance()


def token_allowances(settings: Settings) -> TokenAllowances | None:
    """The worker's TokenAllowances with a listener on the plugin's database, started; None when nothing may be
    remembered (MLFLOW_AUTH_DECISION_CACHE_SECONDS=0, or a database that sends no notifications). Built after the
    plugin's app (importing its modules reads the plugin's configuration), handed to oidc_hook (which records
    allowances) and front_hook (which answers from them)."""
    from mlflow_oidc_auth.config import config
    from mlflow_oidc_auth.repository.user_token import parse_prefix

    from mlflow_stack_server import auth_changes, oidc_login_cache
    from mlflow_stack_server.console import Console

    if settings.auth_decision_cache_seconds <= 0:
        return None
    store = _plugin_store()
    if store.engine.dialect.name != "postgresql":
        return None
    uri = store.engine.url.render_as_string(hide_password=False)
    listener = auth_changes.ChangeListener(auth_changes.psycopg2_connector(uri), Console("[tracking-server]").log)

    def expiry(username: str, prefix: str) -> float | None:
        try:
            row = oidc_login_cache.token_row(store, username, prefix)
        except oidc_login_cache.RecheckFailedError:
            return None
        return None if row is None else (row[2] - oidc_login_cache._now()).total_seconds()

    def has_regex_grants(username: str) -> bool:
        groups = store.get_groups_ids_for_user(username)
        return bool(
            store.list_experiment_regex_permissions(username)
            or (groups and store.list_group_experiment_regex_permissions_for_groups_ids(groups))
        )

    cache_seconds = float(getattr(config, "PERMISSION_CACHE_TTL_SECONDS", 30))
    allowances = TokenAllowances(
        settings.auth_decision_cache_seconds, cache_seconds, listener.generation_since, parse_prefix, expiry,
        has_regex_grants, key=_allowance_key(),
    )  # fmt: skip
    listener.start()
    return allowances


# Set while the plugin decides for the fast path: its run lookup answers from the worker's map of run to experiment.
_DECIDING = contextvars.ContextVar("fast_path_oidc_deciding", default=False)


def _allowance_key() -> DecisionKey:
    """An allowance's key: the credential (an HMAC under a per-worker key), the method, the plugin's validator of
    the route, the query and, for log-batch, set-tag and runs/update, the run's experiment (see the module).

    The run's experiment comes from a per-worker map (fast_path_auth's, as with basic auth), filled by MLflow's
    create-run answers through this worker and by the plugin's own lookup of the run (its `get_run_experiment_id`,
    which the validators call), which answers from the map during the fast path's decisions."""
    from mlflow.server import app as flask_app
    from mlflow_oidc_auth.hooks import before_request
    from mlflow_oidc_auth.hooks.route_policy import strip_static_prefix
    from mlflow_oidc_auth.validators import run as run_validators

    known = worker_runs()
    if not getattr(run_validators.get_run_experiment_id, "fast_path_decisions", False):  # once per process
        plain = run_validators.get_run_experiment_id

        def run_experiment_id(tracking_store: Any, run_id: str) -> str:
            if not _DECIDING.get():
                return plain(tracking_store, run_id)
            experiment_id = known.get(run_id)
            if experiment_id is None:
                experiment_id = str(plain(tracking_store, run_id))
                known.put(run_id, experiment_id)
            return experiment_id

        run_experiment_id.fast_path_decisions = True  # type: ignore[attr-defined]
        run_validators.get_run_experiment_id = run_experiment_id
        learn_created_runs(flask_app, known)
    route = validator_of_route(
        before_request._find_validator,
        lambda path: bool(before_request._is_unprotected_route(strip_static_prefix(path))),
    )
    # The plugin's validators of the fast path's writes: log-batch's checks UPDATE on the run's experiment and on the
    # logged models a metric names (never in the shapes the fast path answers: fast_http.METRIC_FIELDS); set-tag's
    # and runs/update's UPDATE on the run's experiment. A run has no grants of its own in the plugin.
    deciders = frozenset(
        ("validator", validator)
        for validator in (run_validators.validate_can_log_metrics, run_validators.validate_can_update_run)
    )
    return credential_key(
        secrets.token_bytes(32),
        experiment_keyed(route, deciders),
        experiment_subject(known.get),
    )


# Set while the plugin decides a write whose allowance is to be remembered just after a change: its permission
# cache is not read (what it computes is still stored there, fresher than what it held).
_FRESH_PERMISSIONS = contextvars.ContextVar("fast_path_fresh_permissions", default=False)


class _WithoutReads:
    """The plugin's permission cache as seen during a fresh decision: nothing found, everything stored."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def get(self, key: str) -> Any:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)


def _fresh_permissions_when_asked() -> None:
    """The plugin's permission resolution (its `_get_permission_cache`) reads no cached permission while
    _FRESH_PERMISSIONS is set; once per process."""
    from mlflow_oidc_auth.utils import permissions

    plain = permissions._get_permission_cache
    if getattr(plain, "fresh_when_asked", False):
        return

    def permission_cache() -> Any:
        backend = plain()
        return _WithoutReads(backend) if _FRESH_PERMISSIONS.get() else backend

    permission_cache.fresh_when_asked = True  # type: ignore[attr-defined]
    permissions._get_permission_cache = permission_cache


def oidc_hook(settings: Settings, allowances: TokenAllowances | None = None) -> Authorize:
    """The plugin's before-request decision for one fast-path request, its "allowed" recorded in `allowances` for
    the front (None: nothing recorded). Built once per worker, after the plugin's app (importing it reads the
    plugin's configuration and registers the hook on MLflow's Flask app)."""
    from mlflow_oidc_auth.entities.auth_context import AUTH_CONTEXT_KEY
    from mlflow_oidc_auth.hooks import before_request_hook

    if allowances is not None:
        _fresh_permissions_when_asked()

    def authorize(scope: Scope, body: bytes, run_id: str) -> Refusal | None:
        context = scope.get(AUTH_CONTEXT_KEY)
        if context is None:
            raise HandToMlflowError("no caller in the scope: the plugin answers")
        fresh = allowances is not None and allowances.needs_fresh_permissions(scope)
        reading, deciding = _FRESH_PERMISSIONS.set(fresh), _DECIDING.set(True)
        try:
            refusal = decide_in_flask(before_request_hook, scope, body, {AUTH_CONTEXT_KEY: context})
        finally:
            _DECIDING.reset(deciding)
            _FRESH_PERMISSIONS.reset(reading)
        if allowances is not None:
            if refusal is not None:
                allowances.refused(scope)
                return refusal
            try:
                # Decided without the permission cache whenever needs_fresh_permissions asked for it (above).
                allowances.record(scope, context.username, stale=False)
            except Exception:  # the plugin's database unreachable: the write is allowed, just not remembered
                _logger.warning("Could not remember a fast-path allowance", exc_info=True)
        return refusal

    return authorize


def front_hook(allowances: TokenAllowances | None) -> Authorize | None:
    """The hook of the fast path in front of the plugin's app: the worker's remembered allowances (those oidc_hook
    records); None: nothing is remembered, no fast path in front."""
    return None if allowances is None else allowances.front


def install_inside(plugin_app: Any, app_factory: Any, authorize: Authorize) -> None:
    """Put `app_factory(app, authorize)` (FastTrackingWrites) innermost in the plugin's FastAPI middleware, so that
    all the plugin's middlewares run first. Starlette builds the stack from `user_middleware` (first = outermost)
    at the first request; after that nothing can be added, and the start stops here instead of serving writes
    that nobody authenticated."""
    from starlette.middleware import Middleware

    if getattr(plugin_app, "middleware_stack", None) is not None:
        raise RuntimeError("the plugin's app has already started; the fast path cannot be put inside it")
    # Runs it creates are known to the worker's map of run to experiment at once (the plugin's run lookup, the keys).
    plugin_app.user_middleware.append(Middleware(app_factory, authorize=authorize, learn_run=worker_runs().put))
