"""wait_until: the first truthy value, or an error naming what was awaited."""

from __future__ import annotations

import itertools

import pytest

from bq_pipelines.lib.waiting import WaitTimeout, wait_until


def test_the_first_truthy_value_is_returned() -> None:
    values = iter([None, 0, "", "ready", "later"])
    assert wait_until(lambda: next(values), timeout=10, what="a value", poll=0) == "ready"


def test_a_condition_that_never_holds_names_what_was_awaited() -> None:
    calls = itertools.count()
    with pytest.raises(WaitTimeout, match=r"the API on port 1: not within 0 s"):
        wait_until(lambda: next(calls) < 0, timeout=0.05, what="the API on port 1", poll=0.01)


def test_a_failure_ends_the_wait_with_its_reason() -> None:
    with pytest.raises(WaitTimeout, match="the server: it exited with code 3"):
        wait_until(
            lambda: False, timeout=60, what="the server", failed=lambda: "it exited with code 3"
        )


def test_a_failed_wait_says_what_was_seen_last() -> None:
    statuses = iter(["QUEUED", "STARTED"])
    last: list[str] = []

    def succeeded() -> bool:
        last.append(next(statuses, "STARTED"))
        return False

    with pytest.raises(WaitTimeout, match=r"run 1 succeeding: not within 0 s\nlast: STARTED"):
        wait_until(
            succeeded,
            timeout=0.05,
            what="run 1 succeeding",
            poll=0.01,
            detail=lambda: f"last: {last[-1]}",
        )
