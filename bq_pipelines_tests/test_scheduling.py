"""The order `make test` hands tests out in (scheduling.py) names tests that exist: a renamed
test left in its table would weigh nothing and start last, and end the run alone."""

from __future__ import annotations

from pathlib import Path

from bq_pipelines_tests.scheduling import ROOT, SECONDS, SPLIT_FILES, weight

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
