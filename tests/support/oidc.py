"""Sign in to an mlflow-oidc-auth server through the test OpenID provider (tests/oidc_provider), without a browser.

The same redirects a browser follows: the server's /login sends the client to the provider's authorization
endpoint (code flow with PKCE, made by the server), the provider's login page takes the user's name and
password, and its redirect back to the server's /callback opens a server-side session held in the `session`
cookie. The returned requests.Session carries that cookie (and the provider's), so it calls the REST API as
that person.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote_plus, urljoin

import requests

LOGIN_FORM_ACTION = re.compile(r'<form method="post" action="([^"]+)"')


def sign_in(server_url: str, username: str, password: str, ca_file: str) -> requests.Session:
    """Follow the redirects up to and including the server's /callback, where the session is made; the page it
    then sends a browser to (the UI) is a browser's business (the Chromium test follows it)."""
    session = requests.Session()
    session.verify = ca_file
    # requests lets REQUESTS_CA_BUNDLE (set on this machine) override session.verify; the test CA must win.
    session.trust_env = False
    page = session.get(f"{server_url}/login", timeout=30)
    page.raise_for_status()
    action = LOGIN_FORM_ACTION.search(page.text)
    if action is None:
        raise AssertionError(f"no login form at {page.url} ({page.status_code})")
    answer = session.post(
        urljoin(page.url, action.group(1)),
        data={"login": username, "password": password},
        timeout=30,
        allow_redirects=False,
    )
    for _ in range(10):
        if answer.status_code not in (302, 303):
            raise AssertionError(f"{answer.url} answered {answer.status_code}, not a redirect: {answer.text[:300]}")
        target = urljoin(answer.url, answer.headers["location"])
        answer = session.get(target, timeout=30, allow_redirects=False)
        if target.startswith(f"{server_url}/callback"):
            landing = answer.headers.get("location", "")
            if answer.status_code != 302 or "error=" in landing:
                raise PermissionError(f"{username} was refused: {answer.status_code} {unquote_plus(landing)}")
            return session
    raise AssertionError(f"no redirect to {server_url}/callback after 10 hops")


@contextlib.contextmanager
def names_resolved_to(address: str, names: tuple[str, ...]) -> Iterator[None]:
    """Resolve `names` to `address` in this process, as an /etc/hosts line would (the tests' made-up DNS names:
    the provider's issuer and the server's public name), without touching the machine's /etc/hosts. TLS still
    checks the certificate against the name in the URL."""
    original = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        return original(address if host in names else host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.getaddrinfo = original
