"""MLFLOW_AUTH=oidc: MLflow's Flask requests run on the worker's request threads, as without logins.

mlflow-oidc-auth mounts MLflow's Flask app at "/" through its AuthAwareWSGIMiddleware, which puts the caller the
plugin's AuthMiddleware found (the AuthContext in the ASGI scope) into the WSGI environ (AuthInjectingWSGIApp)
and adapts WSGI with asgiref's WsgiToAsgi. asgiref runs the WSGI call with `@sync_to_async`, whose default is
thread_sensitive=True: every such call of the process runs on one shared thread, one after the other. Every
Flask request of a worker (creating a run, reading one, the plugin's own Flask hook) then waits for the one
before it, however many request threads the worker has; at 64 trainers `runs/create` waited seconds.

MLflow's own app without logins runs Flask on anyio's worker threads, which the stack caps at
MLFLOW_REQUEST_THREADS per worker (proxied_artifacts.ProxiedArtifactsOnly), and the entrypoint sizes the
database pools for that many. The mount installed here does the same under oidc: asgiref's per-request adapter
(WsgiToAsgiInstance: its environ, duplicate-header limit, body spooling and streamed answer, so Flask and the
plugin's hooks see exactly what they saw before) and the plugin's AuthInjectingWSGIApp, but the WSGI call runs
through `anyio.to_thread.run_sync` on that same capped limiter, and each answer message goes back to the event
loop with `anyio.from_thread.run`. MLflow's own adapter (fastapi_app._EfficientWSGIMiddleware) is not used: it
builds the environ with Starlette's build_environ, which differs from asgiref's (no duplicate-header limit, the
port as a number). Flask keeps its application and request contexts in context variables, which anyio copies
into each worker thread, so concurrent requests do not see each other's.

The mount stays an AuthAwareWSGIMiddleware (a subclass): the plugin's permission middleware recognises the
Flask mount by that type (fastapi_permission_middleware._dispatches_to_flask_mount) and leaves its requests to
the Flask hook.
"""

from __future__ import annotations

from typing import Any

import anyio.from_thread
import anyio.to_thread
from asgiref.wsgi import WsgiToAsgiInstance
from mlflow_oidc_auth.middleware.auth_aware_wsgi_middleware import AuthAwareWSGIMiddleware, AuthInjectingWSGIApp
from starlette.routing import Mount

from mlflow_stack_server.asgi import Message, Receive, Scope, Send

# asgiref's WSGI call itself, without its @sync_to_async (which would put it on the one shared thread).
_RUN_WSGI_APP = WsgiToAsgiInstance.__dict__["run_wsgi_app"].func


class _WsgiOnRequestThreads(WsgiToAsgiInstance):
    """asgiref's adapter for one request, with the WSGI call on anyio's capped worker threads."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._send = send
        await super().__call__(scope, receive, send)

    async def run_wsgi_app(self, body: Any) -> None:
        # asgiref sends from its thread through an AsyncToSync; from an anyio worker thread, anyio's own way back.
        self.sync_send = self._send_from_thread  # type: ignore[assignment]
        await anyio.to_thread.run_sync(_RUN_WSGI_APP, self, body)

    def _send_from_thread(self, message: Message) -> None:
        anyio.from_thread.run(self._forward, message)

    async def _forward(self, message: Message) -> None:
        await self._send(message)


class AuthAwareWSGIOnRequestThreads(AuthAwareWSGIMiddleware):
    """The plugin's Flask mount, with its Flask requests run concurrently on the worker's request threads."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)  # the plugin's own handling of anything else
            return
        await _WsgiOnRequestThreads(AuthInjectingWSGIApp(self.flask_app, scope))(scope, receive, send)


def run_flask_on_request_threads(plugin_app: Any) -> None:
    """Replace the plugin's Flask mount (the one route whose app is exactly AuthAwareWSGIMiddleware) by the same
    Flask app under AuthAwareWSGIOnRequestThreads, in the same place of the route list. A plugin that mounts Flask
    otherwise stops the start here, instead of serving every Flask request on one thread again unnoticed."""
    routes = plugin_app.router.routes
    found = [
        i for i, route in enumerate(routes) if isinstance(route, Mount) and type(route.app) is AuthAwareWSGIMiddleware
    ]
    if len(found) != 1:
        raise RuntimeError(
            f"expected one Flask mount of mlflow-oidc-auth (AuthAwareWSGIMiddleware), found {len(found)}"
        )
    mount = routes[found[0]]
    routes[found[0]] = Mount(mount.path or "/", app=AuthAwareWSGIOnRequestThreads(mount.app.flask_app), name=mount.name)
