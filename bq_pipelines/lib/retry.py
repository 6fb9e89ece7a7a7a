"""Retry with exponential backoff within a total time budget (tenacity), shared by every network
step.

The budget is a deadline for every attempt, not only a limit checked between them: no attempt
starts past it, and each attempt is given what remains (`Deadline.cap`) as the timeout of the
call it makes, so a hung endpoint cannot hold an attempt beyond the budget.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried.

    `budget_seconds` bounds the whole operation (attempts and waits): no new attempt starts
    once the next wait would end past it, and each attempt is given the time that remains.
    `attempts` still caps the count, so a policy with a budget usually sets many attempts and
    lets the budget decide.
    """

    attempts: int = 4
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    budget_seconds: float | None = None

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based), with jitter."""
        base = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1))
        return float(base * (0.5 + random.random() / 2))


@dataclass(frozen=True)
class Deadline:
    """When an operation's time budget ends (`at` on the monotonic clock; None: no budget)."""

    at: float | None = None

    @classmethod
    def after(cls, seconds: float | None) -> Deadline:
        return cls(None if seconds is None else time.monotonic() + seconds)

    def remaining(self) -> float | None:
        """Seconds left (never below 0), or None without a budget."""
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def cap(self, seconds: float) -> float:
        """`seconds`, or less when the budget ends sooner: the timeout of one call of an
        attempt (a call given no time fails at once rather than outlive the budget)."""
        remaining = self.remaining()
        return seconds if remaining is None else max(min(seconds, remaining), 0.001)


NO_DEADLINE = Deadline()


class Outage:
    """Remembers that an endpoint stayed down for a whole retry budget.

    Shared by the operations of one client (an object store, a STAC API): once one of them has
    spent its budget on transient failures, the next ones make a single attempt until one
    succeeds. A dead endpoint then fails a batch of partitions in one budget, not one budget per
    partition, while an outage that ends is still ridden out by the first operation.
    """

    def __init__(self) -> None:
        self.since: float | None = None

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def begin(self) -> None:
        if self.since is None:
            self.since = time.monotonic()

    def end(self) -> None:
        self.since = None


def with_retries(
    operation: Callable[[Deadline], T],
    *,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    describe: str,
    outage: Outage | None = None,
) -> T:
    """Run `operation(deadline)`, retrying transient failures within the policy's attempts and
    budget; the last error propagates unchanged. `operation` passes `deadline.cap(timeout)` to
    the calls that accept a timeout."""
    attempts = 1 if outage is not None and outage.ongoing else policy.attempts
    deadline = Deadline.after(policy.budget_seconds)
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        wait=lambda state: policy.delay(state.attempt_number),
        stop=tenacity.stop_after_attempt(attempts) | _PastDeadline(deadline),
        before_sleep=_log_retry(describe, attempts),
        reraise=True,
    )
    try:
        result = retrying(operation, deadline)
    except Exception as error:
        if outage is not None:
            # A transient error that escapes spent the attempts or the budget; any other one
            # means the endpoint answered, if only to refuse.
            outage.begin() if is_transient(error) else outage.end()
        raise
    if outage is not None:
        outage.end()
    return result


class _PastDeadline(tenacity.stop.stop_base):
    """Stop when the wait before the next attempt would end at or past the deadline."""

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        remaining = self.deadline.remaining()
        return remaining is not None and retry_state.upcoming_sleep >= remaining


def _log_retry(describe: str, attempts: int) -> Callable[[tenacity.RetryCallState], None]:
    def log(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        logger.warning(
            "%s failed (attempt %d/%d, %.0fs spent): %s; retrying in %.1fs",
            describe,
            state.attempt_number,
            attempts,
            state.seconds_since_start or 0.0,
            error,
            state.upcoming_sleep,
        )

    return log
