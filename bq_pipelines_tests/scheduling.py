"""Plugin: the order in which pytest-xdist hands test files to its workers (`make test`).

`--dist loadfile` keeps a file's tests in one process (its module fixtures expect it) and hands
files out largest first by number of tests. The files of a few long tests (API stacks killed at
every stage, Dagster daemons, Celery workers) then came last, and the run ended with one worker
waiting on one of them while the other was idle. Here the files known to be long go first,
longest first (`SECONDS`, measured with `--durations`; the others keep xdist's order), and the
tests of `SPLIT_FILES`, which share nothing but session fixtures, go to workers one by one. One
worker at least runs short tests meanwhile: the long ones mostly wait (`WAITING_SECONDS`).

A stale table only costs wall time: no test's outcome depends on where or when it runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import pytest

PARAMETERS = re.compile(r"\[.*\]$")

# Files whose tests set up everything they use per test (function-scoped fixtures: their own
# API stack, daemon, deployment; deploy/test_celery.py its own Redis too, since two of its tests
# on one shared Redis queue handed each other's steps to their workers): each test is a work unit
# of its own.
SPLIT_FILES = frozenset(
    {
        "bq_pipelines_tests/api/test_api_exactly_once.py",
        "bq_pipelines_tests/api/test_api_restarts.py",
        "bq_pipelines_tests/deploy/test_celery.py",
        "bq_pipelines_tests/test_backfill.py",
        "bq_pipelines_tests/test_cli.py",
        "bq_pipelines_tests/test_faults.py",
        "bq_pipelines_tests/test_integrity.py",
        "bq_pipelines_tests/test_run_monitoring.py",
    }
)

# Seconds of the longest tests (setup, call and teardown of all their parameters; by file under
# bq_pipelines_tests/, then by the start of the test's name), from a fresh clone's `make test`
# (its --durations=30, 2026-12-06, ~1,000 CPU-s on 2 cores; 2026-12-07 after dataset runs moved
# into their run worker, which shortened the tests of daemon runs): only their order matters. A
# long test missing here weighs nothing and goes last: the two parameters of test_integrity's
# `test_a_run_waits...` (~125 s together then) did, and the run ended with a core idle for minutes.
SECONDS: dict[str, dict[str, float]] = {
    "api/test_api_exactly_once.py": {
        "test_accepted_and_queued_requests_survive_every_process_kill": 72,
        "test_requests_whose_run_was_starting_are_processed_exactly_o": 154,
        "test_requests_whose_run_had_started_are_processed_exactly_on": 140,
        "test_requests_whose_item_was_published_are_processed_exactly": 86,
    },
    "api/test_api_restarts.py": {
        "test_kill_9_of_the_daemon_between_acceptance_and_processing_": 62,
        "test_kill_9_of_the_api_after_acceptance_loses_nothing_and_ru": 23,
        "test_make_api_on_the_embedded_defaults": 20,
    },
    "api/test_api_processing.py": {
        "test_a_failed_request_is_processed_when_its_run_is_re_execut": 32,
        "test_the_cog_profile_follows_the_collections_declaration": 20,
        "test_the_legacy_example_is_published_as_a_valid_item_and_cog": 24,
        "test_failing_sources_end_in_error_with_the_reason": 26,
    },
    "deploy/test_celery.py": {
        "test_backfill_runs_spread_over_two_celery_workers_and_publis": 109,
        "test_a_worker_killed_mid_batch_leaves_the_backfill_finished_": 110,
    },
    "test_integrity.py": {
        "test_a_run_waits_while_another_run_holds_its_partition": 30,
        "test_audit_command_reports_and_repairs": 50,
        "test_two_concurrent_cli_runs_of_the_same_partitions_both_suc": 45,
        "test_audit_command_reports_a_half_done_backfill_apart_from_d": 35,
        "test_kill_9_mid_publish_then_rerun_leaves_no_drift": 25,
    },
    "test_cli.py": {
        "test_cli_runs_are_the_jobs_runs_counted_then_skipped": 98,
        "test_a_listing_whose_reader_goes_away_ends_quietly": 34,
    },
    "test_faults.py": {
        "test_a_source_host_answering_30_percent_5xx_and_sometimes_ha": 74,
        "test_s3_refusing_connections_for_40_s_mid_run": 58,
    },
    "test_legacy_takeover.py": {
        "test_a_legacy_catalog_is_compared_adopted_and_only_its_gaps_": 24,
    },
    "test_run_monitoring.py": {
        "test_runs_whose_worker_and_code_server_were_killed_are_faile": 125,
        "test_a_killed_run_workers_step_process_dies_with_it_and_publ": 27,
    },
    "test_backfill.py": {
        "test_daemon_backfill_of_120_months_runs_in_batches_and_fails": 74,
        "test_in_process_batches_fail_only_the_corrupt_partition_then": 13,
    },
    "lib/test_pgstac_publisher.py": {
        "test_concurrent_writers_lose_and_duplicate_nothing": 42,
    },
    "test_definitions.py": {
        "test_dagsters_cli_lists_the_backup_asset_and_schedule": 31,
        "test_workspace_yaml_loads_the_code_location": 16,
    },
    "test_concurrent_publishing.py": {
        "test_two_backfills_and_two_outside_writers_at_once": 19,
    },
    "lib/test_item_workers.py": {
        "test_a_partition_with_the_band_facts_cache_produces_the_same": 14,
    },
    "backup/test_restore.py": {
        "test_restore_asks_before_replacing_and_no_means_no": 10,
    },
    "lib/test_catalog.py": {
        "test_static_catalog_concurrent_writers": 8,
    },
    "test_datasets_local.py": {
        "test_global_mammals_last_species_of_a_full_size_cube_is_read": 17,
    },
}


ROOT = "bq_pipelines_tests/"


def _file(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def weight(scope: str) -> float:
    """Seconds a work unit takes: a test of a split file, or a whole file."""
    file, _, test = scope.removeprefix(ROOT).partition("::")
    tests = SECONDS.get(file, {})
    if not test:
        return sum(tests.values())
    return sum(seconds for name, seconds in tests.items() if test.startswith(name))


# Units this long spend most of their time waiting on Dagster's processes (a sensor's interval,
# run monitoring's timeouts, a source held back). When every worker held one, both cores idled
# together: /proc/stat every 5 s read 25-35 % busy for ~25 s, 40 % for ~10 s more, of a run
# otherwise ~99 % busy. So all workers but one hold such units at most; the last runs the others.
WAITING_SECONDS = 50.0


def next_unit(queue: Iterable[str], waiting_held: int, workers: int) -> str:
    """The work unit to hand out next: the longest, unless all workers but one already hold a
    waiting unit; then the longest of the others (the first of equals, so units of unknown
    length keep xdist's order), or a waiting one when nothing else is left."""
    units = list(queue)
    longest = max(units, key=weight)
    if waiting_held < workers - 1 or weight(longest) < WAITING_SECONDS:
        return longest
    others = [unit for unit in units if weight(unit) < WAITING_SECONDS]
    return max(others, key=weight) if others else longest


def _longest_first_scheduling(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadFileScheduling

    class LongestFirstScheduling(LoadFileScheduling):  # type: ignore[misc]  # xdist: untyped
        def _split_scope(self, nodeid: str) -> str:
            file = _file(nodeid)
            return PARAMETERS.sub("", nodeid) if file in SPLIT_FILES else file

        def _assign_work_unit(self, node: Any) -> None:
            # xdist pops the queue's first unit: bring the chosen one there.
            held = sum(
                1
                for units in self.assigned_work.values()
                for scope, done in units.items()
                if weight(scope) >= WAITING_SECONDS and not all(done.values())
            )
            unit = next_unit(self.workqueue, held, len(self.nodes))
            self.workqueue.move_to_end(unit, last=False)
            super()._assign_work_unit(node)

    return LongestFirstScheduling(config, log)


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # optional: runs without xdist too
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadfile":
        return None
    return _longest_first_scheduling(config, log)
