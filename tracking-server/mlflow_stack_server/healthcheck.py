"""Healthy = a real API call answers 200 (with the admin's login when auth is on).

Not /health: it is exempt from the Host-header check and from auth, so it stays green while every client
is refused. Reads the port and the admin's login the way the server does (Settings: NAME or NAME_FILE).

With MLFLOW_AUTH=oidc always as with --without-admin (there is no admin password).

--without-admin (Kubernetes' readiness probe): under auth, log in as a user that cannot exist instead, and
count MLflow's 401 as healthy. The request still passes the Host-header check and makes the auth app look
the user up in its database, but a changed admin password or a rotated Secret cannot make every replica
unready at once.
"""

from __future__ import annotations

import base64
import secrets
import sys
import urllib.error
import urllib.request

from mlflow_stack_server.settings import Settings


def main() -> None:
    """Console script `tracking-server-healthcheck [--without-admin]`: exit 0 when healthy, else 1 with the reason."""
    try:
        settings = Settings.from_environment()
        request = urllib.request.Request(
            f"http://localhost:{settings.port}/api/2.0/mlflow/experiments/search?max_results=1"
        )
        healthy = 200
        if settings.auth != "none":
            # OIDC has no admin password: always the login that cannot exist (the plugin looks its token up).
            if "--without-admin" in sys.argv[1:] or settings.auth == "oidc":
                login, healthy = f"readiness-probe-{secrets.token_hex(8)}:{secrets.token_hex(16)}", 401
            else:
                login = ":".join(settings.admin)
            request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
        try:
            with urllib.request.urlopen(request, timeout=4) as response:
                status = response.status
        except urllib.error.HTTPError as error:
            status = error.code
        sys.exit(0 if status == healthy else f"unhealthy: HTTP {status}")
    except Exception as error:  # any failure is simply "unhealthy"; say which for `docker inspect`
        sys.exit(f"unhealthy: {error}")
