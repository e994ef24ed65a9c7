"""One way to wait, for tests and benchmarks alike: poll a condition until it holds or a deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    message: str | Callable[[], str],
    interval: float = 0.5,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """Call `predicate` every `interval` seconds until it returns something truthy, and return that.

    After `timeout` seconds: AssertionError(message). A callable message is called only then (to read a
    container's log, say). Exceptions of the `ignoring` types count as "not yet" (a server still starting); the
    last one is named in the error. Any other exception, an assertion in the predicate included, ends the wait.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            outcome = predicate()
            if outcome:
                return outcome
        except ignoring as error:
            last_error = error
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            if last_error is not None:
                text += f" (last error: {type(last_error).__name__}: {last_error})"
            raise AssertionError(text) from last_error
        time.sleep(interval)
