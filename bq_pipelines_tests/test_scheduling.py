"""The order `make test` hands tests out in (scheduling.py) names tests that exist: a renamed
test left in its table would weigh nothing and start last, and end the run alone."""

from __future__ import annotations

from pathlib import Path

from bq_pipelines_tests.scheduling import (
    ROOT,
    SECONDS,
    SPLIT_FILES,
    WAITING_SECONDS,
    next_unit,
    weight,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_every_timed_test_exists() -> None:
    for file, tests in SECONDS.items():
        source = (PROJECT_ROOT / ROOT / file).read_text()
        missing = [name for name in tests if f"def {name}" not in source]
        assert not missing, (file, missing)
    assert all((PROJECT_ROOT / file).is_file() for file in SPLIT_FILES)


def test_a_split_files_test_weighs_its_own_time_and_a_file_all_of_its_tests() -> None:
    test = "test_a_run_waits_while_another_run_holds_its_partition"
    assert weight(f"{ROOT}test_integrity.py::{test}") == SECONDS["test_integrity.py"][test]
    assert weight(f"{ROOT}deploy/test_celery.py") == sum(SECONDS["deploy/test_celery.py"].values())
    assert weight(f"{ROOT}test_templates.py") == 0


def test_all_workers_but_one_hold_waiting_units_at_most() -> None:
    waiting = [
        f"{ROOT}{file}::{test}"
        for file, tests in SECONDS.items()
        for test, seconds in tests.items()
        if seconds >= WAITING_SECONDS and file in {f.removeprefix(ROOT) for f in SPLIT_FILES}
    ]
    short = [f"{ROOT}test_templates.py", f"{ROOT}lib/test_cog.py"]
    queue = [*short, *waiting]
    longest = max(waiting, key=weight)
    assert next_unit(queue, waiting_held=3, workers=5) == longest
    # Four of five workers wait: the fifth gets the first short unit (xdist's order).
    assert next_unit(queue, waiting_held=4, workers=5) == short[0]
    # Nothing short left: the longest waiting unit rather than an idle worker.
    assert next_unit(waiting, waiting_held=4, workers=5) == longest
