"""Retry with exponential backoff and a total time budget, shared by every network step."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried.

    `budget_seconds` bounds the whole operation (attempts and waits): no new attempt starts
    once the next wait would end past it. `attempts` still caps the count, so a policy with a
    budget usually sets many attempts and lets the budget decide.
    """

    attempts: int = 4
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0
    budget_seconds: float | None = None

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based), with jitter."""
        base = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1))
        return float(base * (0.5 + random.random() / 2))


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
    operation: Callable[[], T],
    *,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    describe: str,
    outage: Outage | None = None,
) -> T:
    """Run `operation`, retrying transient failures within the policy's attempts and budget;
    the last error propagates unchanged."""
    attempts = 1 if outage is not None and outage.ongoing else policy.attempts
    started = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            result = operation()
        except Exception as error:
            if not is_transient(error):
                if outage is not None:
                    outage.end()  # the endpoint answered, if only to refuse
                raise
            wait = policy.delay(attempt)
            elapsed = time.monotonic() - started
            over_budget = (
                policy.budget_seconds is not None and elapsed + wait > policy.budget_seconds
            )
            if attempt == attempts or over_budget:
                if outage is not None:
                    outage.begin()
                raise
            logger.warning(
                "%s failed (attempt %d/%d, %.0fs spent): %s; retrying in %.1fs",
                describe,
                attempt,
                attempts,
                elapsed,
                error,
                wait,
            )
            time.sleep(wait)
        else:
            if outage is not None:
                outage.end()
            return result
    raise AssertionError("unreachable")
