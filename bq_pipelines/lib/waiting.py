"""Waiting for a condition, the one way the project does it (library, scripts and tests): poll
until it holds or a deadline passes, never sleep a fixed time to synchronise."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
DEFAULT_POLL_SECONDS = 0.2


class WaitTimeout(TimeoutError):
    """The condition did not hold in time; the message says what was awaited and for how long."""


def wait_until(
    condition: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    poll: float = DEFAULT_POLL_SECONDS,
    failed: Callable[[], str | None] | None = None,
    detail: Callable[[], str] | None = None,
) -> T:
    """The first truthy value of `condition()`, polled every `poll` seconds; WaitTimeout naming
    `what` after `timeout` seconds. `failed`, checked between polls, ends the wait early with
    its message (a process that exited, say). `detail`, called only when the wait fails, adds
    what was seen last to the message (a status, a log's tail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        problem = failed() if failed is not None else None
        if problem:
            raise WaitTimeout(_message(f"{what}: {problem}", detail))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeout(_message(f"{what}: not within {timeout:.0f} s", detail))
        time.sleep(min(poll, remaining))


def _message(reason: str, detail: Callable[[], str] | None) -> str:
    return reason if detail is None else f"{reason}\n{detail()}"
