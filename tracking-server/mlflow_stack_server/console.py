"""How every command of the server image talks to its operator: progress on stdout, a failure as one line on
stderr and a non-zero exit, each line tagged with the command's prefix ([tracking-server], [tls], stack-gc: ...)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from mlflow_stack_server.settings import SettingsError

T = TypeVar("T")
# The exit status of bad arguments where a command has always used it (stack-secrets, stack-gc, stack-status).
USAGE_ERROR = 2


@dataclass(frozen=True)
class Console:
    prefix: str
    # Between the prefix and a failure's message (stack-gc has always printed its errors without it).
    error_label: str = "error: "
    # The exit status of a bad setting: each command keeps the one it has always had (scripts and tests check).
    settings_error_code: int = 1

    def log(self, message: str) -> None:
        print(f"{self.prefix} {message}", flush=True)

    def fail(self, message: str, code: int = 1) -> NoReturn:
        print(f"{self.prefix} {self.error_label}{message}", file=sys.stderr, flush=True)
        sys.exit(code)

    def configured(self, build: Callable[[], T]) -> T:
        """`build()` (typically Settings.from_environment), or exit with its SettingsError in one line."""
        try:
            return build()
        except SettingsError as error:
            self.fail(str(error), code=self.settings_error_code)
