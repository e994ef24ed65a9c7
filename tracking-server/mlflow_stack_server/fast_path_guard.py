"""The fast path (fast_store.py, fast_http.py) runs only on the MLflow releases it was verified against.

Why: both re-implement a slice of MLflow's handlers and SqlAlchemyStore (the shapes of requests, the order of
validation, the SQL, the answers). A release that changes any of those (a new check, a new column, another
message, a middleware) would be skipped silently on the fast path, and the image installs this package with
`--no-deps`, so nothing else stops a new lock file from running it against another MLflow. Any other version:
MLflow's own store and handlers answer every call, the entrypoint says so in one log line at start, /metrics
shows it (request_metrics.py, `mlflow_stack_fast_path_enabled`) and so does `make status` (stack_status.py).

The fast HTTP path also needs an authorization hook for the active auth mode (fast_path_auth.py): without one it
answers nothing (reason NO_AUTH_HOOK), while the fast store keeps serving MLflow's handlers, which run after the
auth app's checks.

This module imports nothing from MLflow at load: the store plugin imports it while MLflow is being imported.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_stack_server.fast_path_auth import has_hook

# The MLflow releases on which the fast path's tests passed: the generated differential tests over HTTP and the
# store-level ones (tests/fast_store), each against MLflow's own handlers and store on the same calls.
# 3.16.1, the previous pin (tracking-server/requirements-3.16.1.txt, MLFLOW_VERSION=3.16.1: the upgrade test's
# starting point), is NOT listed: it was only compared by reading MLflow's source, never run through those
# tests, so an image built with it serves through MLflow's own store and handlers.
VERIFIED_MLFLOW_VERSIONS = ("3.17.2",)

ON = "on"
SWITCHED_OFF = "switched_off"  # MLFLOW_FAST_STORE=off
UNVERIFIED_MLFLOW = "unverified_mlflow_version"
NO_AUTH_HOOK = "no_authorization_hook"  # MLFLOW_AUTH names a mode without a hook in fast_path_auth.py


@dataclass(frozen=True)
class FastPathState:
    enabled: bool
    reason: str  # ON, SWITCHED_OFF, UNVERIFIED_MLFLOW or NO_AUTH_HOOK
    mlflow_version: str
    auth_mode: str | None = None  # None: the store's state only (the store plugin)

    def describe(self) -> str:
        """One line for the log and `make status`."""
        if self.reason == ON:
            return f"fast path on (MLflow {self.mlflow_version}, a verified version)"
        if self.reason == SWITCHED_OFF:
            return "fast path off (MLFLOW_FAST_STORE=off): MLflow's own store and handlers answer every call"
        if self.reason == NO_AUTH_HOOK:
            return (
                f"fast path off: no authorization hook for MLFLOW_AUTH={self.auth_mode}; MLflow's app authorizes and "
                "answers every call"
            )
        return (
            f"fast path off: MLflow {self.mlflow_version} is not a version it was verified against "
            f"({', '.join(VERIFIED_MLFLOW_VERSIONS)}); MLflow's own store and handlers answer every call"
        )


def installed_mlflow_version() -> str:
    from mlflow.version import VERSION

    return str(VERSION)


def fast_path_state(
    switched_on: bool, mlflow_version: str | None = None, auth_mode: str | None = None
) -> FastPathState:
    """`switched_on`: MLFLOW_FAST_STORE; `mlflow_version`: the installed MLflow's unless given; `auth_mode`:
    MLFLOW_AUTH, for the HTTP path (None: the store alone, which serves MLflow's handlers after any auth)."""
    version = installed_mlflow_version() if mlflow_version is None else mlflow_version
    if not switched_on:
        return FastPathState(False, SWITCHED_OFF, version, auth_mode)
    if version not in VERIFIED_MLFLOW_VERSIONS:
        return FastPathState(False, UNVERIFIED_MLFLOW, version, auth_mode)
    if auth_mode is not None and not has_hook(auth_mode):
        return FastPathState(False, NO_AUTH_HOOK, version, auth_mode)
    return FastPathState(True, ON, version, auth_mode)
