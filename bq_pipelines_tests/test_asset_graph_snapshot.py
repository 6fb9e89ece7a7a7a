"""The asset graph against syrupy snapshots stored beside the tests (JSON files under
`__snapshots__/test_asset_graph_snapshot/`): an unintended change fails.

- `dataset_identity`: every dataset's asset keys, group names, partition count and job
  names. These are what runs, backfills and the UI's history are attached to: they must never
  change by accident (a renamed key orphans every past materialization).
- `asset_graph`: everything a person sees of each asset (partitions definition, backfill
  policy, kinds, owners, tags, automation condition, code version), checks, jobs, schedules and
  sensors.

After an intended change, regenerate both with `pytest --snapshot-update <this file>` and
review the diff.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import dagster as dg
import pytest
from syrupy.assertion import SnapshotAssertion
from syrupy.extensions.json import JSONSnapshotExtension

from bq_pipelines.datasets.loading import load_declarations
from bq_pipelines.definitions import defs

# Partitions of a series without an end grow with today: count them as of a fixed day.
AS_OF = datetime(2026, 11, 27, tzinfo=UTC)
KIND_TAG = "dagster/kind/"  # kinds are listed on their own


@pytest.fixture(scope="module")
def definitions(tmp_path_factory: pytest.TempPathFactory) -> dg.Definitions:
    # The embedded defaults, whatever the shell exported (kinds follow the object store).
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("BQ_")}
    try:
        return defs()
    finally:
        os.environ.update(saved)


def _partition_count(partitions_def: dg.PartitionsDefinition | None) -> int | None:
    if partitions_def is None:
        return None
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        return 0  # the files found by the dataset's sensor
    return len(partitions_def.get_partition_keys(current_time=AS_OF))


def dataset_identity(definitions: dg.Definitions) -> dict[str, Any]:
    graph = definitions.resolve_asset_graph()
    jobs = sorted(job.name for job in definitions.resolve_all_job_defs())
    identity: dict[str, Any] = {}
    for declaration in sorted(load_declarations(), key=lambda d: d.id):
        assets = {}
        for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
            if key.path[0] != declaration.id:
                continue
            node = graph.get(key)
            assets[key.to_user_string()] = {
                "group": node.group_name,
                "partitions": _partition_count(node.partitions_def),
            }
        prefix = declaration.id.replace("-", "_") + "_"
        identity[declaration.id] = {
            "assets": assets,
            "jobs": [name for name in jobs if name.startswith(prefix) and name.endswith("_job")],
        }
    return identity


def _partitions_text(partitions_def: dg.PartitionsDefinition | None) -> str | None:
    if partitions_def is None:
        return None
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return " x ".join(
            f"{d.name}: {_partitions_text(d.partitions_def)}"
            for d in partitions_def.partitions_defs
        )
    count = _partition_count(partitions_def)
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        return f"time {partitions_def.cron_schedule} {partitions_def.fmt}, {count}"
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        return f"dynamic {partitions_def.name}"
    return f"static, {count}"


def _schedules(definitions: dg.Definitions) -> list[dg.ScheduleDefinition]:
    """The code location's schedules: built resolved (an unresolved one has no cron yet)."""
    schedules = list(definitions.schedules or [])
    resolved = [s for s in schedules if isinstance(s, dg.ScheduleDefinition)]
    assert len(resolved) == len(schedules), schedules
    return resolved


def asset_graph(definitions: dg.Definitions) -> dict[str, Any]:
    graph = definitions.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        condition = node.automation_condition
        policy = node.backfill_policy
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "partitions": _partitions_text(node.partitions_def),
            "backfill_policy": None
            if policy is None
            else f"{policy.policy_type.value} {policy.max_partitions_per_run}",
            "kinds": sorted(node.kinds),
            "owners": list(node.owners),
            "tags": {k: v for k, v in sorted(node.tags.items()) if not k.startswith(KIND_TAG)},
            "automation_condition": None
            if condition is None
            else condition.get_label() or type(condition).__name__,
            "code_version": node.code_version,
            "checks": sorted(k.name for k in node.check_keys),
        }
    return {
        "assets": assets,
        "jobs": sorted(job.name for job in definitions.resolve_all_job_defs()),
        "schedules": {
            s.name: {"cron": str(s.cron_schedule), "default_status": s.default_status.value}
            for s in sorted(_schedules(definitions), key=lambda s: s.name)
        },
        "sensors": {
            s.name: s.default_status.value
            for s in sorted(definitions.sensors or [], key=lambda s: s.name)
        },
    }


@pytest.fixture
def snapshot_json(snapshot: SnapshotAssertion) -> SnapshotAssertion:
    """Snapshots as JSON files, keys sorted: a change reads as a plain diff in review."""
    return snapshot.use_extension(JSONSnapshotExtension)


def test_dataset_keys_groups_partitions_and_jobs_are_unchanged(definitions, snapshot_json):
    assert dataset_identity(definitions) == snapshot_json


def test_asset_graph_is_as_recorded(definitions, snapshot_json):
    assert asset_graph(definitions) == snapshot_json
