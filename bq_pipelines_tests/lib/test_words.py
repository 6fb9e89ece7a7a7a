"""Counts in words: the singular for exactly one, the plural otherwise."""

from __future__ import annotations

import pytest

from bq_pipelines.lib.words import plural


@pytest.mark.parametrize(
    ("count", "noun", "expected"),
    [
        (1, "partition", "1 partition"),
        (0, "partition", "0 partitions"),
        (2, "orphan object", "2 orphan objects"),
        (1, "orphan object", "1 orphan object"),
        (3, "entry", "3 entries"),
        (2, "day", "2 days"),
        (1_500, "item", "1,500 items"),
    ],
)
def test_plural(count: int, noun: str, expected: str) -> None:
    assert plural(count, noun) == expected


def test_an_irregular_plural_is_given() -> None:
    assert plural(2, "analysis", "analyses") == "2 analyses"
    assert plural(1, "analysis", "analyses") == "1 analysis"
