"""Secure by default: only the UI and the MinIO console are published, on loopback; trainers hold no secrets."""

from __future__ import annotations

import socket

import pytest

from tests.stack.conftest import published_ports, trainer_python


def test_only_the_ui_and_the_console_are_published_and_on_loopback_only() -> None:
    assert published_ports() == {("127.0.0.1", 5000, 5000), ("127.0.0.1", 9001, 9001)}


@pytest.mark.parametrize(("port", "what"), [(5432, "Postgres"), (9000, "the S3 API")])
def test_backends_are_not_reachable_from_the_host(port: int, what: str) -> None:
    with socket.socket() as sock:
        sock.settimeout(2)
        assert sock.connect_ex(("127.0.0.1", port)) != 0, f"{what} answers on 127.0.0.1:{port}"


def test_the_trainer_holds_no_credentials_and_cannot_reach_the_backends() -> None:
    code = """
import os, socket
secrets = sorted(k for k in os.environ if any(w in k for w in ("PASSWORD", "SECRET", "ACCESS_KEY", "TOKEN")))
secrets += sorted(k for k in os.environ if k.startswith(("POSTGRES", "MINIO", "MLFLOW_S3")))
print("secrets", secrets)
for host in ("postgres", "minio"):
    try:
        socket.getaddrinfo(host, None)
        print(host, "resolves")
    except socket.gaierror:
        print(host, "unknown")
print("tracking-server", socket.getaddrinfo("tracking-server", 5000)[0][4][1])
"""
    result = trainer_python(code)
    assert "secrets []" in result.stdout
    assert "postgres unknown" in result.stdout
    assert "minio unknown" in result.stdout
    assert "tracking-server 5000" in result.stdout
