"""A process that loaded the code location leaves what it loaded out of the collector's passes,
and still collects the garbage cycles it makes afterwards; every process of the project starts
with a larger youngest generation (startup/sitecustomize.py)."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref
from collections.abc import Iterator

import pytest

from bq_pipelines.lib.garbage_collection import (
    YOUNG_GENERATION_THRESHOLD,
    freeze_long_lived_objects,
)
from bq_pipelines_testkit.services import PROJECT_ROOT, STARTUP


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


def first_generation_threshold(python_path: str | None) -> int:
    """The youngest generation's threshold in a new Python process, before it imports anything."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if python_path is not None:
        env["PYTHONPATH"] = python_path
    started = subprocess.run(
        [sys.executable, "-c", "import gc; print(gc.get_threshold()[0])"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(started.stdout)


def test_processes_of_the_project_start_with_the_larger_first_generation():
    assert first_generation_threshold(str(STARTUP)) == YOUNG_GENERATION_THRESHOLD
    assert first_generation_threshold(None) < YOUNG_GENERATION_THRESHOLD  # Python's own: 700


def test_the_makefile_and_the_image_start_every_process_with_it():
    makefile_variables = subprocess.run(
        ["make", "--no-print-directory", "-p", "-n", "-f", "Makefile", "install"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    [python_path] = [
        line.split(":=", 1)[1].strip()
        for line in makefile_variables.splitlines()
        if line.startswith("PYTHONPATH :=")
    ]
    assert python_path.split(":")[0] == str(STARTUP)
    dockerfile = (PROJECT_ROOT / "deploy" / "Dockerfile").read_text()
    assert "PYTHONPATH=/opt/bq/startup" in dockerfile
    assert "COPY startup /opt/bq/startup" in dockerfile
    ignored = (PROJECT_ROOT / "deploy" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "!startup/" in ignored
