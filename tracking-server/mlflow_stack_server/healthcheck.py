"""Healthy = a real API call answers 200 (with the admin's login when auth is on).

Not /health: it is exempt from the Host-header check and from auth, so it stays green while every client
is refused. Reads the port and the admin's login the way the server does (Settings: NAME or NAME_FILE).
"""

from __future__ import annotations

import base64
import sys
import urllib.request

from mlflow_stack_server.settings import Settings


def main() -> None:
    """Console script `tracking-server-healthcheck`: exit 0 when healthy, else 1 with the reason."""
    try:
        settings = Settings.from_environment()
        request = urllib.request.Request(
            f"http://localhost:{settings.port}/api/2.0/mlflow/experiments/search?max_results=1"
        )
        if settings.auth == "basic":
            login = ":".join(settings.admin)
            request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
        with urllib.request.urlopen(request, timeout=4) as response:
            sys.exit(0 if response.status == 200 else 1)
    except Exception as error:  # any failure is simply "unhealthy"; say which for `docker inspect`
        sys.exit(f"unhealthy: {error}")
