"""Healthy = a real API call answers 200 (with the admin's login when auth is on).

Not /health: it is exempt from the Host-header check and from auth, so it stays green while every client
is refused.
"""

import base64
import os
import sys
import urllib.request

request = urllib.request.Request("http://localhost:5000/api/2.0/mlflow/experiments/search?max_results=1")
if os.environ.get("MLFLOW_AUTH", "none") == "basic":
    login = f"{os.environ['MLFLOW_AUTH_ADMIN_USERNAME']}:{os.environ['MLFLOW_AUTH_ADMIN_PASSWORD']}"
    request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
try:
    with urllib.request.urlopen(request, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as error:  # any failure is simply "unhealthy"; say which for `docker inspect`
    sys.exit(f"unhealthy: {error}")
