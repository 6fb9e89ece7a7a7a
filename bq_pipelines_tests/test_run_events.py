"""What a batched run writes to Dagster's event log.

Each row is a database write (a commit on SQLite): the rows per partition are most of Dagster's
overhead over a plain loop of the same library calls (bench/bench_backfill.py). The contract per
run: one materialization and one planned materialization per asset and partition (Dagster's
partition status, in progress or failed, reads the planned ones), no log row per partition, and
not the collection's on-request drift audit.
"""

from __future__ import annotations

import collections
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import pytest
import yaml

from bq_pipelines.orchestration.factory import build_dataset
from bq_pipelines.orchestration.keys import AUDIT_CHECK, DatasetKeys, op_name
from bq_pipelines.runtime.event_batching import (
    EVENT_BATCH_SIZE,
    EVENT_BATCH_SIZE_ENV,
    batched_event_writes,
    with_event_batching,
)
from bq_pipelines.runtime.launch import RANGE_START_TAG
from bq_pipelines.settings import Settings
from bq_pipelines_testkit import backfill_location as location
from bq_pipelines_testkit.dagster_processes import PROJECT_ROOT
from bq_pipelines_testkit.http_host import LocalHttpHost
from bq_pipelines_testkit.runs import materialize_dataset
from bq_pipelines_tests.backfill_stack import bq_env, serve_sources

AssetPartition = tuple[dg.AssetKey | None, str]  # as Dagster types an event's asset key


def asset_events(
    records: list[dg.EventLogRecord], event_type: dg.DagsterEventType
) -> collections.Counter[AssetPartition]:
    """How many events of `event_type` each (asset, partition) got."""
    counts: collections.Counter[AssetPartition] = collections.Counter()
    for record in records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.event_type == event_type and event.partition is not None:
            counts[(event.asset_key, event.partition)] += 1
    return counts


def check_run_events(
    instance: dg.DagsterInstance, keys: DatasetKeys, batch_size: int, before: set[str]
) -> set[str]:
    """Assert the contract on every partition run of `instance` not in `before` (run ids); the
    partitions they ran."""
    ran: set[str] = set()
    runs = [r for r in instance.get_runs() if RANGE_START_TAG in r.tags and r.run_id not in before]
    assert runs
    for run in runs:
        records = list(instance.get_records_for_run(run.run_id, limit=100_000).records)
        materialized = asset_events(records, dg.DagsterEventType.ASSET_MATERIALIZATION)
        partitions = {p for (asset, p) in materialized if asset == keys.step("stac_item")}
        assert 0 < len(partitions) <= batch_size
        once = {(asset, p): 1 for asset in keys.partitioned for p in partitions}
        assert materialized == once
        assert asset_events(records, dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED) == once
        steps = {
            r.event_log_entry.step_key
            for r in records
            if r.event_log_entry.dagster_event_type == dg.DagsterEventType.STEP_START
        }
        assert op_name(keys.dataset_id, "partitions") in steps
        assert not any(step and step.endswith(AUDIT_CHECK) for step in steps), steps
        per_partition_logs = [
            r.event_log_entry.user_message
            for r in records
            if r.event_log_entry.dagster_event is None
            and any(p in r.event_log_entry.user_message for p in partitions)
        ]
        assert per_partition_logs == []
        ran |= partitions
    return ran


@pytest.mark.slow
def test_a_batched_run_records_each_asset_partition_once_and_logs_no_row_per_partition(
    tmp_path: Path, http_host: LocalHttpHost, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv(EVENT_BATCH_SIZE_ENV, raising=False)
    months, batch_size = 6, 4
    declaration = location.chelsa_like("chelsa-monthly-events", months, batch_size)
    keys = DatasetKeys(declaration.id)
    serve_sources(http_host, months, ("tas",))
    wanted = [location.partition_key(i, "tas") for i in range(months)]
    settings = Settings.from_env(bq_env(tmp_path, http_host))

    (tmp_path / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        batches = observe_event_batches(instance, monkeypatch)
        done = materialize_dataset(declaration, settings, instance, wanted)
        assert done.ok and done.published == months and done.collection_published
        # The in-process runs wrote their events in batches, and left the environment as it was.
        assert batches and max(batches) > 1
        assert EVENT_BATCH_SIZE_ENV not in os.environ
        assert check_run_events(instance, keys, batch_size, set()) == set(wanted)

        # Unchanged: every partition skipped, recorded the same way.
        first = {run.run_id for run in instance.get_runs()}
        again = materialize_dataset(declaration, settings, instance, wanted)
        assert again.ok and again.skipped == months
        assert check_run_events(instance, keys, batch_size, first) == set(wanted)


def observe_event_batches(
    instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> list[int]:
    """The sizes of the batches of events `instance` stores (observed, then stored as usual)."""
    storage = instance.event_log_storage
    store_batch = storage.store_event_batch
    sizes: list[int] = []

    def observed(events: Sequence[dg.EventLogEntry]) -> None:
        sizes.append(len(events))
        store_batch(events)

    monkeypatch.setattr(storage, "store_event_batch", observed)
    return sizes


def test_building_a_dataset_leaves_the_environment_alone(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(EVENT_BATCH_SIZE_ENV, raising=False)
    build_dataset(location.chelsa_like("chelsa-monthly-events", 2, 2))
    assert EVENT_BATCH_SIZE_ENV not in os.environ


def test_an_explicit_event_batch_size_wins(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(EVENT_BATCH_SIZE_ENV, "0")
    with batched_event_writes():
        assert os.environ[EVENT_BATCH_SIZE_ENV] == "0"
    assert with_event_batching({EVENT_BATCH_SIZE_ENV: "0"})[EVENT_BATCH_SIZE_ENV] == "0"
    monkeypatch.delenv(EVENT_BATCH_SIZE_ENV)
    with batched_event_writes():
        assert os.environ[EVENT_BATCH_SIZE_ENV] == str(EVENT_BATCH_SIZE)
    assert EVENT_BATCH_SIZE_ENV not in os.environ
    assert with_event_batching({})[EVENT_BATCH_SIZE_ENV] == str(EVENT_BATCH_SIZE)


def test_the_processes_that_run_steps_batch_their_event_writes():
    """Dagster reads the batch size from the environment only: where each stack starts its
    processes sets it (the Makefile's `make dev`/`ui`/`api`, compose, the Helm chart's runs)."""
    compose = yaml.safe_load((PROJECT_ROOT / "deploy" / "compose.yaml").read_text())
    assert compose["x-project-env"][EVENT_BATCH_SIZE_ENV] == str(EVENT_BATCH_SIZE)
    values = yaml.safe_load((PROJECT_ROOT / "deploy" / "helm" / "values.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert {"name": EVENT_BATCH_SIZE_ENV, "value": str(EVENT_BATCH_SIZE)} in deployment["env"]
    env = {k: v for k, v in os.environ.items() if k != EVENT_BATCH_SIZE_ENV}
    printed = subprocess.run(
        [
            "make",
            "-s",
            "--no-print-directory",  # under a parent make (`make test-cpu`) too
            "--eval",
            f"show-batch-size: ; @echo $${EVENT_BATCH_SIZE_ENV}",
            "show-batch-size",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed.strip() == str(EVENT_BATCH_SIZE)
