"""Debian's Chromium for the browser tests (Playwright cannot download its own browser here): where it is, the
flags it runs with, and a HOME whose NSS database trusts given CAs (Chromium on Linux reads its roots there)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

# Playwright's assertions wait 5 s by default (page.set_default_timeout does not change that). A busy 2-core CI
# machine has shown the UI still at "Loading..." after 5 s once a sign-in returns; every browser test imports this
# module, so they all wait up to this long for what they expect to see.
ASSERTION_TIMEOUT_MS = 60_000
expect.set_options(timeout=ASSERTION_TIMEOUT_MS)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps dialing Google's hosts, which this machine refuses.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def nss_home(tmp_path: Path, *cas: str | Path) -> Path:
    """A HOME whose NSS database trusts only the given CAs."""
    if not shutil.which("certutil"):
        pytest.fail("certutil missing: install Debian's libnss3-tools (CI does)")
    nssdb = tmp_path / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{nssdb}", "--empty-password"], check=True)
    for number, ca in enumerate(cas):
        subprocess.run(
            ["certutil", "-A", "-d", f"sql:{nssdb}", "-n", f"ca-{number}", "-t", "C,,", "-i", str(ca)], check=True
        )
    return tmp_path


def launch(playwright: Any, home: Path | None = None, hosts: dict[str, str] | None = None) -> Any:
    """Chromium with ARGS; `home`: a HOME from nss_home; `hosts`: names resolved to the given addresses."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: install Debian's chromium package (CI does)")
    args = list(ARGS)
    if hosts:
        args.append("--host-resolver-rules=" + ", ".join(f"MAP {name} {address}" for name, address in hosts.items()))
    environment = None if home is None else {**os.environ, "HOME": str(home)}
    return playwright.chromium.launch(executable_path=CHROMIUM, args=args, env=environment)
