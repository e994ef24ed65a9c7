"""Team mode for the side-by-side benchmark (bench.server_variants): the tracking server with logins on and
MLFLOW_TLS=on, behind the stack's own gateway configuration ending TLS, as a team-mode stack runs it.

In team mode the tracking server speaks plain HTTP; HAProxy (gateway/haproxy.cfg, MLFLOW_TLS=on) ends TLS in
front of it. So each team-mode variant here is that file's HAProxy in a container on the stack's `frontend`
network, with its backend pointed at the variant's server container and a certificate for localhost from a CA
made for the run by the stack's own functions (stack_tls); the load driver trusts that CA. The gateway's CPU
is measured on its own (the cost of TLS), the server's as for every other variant.

- basic: MLflow's basic-auth app; the trainers log in as a user that is not an admin, holding EDIT on the
  experiment they log into (granted by the admin, who creates it).
- oidc: mlflow-oidc-auth with the test OpenID provider (tests/oidc_provider, on `frontend` under its issuer's
  name; the server checks its discovery document and the client secret at start); the trainers send a
  service account's access token (mlflow-stack-token) as their password, with a user grant of EDIT on the
  experiment, which an admin service account creates.

Every file lives in one temporary folder, removed by close(); the keys in it are throwaway.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import requests
from cryptography.hazmat.primitives import serialization

from bench.common import REPO, compose
from bench.server_load import CALL_TIMEOUT, Client, client_session
from mlflow_stack_server import stack_tls

PROJECT = os.environ.get("COMPOSE_PROJECT_NAME", "mlflow-stack")
FRONTEND_NETWORK = f"{PROJECT}_frontend"
GATEWAY_IMAGE = os.environ.get("GATEWAY_IMAGE", "haproxy:3.2")
# The stack's gateway runs as this uid (docker-compose.yml); its files here are world-readable test keys.
GATEWAY_USER = "10002:10002"
# tests/stack/oidc_stack.py builds the same image under this name.
PROVIDER_IMAGE = os.environ.get("OIDC_PROVIDER_IMAGE", f"{PROJECT}/test-oidc-provider:8.8.1")
ISSUER_NAME = "oidc.test"
ISSUER = f"https://{ISSUER_NAME}:8443"
CLIENT_ID = "mlflow"
IN_CONTAINER = "/run/bench-team"
ADMIN_USERNAME = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
TRAINER = "bench-trainer"
OIDC_ADMIN = "bench-admin"
# An admin service account's token, made in the server container through the plugin's store as
# mlflow-stack-token does (the CLI makes no admins: stack_token.admin_token makes one for stack-gc the same way).
OIDC_ADMIN_TOKEN = f"""
from datetime import UTC, datetime, timedelta
from mlflow_stack_server.settings import Settings
from mlflow_stack_server.stack_token import WRITTEN_BY, open_store
settings = Settings.from_environment(server=False)
settings.export_secrets()
store = open_store(settings)
if not store.has_user("{OIDC_ADMIN}"):
    store.create_user("{OIDC_ADMIN}", "{OIDC_ADMIN}", is_admin=True, is_service_account=True)
expires = datetime.now(UTC).replace(tzinfo=None) + timedelta(days=1)
print(store.create_user_token("{OIDC_ADMIN}", "bench-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f"), expires,
                              WRITTEN_BY)[1])
"""
PROVIDER_START_TIMEOUT = 120


def _docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], cwd=REPO, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench: docker {' '.join(args[:3])} ...: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


class TeamMode:
    """The gateway (and the provider) of the team-mode variant running as `server_name`, published on `port`."""

    def __init__(self, server_name: str, port: int) -> None:
        self.server_name, self.port = server_name, port
        self.gateway_name, self.provider_name = f"{server_name}-gateway", f"{server_name}-oidc"
        self.folder = Path(tempfile.mkdtemp(prefix="bench-team-"))
        self.folder.chmod(0o755)  # read by the gateway's, the provider's and the server's uids
        ca_key, ca = stack_tls.create_ca("mlflow-stack bench CA")
        pem = ca.public_bytes(serialization.Encoding.PEM)
        self.ca_file = str(self.folder / "ca.crt")
        files = {"ca.crt": pem, "client_secret": secrets.token_hex(24).encode() + b"\n"}
        for name, names in (("server", ("localhost", "127.0.0.1")), ("provider", (ISSUER_NAME,))):
            key, certificate = stack_tls.issue_server_certificate(ca_key, ca, names)
            files[f"{name}.crt"] = certificate.public_bytes(serialization.Encoding.PEM)
            files[f"{name}.key"] = stack_tls.private_key_pem(key)
        # HAProxy reads the certificate and its key from one file (stack_tls.install_server_pem).
        files["server.pem"] = files["server.crt"] + files["server.key"]
        # The stack's gateway configuration itself, its backend being the variant's server container.
        gateway = (REPO / "gateway" / "haproxy.cfg").read_text()
        if "tracking-server:5000" not in gateway:
            raise SystemExit(
                "bench: gateway/haproxy.cfg no longer names tracking-server:5000; update bench/team_variants.py"
            )
        files["haproxy.cfg"] = gateway.replace("tracking-server:5000", f"{server_name}:5000").encode()
        files["users.json"] = (REPO / "tests" / "oidc_provider" / "users.json").read_bytes()
        for name, content in files.items():
            (self.folder / name).write_bytes(content)
            (self.folder / name).chmod(0o644)
        self.api = f"https://localhost:{port}/api/2.0/mlflow"
        self.redirect_uri = f"https://localhost:{port}/callback"

    def server_environment(self, auth: str) -> dict[str, str]:
        environment = {"MLFLOW_AUTH": auth, "MLFLOW_TLS": "on", "MLFLOW_PUBLIC_NAMES": "localhost"}
        if auth == "oidc":
            environment |= {
                "MLFLOW_OIDC_ISSUER": ISSUER,
                "MLFLOW_OIDC_CLIENT_ID": CLIENT_ID,
                "MLFLOW_OIDC_CLIENT_SECRET_FILE": f"{IN_CONTAINER}/client_secret",
                "MLFLOW_OIDC_CA_FILE": f"{IN_CONTAINER}/ca.crt",
                "MLFLOW_OIDC_REDIRECT_URI": self.redirect_uri,
            }
        return environment

    @property
    def volume(self) -> str:
        return f"{self.folder}:{IN_CONTAINER}:ro"

    def prepare(self, auth: str, environment: dict[str, str]) -> None:
        """The provider (oidc), then the stack's one-shot `prepare` with the variant's settings: the auth
        database and its admin (basic), the plugin's database (oidc)."""
        if auth == "oidc":
            self.start_provider()
        command = ["run", "--rm", "--no-deps", "--volume", self.volume]
        for key, value in environment.items():
            command += ["--env", f"{key}={value}"]
        compose(*command, "tracking-server", "prepare")

    def start_provider(self) -> None:
        if subprocess.run(["docker", "image", "inspect", PROVIDER_IMAGE], capture_output=True).returncode != 0:
            _docker("build", "-q", "-t", PROVIDER_IMAGE, str(REPO / "tests" / "oidc_provider"))
        _docker("rm", "-f", self.provider_name)
        _docker(
            "run", "--detach", "--name", self.provider_name,
            "--network", FRONTEND_NETWORK, "--network-alias", ISSUER_NAME,
            "--volume", f"{self.folder}:/run/oidc-test:ro",
            "--env", f"OIDC_ISSUER={ISSUER}", "--env", "OIDC_PORT=8443",
            "--env", "OIDC_TLS_CERT_FILE=/run/oidc-test/provider.crt",
            "--env", "OIDC_TLS_KEY_FILE=/run/oidc-test/provider.key",
            "--env", f"OIDC_CLIENT_ID={CLIENT_ID}", "--env", "OIDC_CLIENT_SECRET_FILE=/run/oidc-test/client_secret",
            "--env", f"OIDC_REDIRECT_URIS={self.redirect_uri}", "--env", "OIDC_USERS_FILE=/run/oidc-test/users.json",
            PROVIDER_IMAGE,
        )  # fmt: skip
        # Its own healthcheck (the image's HEALTHCHECK) says when it answers.
        for _ in range(PROVIDER_START_TIMEOUT):
            status = _docker("inspect", "--format", "{{.State.Health.Status}}", self.provider_name)
            if status == "healthy":
                return
            time.sleep(1)
        raise SystemExit(f"bench: the test OpenID provider is not healthy (docker logs {self.provider_name})")

    def start_gateway(self) -> None:
        _docker("rm", "-f", self.gateway_name)
        _docker(
            "run", "--detach", "--name", self.gateway_name, "--user", GATEWAY_USER, "--read-only", "--cap-drop", "ALL",
            "--network", FRONTEND_NETWORK, "--publish", f"127.0.0.1:{self.port}:5000", "--env", "MLFLOW_TLS=on",
            "--volume", f"{self.folder / 'haproxy.cfg'}:/usr/local/etc/haproxy/haproxy.cfg:ro",
            "--volume", f"{self.folder / 'server.pem'}:/run/tls/server.pem:ro",
            GATEWAY_IMAGE, "haproxy", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg",
        )  # fmt: skip

    def stop(self) -> None:
        for name in (self.gateway_name, self.provider_name):
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def logins(self, auth: str) -> tuple[Client, Callable[[str], str]]:
        """The trainers' Client, and how each load makes their experiment: an admin creates it and grants the
        trainers' login EDIT on it."""
        # A variant that let anyone write would measure nothing about logins.
        anonymous = client_session(Client(self.ca_file)).post(f"{self.api}/runs/set-tag", json={}, timeout=CALL_TIMEOUT)
        if anonymous.status_code != 401:
            raise SystemExit(f"bench: {auth}: an anonymous write got {anonymous.status_code}, not 401")
        return self._basic_logins() if auth == "basic" else self._oidc_logins()

    def _create_experiment(self, admin: Client, name: str) -> str:
        created = client_session(admin).post(
            f"{self.api}/experiments/create", json={"name": name}, timeout=CALL_TIMEOUT
        )
        if created.status_code != 200:
            raise SystemExit(f"bench: the admin could not create {name}: {created.status_code} {created.text[:200]}")
        return str(created.json()["experiment_id"])

    def _basic_logins(self) -> tuple[Client, Callable[[str], str]]:
        # The admin's password is the stack's generated secret (what `make secrets` shows).
        password = _docker("exec", self.server_name, "cat", "/run/secrets/mlflow_auth_admin_password")
        admin = Client(self.ca_file, (ADMIN_USERNAME, password))
        login = {"username": TRAINER, "password": secrets.token_hex(16)}
        session = client_session(admin)
        created = session.post(f"{self.api}/users/create", json=login, timeout=CALL_TIMEOUT)
        if created.status_code != 200:  # made by an earlier run: a new password
            session.patch(f"{self.api}/users/update-password", json=login, timeout=CALL_TIMEOUT).raise_for_status()
        trainer = Client(self.ca_file, (TRAINER, login["password"]))
        grant_url = f"https://localhost:{self.port}/api/3.0/mlflow/users/permissions/grant"

        def new_experiment(name: str) -> str:
            experiment_id = self._create_experiment(admin, name)
            grant = {"username": TRAINER, "resource_type": "experiment", "resource_id": experiment_id}
            session.post(grant_url, json={**grant, "permission": "EDIT"}, timeout=CALL_TIMEOUT).raise_for_status()
            return experiment_id

        return trainer, new_experiment

    def _oidc_logins(self) -> tuple[Client, Callable[[str], str]]:
        admin = Client(self.ca_file, (OIDC_ADMIN, _docker("exec", self.server_name, "python", "-c", OIDC_ADMIN_TOKEN)))
        token_name = f"bench-{datetime.now(UTC):%Y%m%dT%H%M%S%f}"
        token = _docker(
            "exec", self.server_name, "mlflow-stack-token", "create", TRAINER, "--service-account", "--name", token_name,
            "--expires-days", "1",  # one per start: the bench database keeps none for long
        )  # fmt: skip
        trainer = Client(self.ca_file, (TRAINER, token))

        def new_experiment(name: str) -> str:
            experiment_id = self._create_experiment(admin, name)
            grant = ["--user", TRAINER, "--experiment", experiment_id, "--permission", "EDIT"]
            _docker("exec", self.server_name, "mlflow-stack-token", "grant", *grant)
            return experiment_id

        return trainer, new_experiment

    def healthy(self) -> bool:
        try:
            return (
                requests.get(f"https://localhost:{self.port}/health", timeout=2, verify=self.ca_file).status_code == 200
            )
        except requests.RequestException:
            return False

    def describe(self) -> dict[str, object]:
        return {"gateway_image": GATEWAY_IMAGE, "provider_image": PROVIDER_IMAGE, "issuer": ISSUER}
