"""Helpers to run a dataset's assets in-process and read what they recorded."""

from __future__ import annotations

import dagster as dg

from bq_pipelines.declarations import Declaration
from bq_pipelines.factory import build_dataset, op_name
from bq_pipelines.launch import Materialization, materialize
from bq_pipelines.resources import resources_for
from bq_pipelines.settings import Settings


def dataset_definitions(declaration: Declaration, settings: Settings) -> dg.Definitions:
    """One dataset's assets with the resources `settings` choose (like the code location)."""
    return dg.Definitions.merge(
        build_dataset(declaration), dg.Definitions(resources=resources_for(settings))
    )


def materialize_dataset(
    declaration: Declaration,
    settings: Settings,
    instance: dg.DagsterInstance,
    partitions: list[str] | None = None,
) -> Materialization:
    """Materialize `partitions` (default: all) in batched in-process runs, the collection last."""
    defs = dataset_definitions(declaration, settings)
    job = defs.resolve_job_def(op_name(declaration.id, "job"))
    keys = partitions or list(
        job.partitions_def.get_partition_keys(dynamic_partitions_store=instance)
    )
    return materialize(declaration, defs, keys, instance)


def run_dataset(
    declaration: Declaration,
    settings: Settings,
    instance: dg.DagsterInstance,
    partitions: list[str] | None = None,
) -> bool:
    """Whether every run of `materialize_dataset` succeeded."""
    return materialize_dataset(declaration, settings, instance, partitions).ok


def latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> dict:
    """Metadata values of the latest materialization of `key` for `partition`."""
    [record] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def failure_messages(instance: dg.DagsterInstance) -> str:
    """Every step-failure message recorded in `instance`, joined."""
    messages = []
    for run in instance.get_runs():
        records = instance.get_records_for_run(
            run_id=run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE
        ).records
        for record in records:
            failure = record.event_log_entry.dagster_event.step_failure_data
            messages.append(failure.error.message if failure.error else "")
    return "\n".join(messages)
