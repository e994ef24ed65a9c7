"""The hot tracking writes (runs/create, log-batch, set-tag, runs/update) answered in the ASGI layer, without Flask.

Why: with the fast store (fast_store.py) the store is no longer where a log_batch request's CPU goes; MLflow's HTTP
layer is: FastAPI's middleware stack and router, the ASGI-to-WSGI bridge, Flask and Werkzeug, protobuf parsing of
the JSON body, and the response built back through protobuf (docs/performance.md has the profile). This wrapper
answers the calls a trainer makes for every run directly: read the body, check it has the plain shape MLflow's
clients send, build the same entities MLflow's handler builds, call the same store method in a worker thread
(psycopg2 blocks) and answer the JSON MLflow answers.

What stays MLflow's:
- Security: the request passes the same host-header, CORS and security-header middlewares MLflow's FastAPI app
  puts in front of Flask (built by MLflow's own `init_fastapi_security`, from the same settings).
- Validation and errors: the store validates with MLflow's functions (fast_store.py) and raises MLflow's
  exceptions; they are answered exactly as MLflow's `catch_mlflow_exception` does (same body, same status).
- Anything not plainly shaped (another content type, a body that is not a JSON object or fails to parse, an
  unknown or aliased field, a value of an unexpected type, a string with a lone surrogate, NaN, infinite or
  out-of-range numbers, a run rename), and any unexpected error while answering: the request, body replayed,
  goes to MLflow's app untouched, which answers or rejects it in its own words. So this layer never answers
  with a plain-text or HTML error of its own.
- Who may write: before anything is written, the authorization hook of the active MLFLOW_AUTH mode decides
  (fast_path_auth.py; with `basic`, MLflow's basic-auth app's own before-request check), and its 401 or 403 is
  answered as the auth app words it. A mode without a hook gets no fast path at all.
- After the write: MLflow's Flask after-request hooks do not run for the calls answered here. Neither auth app has
  one for these four routes (MLflow's basic auth and mlflow-oidc-auth: their AFTER_REQUEST_PATH_HANDLERS, held to
  that by a unit test); the stack's own (learning a created run's experiment) is told through `learn_run`.
- Switched off (everything through Flask) with MLFLOW_FAST_STORE=off, on an MLflow release it was not verified
  against, with an auth mode that has no authorization hook (fast_path_guard.py), with workspaces (not the fast
  store), and on an artifacts-only server.

MLflow's own Prometheus exporter (prometheus-flask-exporter) sees Flask requests only, so its
`mlflow_http_request_*` series no longer count these calls; the stack's per-endpoint series (request_metrics.py),
outside this wrapper, count every one.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import math
from collections.abc import Callable
from typing import Any, TypeGuard

import anyio.to_thread
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR
from mlflow.protos.service_pb2 import CreateRun, UpdateRun
from mlflow.server import handlers
from mlflow.server.constants import ARTIFACTS_ONLY_ENV_VAR
from mlflow.server.fastapi_security import init_fastapi_security
from mlflow.utils.proto_json_utils import message_to_json
from mlflow.utils.validation import _validate_batch_log_api_req

from mlflow_stack_server.asgi import ASGIApp, Message, Receive, Scope, Send
from mlflow_stack_server.fast_path_auth import Authorize, HandToMlflowError
from mlflow_stack_server.fast_path_guard import fast_path_state
from mlflow_stack_server.settings import Settings, handed_down

# What a handler answers: (status, JSON body), or None for "MLflow's app answers this one".
Answer = tuple[int, bytes]
# What is sent: (status, headers, body).
Reply = tuple[int, list[tuple[bytes, bytes]], bytes]
# A request's JSON -> (what the write is decided on: the run written to, or for create-run its experiment; the
# write), or None: MLflow's app answers it.
Handler = Callable[[dict[str, Any]], tuple[str, Callable[[], Answer]] | None]
# (run id, experiment id) of a run the fast path created: the worker's map of run to experiment learns it.
LearnRun = Callable[[str, str], None]

_logger = logging.getLogger(__name__)
INT64 = (-(2**63), 2**63 - 1)
# Larger bodies are not a trainer's loop: MLflow's app reads them (and applies its own limits).
MAX_FAST_BODY = 1 << 20
EMPTY_RESPONSE = b"{}"  # message_to_json of LogBatch.Response() and SetTag.Response()
JSON_HEADERS = [(b"content-type", b"application/json")]
METRIC_FIELDS = {"key", "value", "timestamp", "step"}
# The names protobuf's JSON parser accepts for RunStatus (UpdateRun.status); others go to MLflow's app.
STATUS_NAMES = frozenset(RunStatus.to_string(status) for status in RunStatus.all_status())


def _is_int64(value: Any) -> bool:
    return type(value) is int and INT64[0] <= value <= INT64[1]


def _finite_double(value: Any) -> float | None:
    """The double protobuf's parser makes of a JSON number, if it is plain; else None (MLflow's app decides)."""
    # bool is an int in Python but not a number to protobuf; NaN/Infinity arrive as strings and go to MLflow.
    if type(value) not in (int, float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a double's range, e.g. 400 digits
        return None
    return number if math.isfinite(number) else None


def _is_text(value: Any) -> TypeGuard[str]:
    """A non-empty str protobuf can hold. A lone surrogate (JSON's "\\ud800") is not UTF-8: protobuf's parser
    stops there and MLflow's handler goes on with what it parsed so far (the field left ""), so MLflow's app
    answers those."""
    if type(value) is not str or not value:
        return False
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _string_pairs(items: Any, entity: type[Param] | type[RunTag]) -> list[Any] | None:
    """params / tags: a list of {"key": non-empty str, "value": str}, else None (MLflow's app decides)."""
    if not isinstance(items, list):
        return None
    pairs = []
    for item in items:
        if (
            type(item) is not dict
            or item.keys() != {"key", "value"}
            or not _is_text(item["key"])
            or not (item["value"] == "" or _is_text(item["value"]))
        ):
            return None
        pairs.append(entity(item["key"], item["value"]))
    return pairs


def _metrics(items: Any) -> list[Metric] | None:
    if not isinstance(items, list):
        return None
    metrics = []
    for item in items:
        if type(item) is not dict or not {"key", "value", "timestamp"} <= item.keys() <= METRIC_FIELDS:
            return None
        key, value, timestamp, step = item["key"], _finite_double(item["value"]), item["timestamp"], item.get("step", 0)
        if not _is_text(key) or value is None:
            return None
        if not _is_int64(timestamp) or not _is_int64(step):
            return None
        # As Metric.from_proto: a double value, no model, dataset or run id.
        metrics.append(Metric(key, value, timestamp, step))
    return metrics


def _mlflow_error(error: MlflowException) -> Answer:
    """What MLflow's catch_mlflow_exception answers (mlflow/server/handlers.py)."""
    status = error.get_http_status_code()
    if status >= 500:
        _logger.error("Error in fast tracking write: %s. Set MLFLOW_LOGGING_LEVEL=DEBUG for traceback.", error)
    return status, error.serialize_as_json().encode()


def log_batch(request: dict[str, Any]) -> tuple[str, Callable[[], Answer]] | None:
    if not request.keys() <= {"run_id", "metrics", "params", "tags"}:
        return None
    run_id = request.get("run_id")
    metrics = _metrics(request.get("metrics", []))
    params = _string_pairs(request.get("params", []), Param)
    tags = _string_pairs(request.get("tags", []), RunTag)
    if not _is_text(run_id) or metrics is None or params is None or tags is None:
        return None

    def call() -> Answer:
        _validate_batch_log_api_req(request)  # MLflow's handler calls it on the same JSON first
        handlers._get_tracking_store().log_batch(run_id=run_id, metrics=metrics, params=params, tags=tags)
        return 200, EMPTY_RESPONSE

    return run_id, call


def set_tag(request: dict[str, Any]) -> tuple[str, Callable[[], Answer]] | None:
    if request.keys() != {"run_id", "key", "value"}:
        return None
    run_id, key, value = request["run_id"], request["key"], request["value"]
    if not _is_text(run_id) or not _is_text(key) or not (value == "" or _is_text(value)):
        return None

    def call() -> Answer:
        handlers._get_tracking_store().set_tag(run_id, RunTag(key, value))
        return 200, EMPTY_RESPONSE

    return run_id, call


def update_run(request: dict[str, Any]) -> tuple[str, Callable[[], Answer]] | None:
    # A rename (run_name) also rewrites the run-name tag: MLflow's app.
    if not request.keys() <= {"run_id", "status", "end_time"}:
        return None
    run_id, status_name, end_time = request.get("run_id"), request.get("status"), request.get("end_time")
    if not _is_text(run_id):
        return None
    if status_name is not None and (type(status_name) is not str or status_name not in STATUS_NAMES):
        return None
    if end_time is not None and not _is_int64(end_time):
        return None
    status = None if status_name is None else RunStatus.from_string(status_name)

    def call() -> Answer:
        info = handlers._get_tracking_store().update_run_info(run_id, status, end_time, None)
        return 200, message_to_json(UpdateRun.Response(run_info=info.to_proto())).encode()

    return run_id, call


def create_run(request: dict[str, Any], learn: LearnRun | None = None) -> tuple[str, Callable[[], Answer]] | None:
    """As MLflow's `_create_run`: the store's create_run with the request's fields (protobuf's defaults for those
    left out: "" and no tags), answered as CreateRun.Response. Only with start_time given (a client's create-run
    sends it); MLflow's app answers anything else. Decided on the experiment (the auth apps' create-run validators
    read experiment_id alone)."""
    if not request.keys() <= {"experiment_id", "user_id", "start_time", "tags", "run_name"}:
        return None
    experiment_id, start_time = request.get("experiment_id"), request.get("start_time")
    user_id, run_name = request.get("user_id", ""), request.get("run_name", "")
    tags = _string_pairs(request.get("tags", []), RunTag)
    if not _is_text(experiment_id) or not _is_int64(start_time) or tags is None:
        return None
    if not (user_id == "" or _is_text(user_id)) or not (run_name == "" or _is_text(run_name)):
        return None

    def call() -> Answer:
        run = handlers._get_tracking_store().create_run(
            experiment_id=experiment_id, user_id=user_id, start_time=start_time, tags=tags, run_name=run_name
        )
        # The run exists now: whatever happens next is answered here, never replayed through MLflow's app (that would
        # create a second run).
        try:
            if learn is not None:
                learn(run.info.run_id, run.info.experiment_id)
            return 200, message_to_json(CreateRun.Response(run=run.to_proto())).encode()
        except Exception as error:
            _logger.exception("Unexpected error answering a created run")
            return _mlflow_error(MlflowException(str(error), INTERNAL_ERROR))

    return experiment_id, call


HANDLERS: dict[str, Handler] = {
    "/mlflow/runs/log-batch": log_batch,
    "/mlflow/runs/set-tag": set_tag,
    "/mlflow/runs/update": update_run,
}
CREATE_RUN = "/mlflow/runs/create"


def fast_path_enabled(settings: Settings) -> bool:
    return (
        # MLFLOW_FAST_STORE, on a verified MLflow, with an authorization hook for MLFLOW_AUTH (fast_path_guard.py)
        fast_path_state(settings.fast_store, auth_mode=settings.auth).enabled
        and not MLFLOW_ENABLE_WORKSPACES.get()
        and not handed_down(ARTIFACTS_ONLY_ENV_VAR)  # MLflow's handlers then answer 503
    )


class _MiddlewareChain:
    """Enough of FastAPI's `add_middleware` for MLflow's `init_fastapi_security` to wrap one ASGI callable."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def add_middleware(self, middleware: Callable[..., ASGIApp], **options: Any) -> None:
        self.app = middleware(self.app, **options)  # the last added is the outermost, as in Starlette


# Where a FastTrackingWrites whose hand-offs skip its security middlewares leaves the replayed body of a request
# `app` answers (a list shared by copies of the context).
_HANDED_OFF: contextvars.ContextVar[list[Receive]] = contextvars.ContextVar("fast_path_handed_off")


class FastTrackingWrites:
    def __init__(
        self,
        app: ASGIApp,
        authorize: Authorize | None,
        hand_off_unsecured: bool = False,
        learn_run: LearnRun | None = None,
    ) -> None:
        """`authorize`: the hook of the active auth mode (fast_path_auth.py), None when the fast path is off
        (fast_path_enabled) or the mode has no hook: then every request goes to `app`, unread.
        `hand_off_unsecured`: a request handed to `app` skips MLflow's security middlewares this layer puts around
        its own answers, because `app` has them already (the fast path in front of mlflow-oidc-auth's app, which
        holds another FastTrackingWrites): twice, they would add their headers twice (`Vary: Origin, Origin`).
        `learn_run`: told every run this layer creates (the auth hooks' map of run to experiment)."""
        self.app = app
        self.authorize = authorize
        self.enabled = authorize is not None
        self.hand_off_unsecured = hand_off_unsecured
        routes: dict[str, Handler] = {**HANDLERS, CREATE_RUN: functools.partial(create_run, learn=learn_run)}
        # MLflow registers each endpoint under /api/2.0 and /ajax-api/2.0 (and the static prefix, if set).
        self.routes = {path: handler for base, handler in routes.items() for path in handlers._get_paths(base)}
        chain = _MiddlewareChain(self._answer)
        init_fastapi_security(chain)  # type: ignore[arg-type]  # duck-typed: it only calls add_middleware
        self.secured = chain.app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.enabled and scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.routes:
            handed_off: list[Receive] = []
            marker = _HANDED_OFF.set(handed_off)
            try:
                await self.secured(scope, receive, send)
            finally:
                _HANDED_OFF.reset(marker)
            if handed_off:
                await self.app(scope, handed_off[0], send)
        else:
            await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        body, complete = await _read_body(receive, MAX_FAST_BODY)
        write = self._fast_call(scope, body) if complete else None
        reply = None
        if write is not None and self.authorize is not None:
            subject, call = write
            reply = await anyio.to_thread.run_sync(_authorized_run, self.authorize, scope, body, subject, call)
        if reply is None:
            if self.hand_off_unsecured:
                _HANDED_OFF.get().append(_replay(body, receive, complete))  # answered by __call__, unsecured
            else:
                await self.app(scope, _replay(body, receive, complete), send)
            return
        status, headers, payload = reply
        headers = [*headers, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    def _fast_call(self, scope: Scope, body: bytes) -> tuple[str, Callable[[], Answer]] | None:
        """(what the write is decided on, the write), or None: MLflow's app answers."""
        content_type = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        if content_type.split(b";")[0].strip() != b"application/json":
            return None  # MLflow's app answers its "Content-Type must be ..." error
        try:
            request = json.loads(body)
            if type(request) is not dict:
                return None  # empty, double-encoded (older clients) or not an object: MLflow's app
            return self.routes[scope["path"]](request)
        except Exception:  # not UTF-8, not JSON, nested too deep (RecursionError), anything odd: MLflow's app
            return None


def _authorized_run(
    authorize: Authorize, scope: Scope, body: bytes, subject: str, call: Callable[[], Answer]
) -> Reply | None:
    """The auth hook's refusal, else the write's answer; None (MLflow's app answers) on any error in the hook.
    `subject`: what the write is decided on (the run, or for create-run its experiment)."""
    try:
        refusal = authorize(scope, body, subject)
    except HandToMlflowError:
        return None
    except Exception:
        _logger.exception("Unexpected error authorizing a fast tracking write; MLflow's app answers it")
        return None
    if refusal is not None:
        status, headers, payload = refusal
        return status, [(k, v) for k, v in headers if k != b"content-length"], payload
    answer = _run(call)
    return None if answer is None else (answer[0], JSON_HEADERS, answer[1])


def _run(call: Callable[[], Answer]) -> Answer | None:
    """The answer, MLflow's error in MLflow's words, or None: an unexpected error, which MLflow's app then answers
    (the store's transaction was rolled back, and every write here is idempotent: replaying it is safe; a create-run
    answers itself once its run exists)."""
    try:
        return call()
    except MlflowException as error:
        return _mlflow_error(error)
    except Exception:
        _logger.exception("Unexpected error in a fast tracking write; MLflow's app answers it")
        return None


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """The body, up to `limit` bytes; (what was read, whether that is all of it)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False  # disconnected: MLflow's app sees the same
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), True
        if size > limit:
            return b"".join(chunks), False


def _replay(body: bytes, receive: Receive, complete: bool) -> Receive:
    """A receive that first returns what was already read, then the rest from the client."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": not complete}
        return await receive()

    return replay
