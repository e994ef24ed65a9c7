"""Keep every artifact transfer on the tracking server, and bound the requests a worker runs at once.

Since 3.16, an MLflow server whose artifact destination is S3 tells clients (in /server-info) that they
may fetch and send artifacts straight from and to S3 through presigned URLs, and the Python client and
the UI then do so. Those URLs name the server's S3 endpoint, here http://minio:9000, which by design is
reachable from inside the backend network only: a client on the host waits out minutes of retries and the
UI's download button fails. This wrapper makes the server advertise what it can really offer, proxied
transfers, and answers the presigned-URL endpoints with 501, on which MLflow's client falls back to the
proxy. A download stopped because its bytes no longer match their SHA-256 (streamed_artifacts.py,
checksums.py) ends here without a traceback: the connection closes short of Content-Length. Everything else
passes through untouched.

MLflow runs its Flask handlers in anyio worker threads, 40 at a time by default, while its SQLAlchemy
pool holds 5 + 10 connections, and `log_batch` keeps one connection while each of its steps takes a
second one. Fifteen trainers logging at once then hold every connection and wait for a second that never
comes, until the pool's 30 s timeout answers 400 ("QueuePool limit ... reached"). The wrapper caps the
threads at MLFLOW_REQUEST_THREADS; the entrypoint sizes the pool to twice that. Requests beyond the cap
wait in the event loop instead of in the pool.

MLflow 3.17's UI opens in its GenAI view: the choice lives in the browser (the `workflowType` query of the
page's URL, else the localStorage entry `mlflow.workflowType_v1`, else GenAI) and no server setting changes
it. With MLFLOW_UI_WORKFLOW set (the stack sets machine_learning), the UI's page gets a one-line script that
stores that choice when the browser has none yet: the first visit opens the model-training view, and a
person's own later choice (the sidebar switch) is kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio.to_thread
from fastapi import Depends, HTTPException, Request

from mlflow_stack_server.asgi import ASGIApp, Message, Receive, Scope, Send
from mlflow_stack_server.checksums import ArtifactChangedError
from mlflow_stack_server.fast_http import FastTrackingWrites, fast_path_enabled
from mlflow_stack_server.fast_path_auth import Authorize, authorization_hook, worker_runs
from mlflow_stack_server.fast_path_guard import fast_path_state
from mlflow_stack_server.login_cache import install_revalidated_logins
from mlflow_stack_server.oidc_login_cache import install_revalidated_accounts
from mlflow_stack_server.request_metrics import RequestMetrics
from mlflow_stack_server.settings import Settings
from mlflow_stack_server.streamed_artifacts import CUT_SHORT, stream_artifact_transfers
from mlflow_stack_server.vary_header import OneVaryHeader

SERVER_INFO_SUFFIX = "/mlflow/server-info"
DIRECT_TRANSFER_CAPABILITIES = ("multipart_uploads_enabled", "multipart_downloads_enabled")
ARTIFACTS_PATH_MARKER = "/mlflow-artifacts/artifacts/"
PRESIGNED_PATH_MARKERS = ("/mlflow-artifacts/presigned/", "/artifacts/presigned-", "/mlflow-artifacts/mpu/")
PROXY_ONLY = "This server proxies all artifact transfers; its object store is not reachable by clients."
# MLflow's client (MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true) falls back to one proxied PUT when the answer's
# message starts with this sentence (http_artifact_repo._try_multipart_upload); any other message fails the
# upload. The PUT is streamed on to S3 in parts by the server (streamed_artifacts.py).
MULTIPART_UNSUPPORTED = "Multipart upload is not supported for the current artifact repository"


def _not_implemented_body(message: str) -> bytes:
    return json.dumps({"error_code": "NOT_IMPLEMENTED", "message": message}).encode()


async def _answer_not_implemented(send: Send, path: str) -> None:
    multipart = "/mlflow-artifacts/mpu/" in path
    body = _not_implemented_body(f"{MULTIPART_UNSUPPORTED}: {PROXY_ONLY}" if multipart else PROXY_ONLY)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 501, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# The key and JSON encoding of MLflow 3.17's useLocalStorage("mlflow.workflowType", version 1).
WORKFLOW_STORAGE_KEY = "mlflow.workflowType_v1"


def _with_default_workflow(page: bytes, workflow: str) -> bytes:
    script = (
        f'<script>try{{if(!localStorage.getItem("{WORKFLOW_STORAGE_KEY}"))'
        f'localStorage.setItem("{WORKFLOW_STORAGE_KEY}",\'"{workflow}"\')}}catch(e){{}}</script>'
    )
    return page.replace(b"</head>", script.encode() + b"</head>", 1)


def _without_direct_transfers(body: bytes) -> bytes:
    try:
        info = json.loads(body)
    except ValueError:
        return body  # an error page: pass it on as it is
    if isinstance(info, dict):
        for capability in DIRECT_TRANSFER_CAPABILITIES:
            if capability in info:
                info[capability] = False
    return json.dumps(info).encode()


class ProxiedArtifactsOnly:
    def __init__(self, app: ASGIApp, threads: int, ui_workflow: str) -> None:
        self.app = app
        self.threads = threads  # MLFLOW_REQUEST_THREADS
        self._limited = False
        self.ui_workflow = ui_workflow  # MLFLOW_UI_WORKFLOW, checked by Settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self._limited:
            # The limiter belongs to the running event loop, so it can only be set from inside it.
            anyio.to_thread.current_default_thread_limiter().total_tokens = self.threads
            self._limited = True
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == "/" and self.ui_workflow:
            await self._rewrite_body(scope, receive, send, lambda page: _with_default_workflow(page, self.ui_workflow))
        elif any(marker in path for marker in PRESIGNED_PATH_MARKERS):
            await _answer_not_implemented(send, path)
        elif path.endswith(SERVER_INFO_SUFFIX):
            await self._rewrite_body(scope, receive, send, _without_direct_transfers)
        elif ARTIFACTS_PATH_MARKER in path:
            await self._artifact_transfer(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _artifact_transfer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A download whose bytes no longer match their SHA-256 is stopped before its last chunk (streamed_artifacts.py,
        which logs and counts it and marks the scope CUT_SHORT). From then on nothing more is sent: MLflow's
        BaseHTTPMiddleware layers would otherwise end the body as if it were whole, which uvicorn refuses with a
        traceback. Returning without the body's end makes uvicorn close the connection short of Content-Length,
        so the client's read fails."""

        async def send_until_cut_short(message: Message) -> None:
            if not scope.get(CUT_SHORT):
                await send(message)

        try:
            await self.app(scope, receive, send_until_cut_short)
        except ArtifactChangedError:
            return

    async def _rewrite_body(
        self, scope: Scope, receive: Receive, send: Send, rewrite: Callable[[bytes], bytes]
    ) -> None:
        start: Message = {}
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body = rewrite(b"".join(chunks))
                    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                    headers.append((b"content-length", str(len(body)).encode()))
                    await send({**start, "headers": headers})
                    await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)


# Auth modes whose hook needs the caller the auth app's own middlewares found: the fast path is put inside that
# app by its factory (create_app_with_oidc), never wrapped around it here.
FAST_WRITES_INSIDE_THE_AUTH_APP = frozenset({"oidc"})


def _wrap(mlflow_app: ASGIApp, settings: Settings, front: Authorize | None = None) -> RequestMetrics:
    """Outermost: per-endpoint request metrics see every answer, including this wrapper's own (request_metrics.py).
    Inside MLflow's app, so that its permission checks run first: artifact transfers streamed to and from S3
    (streamed_artifacts.py, added to `mlflow_app` by the caller). Innermost of our wrappers: the hot tracking
    writes answered without Flask (fast_http.py), inside the thread cap set above, each authorized first by the
    hook of the active MLFLOW_AUTH mode (fast_path_auth.py): a mode without one gets no fast path. With oidc the
    fast path is inside the plugin's app instead (create_app_with_oidc); here, `front` (fast_path_oidc.front_hook)
    answers only the writes whose allowance that inner path remembered, handing every other to the plugin's app."""
    outside = settings.auth not in FAST_WRITES_INSIDE_THE_AUTH_APP and fast_path_enabled(settings)
    # Runs created here are known to the auth hooks' map of run to experiment at once (no logins: nothing to know).
    learn_run = None if settings.auth == "none" else worker_runs().put
    if outside:
        inner = FastTrackingWrites(mlflow_app, authorization_hook(settings), learn_run=learn_run)
    else:  # MLflow's security middlewares are already inside the plugin's app, around its own fast path
        inner = FastTrackingWrites(mlflow_app, front, hand_off_unsecured=True, learn_run=learn_run)
    outer = ProxiedArtifactsOnly(inner, settings.request_threads, settings.ui_workflow)
    # MLflow's two CORS layers each add `Vary: Origin` to its Flask app's answers (vary_header.py).
    return RequestMetrics(OneVaryHeader(outer), fast_path_state(settings.fast_store, auth_mode=settings.auth))


def create_app() -> RequestMetrics:
    """`mlflow server --app-name proxied-artifacts`: MLflow's app, wrapped. A factory (uvicorn --factory), so that
    each worker reads its settings once, when it starts, and nothing is read when the module is imported."""
    from mlflow.server.fastapi_app import app as mlflow_app

    settings = Settings.from_environment()
    return _wrap(stream_artifact_transfers(mlflow_app, settings.upload_part_bytes), settings)


def create_app_with_basic_auth() -> RequestMetrics:
    """MLflow's basic-auth app (users, permissions, a login on every request), wrapped the same way; the fast
    tracking writes ask the auth app's own before-request check first (fast_path_auth.py)."""
    import mlflow.server.auth as mlflow_auth

    settings = Settings.from_environment()
    auth_app = mlflow_auth.create_app()
    # Every cached login is re-checked against its user's row: changes count at the next request (login_cache.py).
    install_revalidated_logins(mlflow_auth)
    return _wrap(stream_artifact_transfers(auth_app, settings.upload_part_bytes), settings)


def oidc_decision(scope: Scope, method: str, path: str, query: str | bytes) -> int:
    """200, or the status mlflow-oidc-auth's Flask hook answers (401, 403) for this request.

    The plugin's FastAPI middleware authorizes only the FastAPI routes it knows and lets any other through for
    any signed-in user; MLflow's Flask routes are authorized by its `before_request_hook`. The stack's streamed
    artifact routes are FastAPI routes replacing Flask ones, so they ask that hook, in a Flask request context
    built from the request, with the caller the plugin's AuthMiddleware put in the scope: one source of
    decisions, the same grants and the same 1-second cache as the rest of the server."""
    from mlflow.server import app as flask_app
    from mlflow_oidc_auth.entities.auth_context import AUTH_CONTEXT_KEY
    from mlflow_oidc_auth.hooks import before_request_hook

    context = scope.get(AUTH_CONTEXT_KEY)
    if context is None:
        return 401  # the middleware found no user (it answers 401 itself first; never served unauthenticated)
    with flask_app.test_request_context(
        path, method=method, query_string=query, environ_overrides={AUTH_CONTEXT_KEY: context}
    ):
        denied = before_request_hook()
        return 200 if denied is None else int(denied.status_code)


async def oidc_authorization(request: Request) -> None:
    """FastAPI dependency of every route the stack adds to the OIDC app: the plugin's decision, or its status."""
    status = await anyio.to_thread.run_sync(
        oidc_decision, request.scope, request.method, request.url.path, request.url.query
    )
    if status != 200:
        message = "Authentication required" if status == 401 else "Permission denied"
        raise HTTPException(status_code=status, detail=message)


def create_app_with_oidc() -> RequestMetrics:
    """mlflow-oidc-auth's app (sign-in through the provider, group grants, tokens; oidc_auth.py), wrapped like
    basic auth's, with the streamed artifact routes guarded by the plugin's own decision (oidc_authorization).
    The fast tracking writes sit innermost in the plugin's own middleware, after its AuthMiddleware found the
    caller, and ask the plugin's before-request hook (fast_path_oidc.py); those it allowed for an access token are
    then answered from memory in front of the plugin's app, inside the thread cap."""
    # Importing the module builds the plugin's app (and reads its settings, which serve exported).
    from mlflow_oidc_auth.app import app as oidc_app
    from mlflow_oidc_auth.sqlalchemy_store import SqlAlchemyStore as OidcStore

    from mlflow_stack_server import fast_path_oidc
    from mlflow_stack_server.oidc_wsgi import run_flask_on_request_threads

    settings = Settings.from_environment()
    # The plugin's WSGI bridge runs every Flask request of the worker on one thread (asgiref's thread-sensitive
    # sync_to_async); run them on the worker's MLFLOW_REQUEST_THREADS instead, as without logins (oidc_wsgi.py).
    run_flask_on_request_threads(oidc_app)
    # The token check and the profile read of every request, re-checked against the plugin's database on every
    # hit: changes count at the next request (oidc_login_cache.py).
    install_revalidated_accounts(OidcStore)
    front = None
    if fast_path_enabled(settings):  # MLFLOW_AUTH=oidc has a hook (fast_path_auth.HOOKS), on a verified MLflow
        # The worker's remembered allowances: recorded by the hook inside the plugin's app, answered in front of it.
        allowances = fast_path_oidc.token_allowances(settings)
        fast_path_oidc.install_inside(oidc_app, FastTrackingWrites, fast_path_oidc.oidc_hook(settings, allowances))
        front = fast_path_oidc.front_hook(allowances)
    guarded = stream_artifact_transfers(oidc_app, settings.upload_part_bytes, [Depends(oidc_authorization)])
    return _wrap(SchemeSeenByClients(guarded) if settings.public_https else guarded, settings, front)


class SchemeSeenByClients:
    """Clients reached this server over HTTPS (Settings.public_https): the gateway passes TCP through and adds no
    X-Forwarded-Proto, and an Ingress's is believed only from MLFLOW_OIDC_TRUSTED_PROXIES. The plugin builds
    absolute URLs (after sign-in, logout) from the request's scheme, so the request says https, as the client
    used; plain http would send the browser to a port that answers only TLS."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "scheme": "https" if scope["type"] == "http" else "wss"}
        await self.app(scope, receive, send)
