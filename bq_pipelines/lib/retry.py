"""Retry with exponential backoff, shared by every network step."""

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
    """How often and how patiently a transient failure is retried."""

    attempts: int = 4
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 30.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based), with jitter."""
        base = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1))
        return base * (0.5 + random.random() / 2)


def with_retries(
    operation: Callable[[], T],
    *,
    policy: RetryPolicy,
    is_transient: Callable[[BaseException], bool],
    describe: str,
) -> T:
    """Run `operation`, retrying transient failures; the last error propagates unchanged."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return operation()
        except Exception as error:
            if attempt == policy.attempts or not is_transient(error):
                raise
            wait = policy.delay(attempt)
            logger.warning(
                "%s failed (attempt %d/%d): %s; retrying in %.1fs",
                describe,
                attempt,
                policy.attempts,
                error,
                wait,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")
