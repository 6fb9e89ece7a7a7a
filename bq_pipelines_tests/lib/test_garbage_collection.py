"""A process that loaded the code location leaves what it loaded out of the collector's passes,
and still collects the garbage cycles it makes afterwards."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from bq_pipelines.lib.garbage_collection import (
    YOUNG_GENERATION_THRESHOLD,
    freeze_long_lived_objects,
)


@pytest.fixture
def collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_existing_objects_are_frozen_and_later_cycles_still_collected(collector: None):
    gc.unfreeze()
    gc.disable()  # no collection but the test's own
    try:
        before = cycle()
        freeze_long_lived_objects()
        after = cycle()
        gc.collect()
    finally:
        gc.enable()
    assert gc.get_freeze_count() > 0
    assert before() is not None, "a cycle that existed at the freeze is left alone"
    assert after() is None, "a cycle made after the freeze is collected"
    assert gc.get_threshold()[0] == YOUNG_GENERATION_THRESHOLD


def test_a_larger_threshold_already_set_is_kept(collector: None):
    gc.set_threshold(50_000, 10, 10)
    freeze_long_lived_objects()
    assert gc.get_threshold() == (50_000, 10, 10)


def test_collecting_first_freezes_no_garbage(collector: None):
    gc.unfreeze()
    gc.disable()
    try:
        garbage = cycle()
        freeze_long_lived_objects(collect_first=True)
    finally:
        gc.enable()
    assert garbage() is None, "garbage present before the freeze was collected, not frozen"
    assert gc.get_freeze_count() > 0
