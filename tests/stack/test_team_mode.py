"""Team mode: one server host over HTTPS with logins, trainers on other machines (README, Team mode).

Brings up a second stack once for the module (project `<name>-team`, from a fresh copy of this repository,
reusing the session's images) with MLFLOW_TLS=on and MLFLOW_AUTH=basic, published on the gateway address of
a separate Docker network, `<name>-team-remote`. Containers on that network stand for the training hosts:
Docker isolates bridge networks from each other, so the only things they reach of the stack are its
published ports. They run docker-compose.trainer.yml, the trainer-only file a training host uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect, sync_playwright

from tests.stack.conftest import MLFLOW_PORT, NPZ_IN_CONTAINER, REPO, mnist_npz
from tests.stack.fresh_stack import FreshStack, copy_repository
from tests.support.chromium import launch, nss_home
from tests.support.waiting import wait_until

PROJECT = f"{os.environ.get('COMPOSE_PROJECT_NAME', 'mlflow-stack')}-team"
NETWORK = f"{PROJECT}-remote"
# Next to the session's stack and the first-start one (+10): 5012/5013 in CI.
TEAM_PORT = int(os.environ.get("TEAM_STACK_MLFLOW_PORT", str(MLFLOW_PORT + 12)))
TEAM_CONSOLE_PORT = int(os.environ.get("TEAM_STACK_CONSOLE_PORT", str(MLFLOW_PORT + 13)))
PUBLIC_NAME = "mlflow.team.test"
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"


class TeamStack(FreshStack):
    """The fresh copy, on the team ports."""

    def environment(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        ports = {"MLFLOW_PORT": str(TEAM_PORT), "MINIO_CONSOLE_PORT": str(TEAM_CONSOLE_PORT)}
        return super().environment({**ports, **(extra or {})})


@dataclass
class Team:
    stack: TeamStack
    address: str  # the remote network's gateway address: where the stack is published
    ca: str  # certs/ca.crt the stack wrote into its project folder
    admin: tuple[str, str]
    trainer: tuple[str, str]
    suffix: str

    @property
    def url(self) -> str:
        return f"https://{self.address}:{TEAM_PORT}"

    def api(self, path: str) -> str:
        return f"{self.url}/api/2.0/mlflow/{path}"

    def remote(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The trainer-only compose file on the remote network, as a training host runs it."""
        env = {
            "MLFLOW_TRACKING_URI": f"https://{PUBLIC_NAME}:{TEAM_PORT}",
            "MLFLOW_TRACKING_USERNAME": self.trainer[0],
            "MLFLOW_TRACKING_PASSWORD": self.trainer[1],
            "COMPOSE_PROJECT_NAME": f"{PROJECT}-trainer",
            "TRAINER_UI_URL": f"https://{PUBLIC_NAME}:{TEAM_PORT}",
            **(extra_env or {}),
        }
        return self.stack.compose(
            "-f", "docker-compose.trainer.yml", "-f", "remote-network.yml", *args, check=False, extra=env, timeout=900
        )  # fmt: skip

    def train(self, *args: str, env: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        return self.remote(
            "run", "--rm", "-T", *env, "-v", f"{mnist_npz()}:{NPZ_IN_CONTAINER}:ro", "trainer",
            "--data", NPZ_IN_CONTAINER, "--min-accuracy", "0.5", *args,
        )  # fmt: skip

    def runs(self, experiment: str) -> list[dict[str, object]]:
        found = requests.get(
            self.api("experiments/get-by-name"),
            params={"experiment_name": experiment},
            auth=self.admin,
            verify=self.ca,
            timeout=30,
        )
        if found.status_code == 404:
            return []
        found.raise_for_status()
        experiment_id = found.json()["experiment"]["experiment_id"]
        answer = requests.post(
            self.api("runs/search"),
            json={"experiment_ids": [experiment_id]},
            auth=self.admin,
            verify=self.ca,
            timeout=30,
        )
        answer.raise_for_status()
        runs: list[dict[str, object]] = answer.json().get("runs", [])
        return runs


def _docker(*args: str, check: bool = True) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def served_fingerprint(address: str) -> str:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # only reading which certificate it is
    with socket.create_connection((address, TEAM_PORT), timeout=10) as raw, context.wrap_socket(raw) as tls:
        certificate = tls.getpeercert(binary_form=True)
    assert certificate
    return hashlib.sha256(certificate).hexdigest()


def remove_everything(stack: TeamStack) -> None:
    """Both projects (the training host's one-off containers too), then the network they shared."""
    stack.compose("--profile", "train", "down", "-v", "--remove-orphans", "--timeout", "5", check=False)
    trainer_project = {"COMPOSE_PROJECT_NAME": f"{PROJECT}-trainer", "MLFLOW_TRACKING_URI": "https://unused"}
    for container in _docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}-trainer").split():
        _docker("rm", "-f", container, check=False)
    stack.compose("-f", "docker-compose.trainer.yml", "down", "-v", check=False, extra=trainer_project)
    _docker("network", "rm", NETWORK, check=False)


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    directory = copy_repository(tmp_path_factory.mktemp("team-clone"))
    stack = TeamStack(directory, PROJECT)
    remove_everything(stack)  # leftovers of an interrupted earlier run
    _docker("network", "create", NETWORK)
    address = json.loads(_docker("network", "inspect", NETWORK))[0]["IPAM"]["Config"][0]["Gateway"]
    (directory / ".env").write_text(
        "MLFLOW_TLS=on\nMLFLOW_AUTH=basic\n"
        f"MLFLOW_PUBLIC_NAMES={PUBLIC_NAME},{address}\nBIND_ADDRESS={address}\n"
        f"TRAINER_UI_URL=https://{PUBLIC_NAME}:{TEAM_PORT}\n"
    )
    # What a test adds to the training host's file: its network, and the server's name in /etc/hosts.
    (directory / "remote-network.yml").write_text(
        f"services:\n  trainer:\n    extra_hosts: ['{PUBLIC_NAME}:{address}']\n"
        f"networks:\n  default:\n    name: {NETWORK}\n    external: true\n"
    )
    try:
        stack.compose("up", "-d", "--wait", "--wait-timeout", "240")
        ca = directory / "certs" / "ca.crt"
        assert ca.is_file(), "the stack did not write certs/ca.crt"
        admin = ("admin", stack.secrets()["mlflow_auth_admin_password"])
        trainer = (f"trainer-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex)
        created = requests.post(
            f"https://{address}:{TEAM_PORT}/api/2.0/mlflow/users/create",
            json={"username": trainer[0], "password": trainer[1]},
            auth=admin,
            verify=str(ca),
            timeout=30,
        )
        assert created.ok, created.text
        yield Team(stack, address, str(ca), admin, trainer, uuid.uuid4().hex[:8])
    finally:
        remove_everything(stack)


def test_a_remote_trainer_trains_and_registers_over_https_with_the_stacks_ca(team: Team) -> None:
    experiment, model = f"team-{team.suffix}", f"mnist-team-{team.suffix}"
    result = team.train(
        "--epochs", "1", "--max-train-samples", "2000", "--experiment-name", experiment,
        "--registered-model-name", model,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"registered {model} version 1" in result.stdout
    assert f"https://{PUBLIC_NAME}:{TEAM_PORT}/#/experiments/" in result.stdout  # the run link, as people open it
    # The training host's file holds the trainer and nothing else: no Postgres, MinIO or server to start.
    assert team.remote("config", "--services").stdout.split() == ["trainer"]
    runs = team.runs(experiment)
    assert len(runs) == 1 and runs[0]["info"]["status"] == "FINISHED"  # type: ignore[index]
    version = requests.get(
        team.api("model-versions/get"), params={"name": model, "version": "1"}, auth=team.trainer, verify=team.ca,
        timeout=30,
    )  # fmt: skip
    assert version.ok and version.json()["model_version"]["run_id"] == runs[0]["info"]["run_id"]  # type: ignore[index]


def test_without_the_ca_the_trainer_fails_in_one_line_and_creates_no_run(team: Team) -> None:
    experiment = f"team-noca-{team.suffix}"
    # The system's CAs only (certifi's bundle), as on a host where certs/ca.crt was never copied.
    result = team.train(
        "--epochs", "1", "--max-train-samples", "500", "--experiment-name", experiment,
        env=("-e", "MLFLOW_TRACKING_SERVER_CERT_PATH="),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("trainer:")]
    assert len(errors) == 1 and "certificate verify failed" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert team.runs(experiment) == []


def test_logins_are_required_and_plain_http_gets_no_answer(team: Team) -> None:
    search = team.api("experiments/search?max_results=1")
    assert requests.get(search, verify=team.ca, timeout=30).status_code == 401
    assert requests.get(search, auth=(team.trainer[0], "wrong"), verify=team.ca, timeout=30).status_code == 401
    assert requests.get(search, auth=team.trainer, verify=team.ca, timeout=30).status_code == 200
    # Plain HTTP on the same port: the TLS handshake fails and the connection closes without one byte.
    received = b""
    with socket.create_connection((team.address, TEAM_PORT), timeout=10) as plain:
        plain.sendall(f"GET /api/2.0/mlflow/experiments/search HTTP/1.1\r\nHost: {team.address}\r\n\r\n".encode())
        try:
            while chunk := plain.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
    assert received == b""


def test_a_host_outside_the_public_names_gets_403(team: Team) -> None:
    search = team.api("experiments/search?max_results=1")
    for host, status in ((f"{PUBLIC_NAME}:{TEAM_PORT}", 200), (f"evil.example:{TEAM_PORT}", 403)):
        answer = requests.get(search, headers={"Host": host}, auth=team.trainer, verify=team.ca, timeout=30)
        assert answer.status_code == status, (host, answer.status_code, answer.text[:200])


def test_team_mode_without_logins_refuses_to_start_in_one_line(team: Team) -> None:
    result = team.stack.compose("run", "--rm", "--no-deps", "-T", "tls", check=False, extra={"MLFLOW_AUTH": "none"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("[tls] error: MLFLOW_TLS=on needs MLFLOW_AUTH=basic")


def test_chromium_trusting_the_ca_logs_in_and_shows_the_registry(team: Team, tmp_path: Path) -> None:
    # Chromium trusts the roots in the user's NSS database: a HOME of its own with only the stack's CA.
    home = nss_home(tmp_path, team.ca)
    model = f"mnist-team-{team.suffix}"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = launch(playwright, home, {PUBLIC_NAME: team.address})
        try:
            context = browser.new_context(
                http_credentials={"username": team.trainer[0], "password": team.trainer[1]},
                viewport={"width": 1400, "height": 1000},
            )
            page = context.new_page()
            page.set_default_timeout(30_000)
            # A certificate Chromium did not trust would fail here (net::ERR_CERT_AUTHORITY_INVALID).
            page.goto(f"https://{PUBLIC_NAME}:{TEAM_PORT}/#/models")
            # Every API call of the page checks the login (a scrypt hash): slow on a busy machine.
            expect(page.get_by_role("link", name=model)).to_be_visible(timeout=90_000)
            # MLflow's one-time "new Model Registry UI" announcement covers the table in a fresh browser.
            page.keyboard.press("Escape")
            page.wait_for_timeout(500)
            page.screenshot(path=str(SCREENSHOTS / "team-mode-registry.png"))
        finally:
            browser.close()


def test_replacing_the_certificate_restarts_only_the_gateway_and_trainers_keep_working(team: Team) -> None:
    experiment, model = f"team-renew-{team.suffix}", f"mnist-renew-{team.suffix}"
    before = served_fingerprint(team.address)
    server_id = team.stack.compose("ps", "-q", "tracking-server").stdout.strip()
    trainer = subprocess.Popen(
        [
            "docker", "compose", "-f", "docker-compose.trainer.yml", "-f", "remote-network.yml", "run", "--rm", "-T",
            "-v", f"{mnist_npz()}:{NPZ_IN_CONTAINER}:ro", "trainer", "--data", NPZ_IN_CONTAINER, "--epochs", "4",
            "--max-train-samples", "8000", "--min-accuracy", "0.5", "--experiment-name", experiment,
            "--registered-model-name", model,
        ],
        cwd=team.stack.directory,
        env=team.stack.environment({
            "MLFLOW_TRACKING_URI": f"https://{PUBLIC_NAME}:{TEAM_PORT}",
            "MLFLOW_TRACKING_USERNAME": team.trainer[0],
            "MLFLOW_TRACKING_PASSWORD": team.trainer[1],
            "COMPOSE_PROJECT_NAME": f"{PROJECT}-trainer",
            "TRAINER_UI_URL": f"https://{PUBLIC_NAME}:{TEAM_PORT}",
        }),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_until(
            lambda: team.runs(experiment) or trainer.poll() is not None, 240,
            "the trainer's run did not appear within 240 s",
        )  # fmt: skip
        assert trainer.poll() is None, "the trainer ended before the certificate could be replaced"
        renewed = team.stack.run("scripts/tls.sh", "renew", timeout=120)
        assert renewed.returncode == 0, renewed.stderr[-2000:]
        # The gateway is back and the trainer still running: the replacement happened in the middle of the run.
        trainer_alive_after_restart = trainer.poll() is None
        stdout, stderr = trainer.communicate(timeout=900)
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert trainer_alive_after_restart
    assert trainer.returncode == 0, stdout[-2000:] + stderr[-2000:]
    assert f"registered {model} version 1" in stdout
    assert [run["info"]["status"] for run in team.runs(experiment)] == ["FINISHED"]  # type: ignore[index]
    assert served_fingerprint(team.address) != before
    # Only the gateway restarted: the tracking server is the same container, never restarted.
    assert team.stack.compose("ps", "-q", "tracking-server").stdout.strip() == server_id
    inspected = json.loads(_docker("inspect", server_id))[0]
    assert inspected["RestartCount"] == 0 and inspected["State"]["Running"]
    # The old CA still verifies the new certificate: clients change nothing.
    assert requests.get(team.api("experiments/search?max_results=1"), auth=team.trainer, verify=team.ca, timeout=30).ok


def test_the_gpu_overlay_applies_to_the_training_host_file() -> None:
    # The GPU itself cannot be tried here (no NVIDIA runtime in CI): the merged file asks for every GPU.
    result = subprocess.run(
        ["docker", "compose", "-f", "docker-compose.trainer.yml", "-f", "docker-compose.gpu.yml", "config", "--format", "json"],
        cwd=REPO, capture_output=True, text=True, check=True, env={**os.environ, "MLFLOW_TRACKING_URI": "https://mlflow.team.test:5000"},
    )  # fmt: skip
    trainer = json.loads(result.stdout)["services"]["trainer"]
    assert list(json.loads(result.stdout)["services"]) == ["trainer"]
    assert trainer["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert trainer["environment"]["MLFLOW_TRACKING_SERVER_CERT_PATH"] == "/run/certs/ca.crt"
