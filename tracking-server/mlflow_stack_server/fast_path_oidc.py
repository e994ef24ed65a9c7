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

The plugin's validators look a run's experiment up with one query of the run's row (its `get_run_experiment_id`),
not the whole run as MLflow's basic-auth validators do, so no run-to-experiment map is kept here.

This module imports nothing from MLflow or the plugin at load (fast_path_auth.py lists its hook factory).
"""

from __future__ import annotations

from typing import Any

from mlflow_stack_server.asgi import Scope
from mlflow_stack_server.fast_path_auth import Authorize, HandToMlflowError, Refusal, decide_in_flask


def oidc_hook() -> Authorize:
    """The plugin's before-request decision for one fast-path request. Built once per worker, after the plugin's
    app (importing it reads the plugin's configuration and registers the hook on MLflow's Flask app)."""
    from mlflow_oidc_auth.entities.auth_context import AUTH_CONTEXT_KEY
    from mlflow_oidc_auth.hooks import before_request_hook

    def authorize(scope: Scope, body: bytes, run_id: str) -> Refusal | None:
        context = scope.get(AUTH_CONTEXT_KEY)
        if context is None:
            raise HandToMlflowError("no caller in the scope: the plugin answers")
        return decide_in_flask(before_request_hook, scope, body, {AUTH_CONTEXT_KEY: context})

    return authorize


def install_inside(plugin_app: Any, app_factory: Any, authorize: Authorize) -> None:
    """Put `app_factory(app, authorize)` (FastTrackingWrites) innermost in the plugin's FastAPI middleware, so that
    all the plugin's middlewares run first. Starlette builds the stack from `user_middleware` (first = outermost)
    at the first request; after that nothing can be added, and the start stops here instead of serving writes
    that nobody authenticated."""
    from starlette.middleware import Middleware

    if getattr(plugin_app, "middleware_stack", None) is not None:
        raise RuntimeError("the plugin's app has already started; the fast path cannot be put inside it")
    plugin_app.user_middleware.append(Middleware(app_factory, authorize=authorize))
