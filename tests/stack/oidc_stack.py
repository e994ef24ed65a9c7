"""One team-mode stack with MLFLOW_AUTH=oidc and a real OpenID provider, shared by the single sign-on tests.

The `oidc_stack` session fixture (tests/stack/conftest.py) builds the test provider's image from
tests/oidc_provider (npm's oidc-provider; a no-op when cached), makes a test CA and the provider's certificate,
and brings up a stack of its own (project `<name>-oidc`, from a fresh copy of this repository, MLFLOW_TLS=on,
MLFLOW_AUTH=oidc, 2 tracking-server replicas of 2 workers) with the provider as one more service on the stack's
`frontend` network, under the DNS name in its issuer URL (`oidc.test`). Both the gateway and the provider are
published on the gateway address of a separate Docker network, `<name>-oidc-remote`, where a training host
stands (as in test_team_mode.py). The host reaches the same URLs: Chromium through --host-resolver-rules, this
process through names_resolved_to (tests/support/oidc.py); TLS is verified against the real names either way.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization

from mlflow_stack_server import stack_tls
from tests.stack.conftest import MLFLOW_PORT, NPZ_IN_CONTAINER, REPO, measured, mnist_npz
from tests.stack.fresh_stack import FreshStack, copy_repository
from tests.support.oidc import names_resolved_to, sign_in

PROJECT = f"{os.environ.get('COMPOSE_PROJECT_NAME', 'mlflow-stack')}-oidc"
NETWORK = f"{PROJECT}-remote"
# Next to the team-mode stack (+12, +13): 5014-5016 in CI.
OIDC_STACK_PORT = int(os.environ.get("OIDC_STACK_MLFLOW_PORT", str(MLFLOW_PORT + 14)))
OIDC_CONSOLE_PORT = int(os.environ.get("OIDC_STACK_CONSOLE_PORT", str(MLFLOW_PORT + 15)))
# The provider listens on the port it is published on, so its issuer URL is the same inside and outside Docker.
PROVIDER_PORT = int(os.environ.get("OIDC_PROVIDER_PORT", str(MLFLOW_PORT + 16)))
PROVIDER_IMAGE = os.environ.get(
    "OIDC_PROVIDER_IMAGE", f"{os.environ.get('COMPOSE_PROJECT_NAME', 'mlflow-stack')}/test-oidc-provider:8.8.1"
)
PUBLIC_NAME = "mlflow.oidc.test"
ISSUER_NAME = "oidc.test"
ISSUER = f"https://{ISSUER_NAME}:{PROVIDER_PORT}"
CLIENT_ID = "mlflow"
REPLICAS = 2
WORKERS = 2
# Replicas are asked directly (plain HTTP inside Docker, as the gateway does) under a Host the server allows.
REPLICA_HOST_HEADER = {"Host": "tracking-server:5000"}
# Each worker's answers, from the per-process files of the server's Prometheus counters (request_metrics.py;
# MLFLOW_METRICS_DIR's default): {pid: requests to ENDPOINT answered STATUS}. Says which workers answered.
WORKER_ANSWERS = """
import glob, json, sys
from prometheus_client.mmap_dict import MmapedDict
wanted = {"endpoint": sys.argv[1], "method": sys.argv[3], "status": sys.argv[2]}
counts = {}
for path in glob.glob("/tmp/mlflow-metrics/counter_*.db"):
    values = MmapedDict.read_all_values_from_file(path)
    counts[path.rsplit("_", 1)[1][:-3]] = sum(v for k, v, *_ in values if json.loads(k)[2] == wanted)
print(json.dumps(counts))
"""
# users.json of the test provider (name -> password, email, name, groups), plus dave: an admin through his
# provider group, whom the demotion test takes out of it (the provider reads the file the fixture mounts).
USERS = {
    **json.loads((REPO / "tests" / "oidc_provider" / "users.json").read_text()),
    "dave": {"password": "dave-test-password", "email": "dave@example.test", "name": "Dave Demoted",
             "groups": ["mlflow", "mlflow-admins"]},
}  # fmt: skip


def email(user: str) -> str:
    return str(USERS[user]["email"])


class OidcFreshStack(FreshStack):
    """The fresh copy, on the OIDC stack's ports."""

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        ports = {"MLFLOW_PORT": str(OIDC_STACK_PORT), "MINIO_CONSOLE_PORT": str(OIDC_CONSOLE_PORT)}
        return super().environment({**ports, **(extra or {})})


@dataclass
class OidcStack:
    stack: OidcFreshStack
    address: str  # the remote network's gateway address: where the stack and the provider are published
    stack_ca: str  # certs/ca.crt the stack wrote (the gateway's certificate)
    test_ca: str  # the provider's CA
    bundle: str  # both, for clients on this host that talk to the server and the provider
    sessions: dict[str, requests.Session] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://{PUBLIC_NAME}:{OIDC_STACK_PORT}"

    def api(self, path: str) -> str:
        return f"{self.url}/api/2.0/mlflow/{path}"

    def sign_in(self, user: str) -> requests.Session:
        """A fresh session of `user`, signed in through the provider's login page."""
        return sign_in(self.url, user, str(USERS[user]["password"]), self.bundle)

    def admin(self) -> requests.Session:
        """alice (group mlflow-admins): one session for every test that needs an admin."""
        if "alice" not in self.sessions:
            self.sessions["alice"] = self.sign_in("alice")
        return self.sessions["alice"]

    def token_cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """mlflow-stack-token inside a running server (what scripts/token.sh does)."""
        return self.stack.compose("exec", "-T", "tracking-server", "mlflow-stack-token", *args, check=check)

    def service_token(self, account: str, name: str) -> str:
        created = self.token_cli("create", account, "--service-account", "--name", name)
        token = created.stdout.strip()
        assert token.startswith("mlf_") and "\n" not in token, created.stdout + created.stderr
        return token

    def replica_addresses(self) -> list[str]:
        names = self.stack.compose("ps", "--format", "{{.Name}}", "tracking-server").stdout.split()
        network = f"{PROJECT}_frontend"
        addresses = []
        for name in sorted(names):
            inspected = self.stack.run(
                "docker", "inspect", "-f", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}', name
            )
            addresses.append(inspected.stdout.strip())
        assert len(addresses) == REPLICAS and all(addresses), addresses
        return addresses

    def answers_per_worker(self, endpoint: str, status: int, method: str = "GET") -> dict[str, float]:
        """{"<replica container>/<worker pid>": how many `method` `endpoint` it answered with `status`}."""
        names = self.stack.compose("ps", "--format", "{{.Name}}", "tracking-server").stdout.split()
        counts: dict[str, float] = {}
        for name in names:
            shown = self.stack.run(
                "docker", "exec", name, "python", "-c", WORKER_ANSWERS, endpoint, str(status), method
            )
            assert shown.returncode == 0, shown.stderr[-2000:]
            counts.update({f"{name}/{pid}": count for pid, count in json.loads(shown.stdout).items()})
        return counts

    def create_experiment(self, session: requests.Session, name: str) -> str:
        created = session.post(self.api("experiments/create"), json={"name": name}, timeout=30)
        assert created.status_code == 200, created.text
        return str(created.json()["experiment_id"])

    def set_provider_groups(self, user: str, groups: list[str]) -> None:
        """Change `user`'s groups at the provider, as a directory admin would: rewrite its users file, restart it
        (it reads the file at start) and wait until it answers again."""
        users_file = self.stack.directory / "oidc-test" / "users.json"
        users = json.loads(users_file.read_text())
        users[user]["groups"] = groups
        users_file.write_text(json.dumps(users))
        self.stack.compose("restart", "oidc-provider")
        self.stack.compose("up", "-d", "--wait", "--no-deps", "oidc-provider")

    def remote(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The trainer-only compose file on the remote network, as a training host runs it."""
        env = {
            "MLFLOW_TRACKING_URI": self.url,
            "COMPOSE_PROJECT_NAME": f"{PROJECT}-trainer",
            "TRAINER_UI_URL": self.url,
            **(extra_env or {}),
        }
        return self.stack.compose(
            "-f", "docker-compose.trainer.yml", "-f", "remote-network.yml", *args, check=False, extra=env, timeout=900
        )  # fmt: skip

    def train(self, user: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
        return self.remote(
            "run", "--rm", "-T", "-v", f"{mnist_npz()}:{NPZ_IN_CONTAINER}:ro", "trainer",
            "--data", NPZ_IN_CONTAINER, "--min-accuracy", "0.5", *args,
            extra_env={"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": token},
        )  # fmt: skip


def _docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.stderr.strip()[-2000:]}")
    return result.stdout.strip()


def build_provider_image() -> None:
    """Once per session (seconds when Docker's cache has it; ~50 s cold: Debian's nodejs and `npm ci` from the
    lock). Built from the repository, never pulled: the tests test what is in tests/oidc_provider."""
    start = time.monotonic()
    _docker("build", "-t", PROVIDER_IMAGE, str(REPO / "tests" / "oidc_provider"), timeout=1200)
    measured(f"test OpenID provider image {PROVIDER_IMAGE} built in {time.monotonic() - start:.0f} s")


def write_test_ca(directory: Path) -> None:
    """ca.crt, and tls.crt/tls.key for the provider's name, signed by it: a CA of the tests, not the stack's, made
    by the stack's own certificate functions. Its own name, because Chromium's NSS database holds both CAs."""
    ca_key, ca = stack_tls.create_ca("mlflow-stack tests OpenID provider CA")
    key, certificate = stack_tls.issue_server_certificate(ca_key, ca, (ISSUER_NAME,))
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / "tls.key").write_bytes(stack_tls.private_key_pem(key))


def remove_everything(stack: OidcFreshStack) -> None:
    """Both projects (the training host's one-off containers too), then the network they shared."""
    stack.compose("--profile", "train", "down", "-v", "--remove-orphans", "--timeout", "5", check=False)
    for container in _docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}-trainer").split():
        _docker("rm", "-f", container, check=False)
    trainer_project = {"COMPOSE_PROJECT_NAME": f"{PROJECT}-trainer", "MLFLOW_TRACKING_URI": "https://unused"}
    stack.compose("-f", "docker-compose.trainer.yml", "down", "-v", check=False, extra=trainer_project)
    _docker("network", "rm", NETWORK, check=False)


def start_oidc_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcStack]:
    build_provider_image()
    directory = copy_repository(tmp_path_factory.mktemp("oidc-clone"))
    stack = OidcFreshStack(directory, PROJECT)
    remove_everything(stack)  # leftovers of an interrupted earlier run
    _docker("network", "create", NETWORK)
    address = json.loads(_docker("network", "inspect", NETWORK))[0]["IPAM"]["Config"][0]["Gateway"]
    provider_files = directory / "oidc-test"
    provider_files.mkdir()
    write_test_ca(provider_files)
    (provider_files / "client_secret").write_text(os.urandom(24).hex() + "\n")
    (provider_files / "users.json").write_text(json.dumps(USERS))
    for name in ("ca.crt", "tls.crt", "tls.key", "client_secret", "users.json"):
        # Read by the provider (uid 10002) and the server (uid 10001) through bind mounts; test-only keys.
        (provider_files / name).chmod(0o644)
    bundle = directory / "oidc-test" / "bundle.crt"
    callback_base = f"https://{PUBLIC_NAME}:{OIDC_STACK_PORT}"
    (directory / ".env").write_text(
        "MLFLOW_TLS=on\nMLFLOW_AUTH=oidc\n"
        f"MLFLOW_PUBLIC_NAMES={PUBLIC_NAME},{address}\nBIND_ADDRESS={address}\n"
        f"TRAINER_UI_URL={callback_base}\n"
        f"MLFLOW_OIDC_ISSUER={ISSUER}\nMLFLOW_OIDC_CLIENT_ID={CLIENT_ID}\n"
        f"MLFLOW_OIDC_CLIENT_SECRET_FILE={provider_files / 'client_secret'}\n"
        f"MLFLOW_OIDC_CA_FILE={provider_files / 'ca.crt'}\n"
        f"MLFLOW_OIDC_REDIRECT_URI={callback_base}/callback\n"
        f"MLFLOW_WORKERS={WORKERS}\n"
        "COMPOSE_FILE=docker-compose.yml:docker-compose.override.yml:oidc-provider.yml\n"
    )
    # The provider as one more service of the stack: on `frontend` under the issuer's name, published on the
    # same address as the gateway; the servers start once it answers (they check the issuer at start).
    (directory / "oidc-provider.yml").write_text(
        json.dumps(
            {
                "services": {
                    "oidc-provider": {
                        "image": PROVIDER_IMAGE,
                        "environment": {
                            "OIDC_ISSUER": ISSUER,
                            "OIDC_PORT": str(PROVIDER_PORT),
                            "OIDC_TLS_CERT_FILE": "/run/oidc-test/tls.crt",
                            "OIDC_TLS_KEY_FILE": "/run/oidc-test/tls.key",
                            "OIDC_CLIENT_ID": CLIENT_ID,
                            "OIDC_CLIENT_SECRET_FILE": "/run/oidc-test/client_secret",
                            "OIDC_REDIRECT_URIS": f"{callback_base}/callback",
                            "OIDC_POST_LOGOUT_REDIRECT_URIS": f"{callback_base}/oidc/ui/auth",
                            "OIDC_USERS_FILE": "/run/oidc-test/users.json",
                        },
                        "volumes": [f"{provider_files}:/run/oidc-test:ro"],
                        "ports": [f"{address}:{PROVIDER_PORT}:{PROVIDER_PORT}"],
                        "networks": {"frontend": {"aliases": [ISSUER_NAME]}},
                    },
                    "tracking-server": {"depends_on": {"oidc-provider": {"condition": "service_healthy"}}},
                }
            },
            indent=2,
        )
    )
    # What a test adds to the training host's file: its network, and the server's name in /etc/hosts.
    (directory / "remote-network.yml").write_text(
        f"services:\n  trainer:\n    extra_hosts: ['{PUBLIC_NAME}:{address}']\n"
        f"networks:\n  default:\n    name: {NETWORK}\n    external: true\n"
    )
    try:
        start = time.monotonic()
        stack.compose(
            "up", "-d", "--wait", "--wait-timeout", "300", "--scale", f"tracking-server={REPLICAS}", timeout=900
        )
        measured(f"OIDC stack ({REPLICAS} replicas x {WORKERS} workers) healthy in {time.monotonic() - start:.0f} s")
        stack_ca = directory / "certs" / "ca.crt"
        assert stack_ca.is_file(), "the stack did not write certs/ca.crt"
        bundle.write_text(stack_ca.read_text() + (provider_files / "ca.crt").read_text())
        with names_resolved_to(address, (PUBLIC_NAME, ISSUER_NAME)):
            yield OidcStack(stack, address, str(stack_ca), str(provider_files / "ca.crt"), str(bundle))
    finally:
        remove_everything(stack)
