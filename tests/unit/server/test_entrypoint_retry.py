"""The entrypoint's start-up retries (tenacity): what is not there yet is waited for, a fatal error and the
deadline each end the process with one line."""

from __future__ import annotations

import pytest

from mlflow_stack_server.entrypoint import FatalError, retry


def test_a_backend_that_comes_up_is_waited_for(capsys: pytest.CaptureFixture[str]) -> None:
    attempts: list[int] = []

    def connect() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionRefusedError("connection refused\nsecond line")
        return "connected"

    assert retry("connecting to Postgres", connect, wait_seconds=10) == "connected"
    lines = capsys.readouterr().out.splitlines()
    # Backoff: 0.5 s, then twice that; each wait says why, in one line.
    assert lines == [
        "[tracking-server] connecting to Postgres: not ready (ConnectionRefusedError: connection refused), retrying in 0.5 s",
        "[tracking-server] connecting to Postgres: not ready (ConnectionRefusedError: connection refused), retrying in 1.0 s",
    ]


def test_a_fatal_error_is_not_retried(capsys: pytest.CaptureFixture[str]) -> None:
    attempts: list[int] = []

    def refuse() -> None:
        attempts.append(1)
        raise FatalError("Postgres refused the password")

    with pytest.raises(SystemExit) as exit_:
        retry("connecting to Postgres", refuse, wait_seconds=10)
    assert exit_.value.code == 1 and len(attempts) == 1
    assert capsys.readouterr().err == "[tracking-server] error: connecting to Postgres: Postgres refused the password\n"


def test_the_deadline_ends_the_wait(capsys: pytest.CaptureFixture[str]) -> None:
    def never() -> None:
        raise TimeoutError("no route to host")

    with pytest.raises(SystemExit) as exit_:
        retry("checking bucket mlflow", never, wait_seconds=0.2)  # the first pause (0.5 s) would pass it
    assert exit_.value.code == 1
    assert capsys.readouterr().err.strip() == (
        "[tracking-server] error: checking bucket mlflow failed for 0 s (TimeoutError: no route to host)"
    )
