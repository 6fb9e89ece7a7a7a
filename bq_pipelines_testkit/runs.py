"""Helpers to run a dataset's assets in-process, read what they recorded, and audit it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import dagster as dg

from bq_pipelines.datasets.audit import AuditReport, audit
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.pipeline import Services
from bq_pipelines.orchestration.checks import all_partition_dimensions
from bq_pipelines.orchestration.factory import build_dataset
from bq_pipelines.orchestration.keys import op_name
from bq_pipelines.orchestration.resources import resources_for, services_for
from bq_pipelines.runtime.launch import Materialization, materialize
from bq_pipelines.settings import Settings

SERVICE_RESOURCES = ("object_store", "catalog", "sources", "locks")


def dataset_definitions(
    declaration: Declaration, settings: Settings, **overrides: dg.ConfigurableResource[Any]
) -> dg.Definitions:
    """One dataset's assets with the resources `settings` choose (like the code location),
    some replaced by `overrides`."""
    return dg.Definitions.merge(
        build_dataset(declaration, settings),
        dg.Definitions(resources={**resources_for(settings), **overrides}),
    )


def materialize_dataset(
    declaration: Declaration,
    settings: Settings,
    instance: dg.DagsterInstance,
    partitions: list[str] | None = None,
    tags: Mapping[str, str] | None = None,
    defs: dg.Definitions | None = None,
) -> Materialization:
    """Materialize `partitions` (default: all) in batched in-process runs, the collection last."""
    defs = defs or dataset_definitions(declaration, settings)
    job = defs.resolve_job_def(op_name(declaration.id, "job"))
    assert job.partitions_def is not None, f"{declaration.id}'s job is not partitioned"
    keys = partitions or list(
        job.partitions_def.get_partition_keys(dynamic_partitions_store=instance)
    )
    return materialize(declaration, defs, keys, instance, tags=tags)


def run_dataset(
    declaration: Declaration,
    settings: Settings,
    instance: dg.DagsterInstance,
    partitions: list[str] | None = None,
) -> bool:
    """Whether every run of `materialize_dataset` succeeded."""
    return materialize_dataset(declaration, settings, instance, partitions).ok


@contextmanager
def built_resources(settings: Settings) -> Iterator[Any]:
    """The resources `settings` choose, initialised as for a run (EnvVar secrets resolved)."""
    resources = resources_for(settings)
    with dg.build_resources({name: resources[name] for name in SERVICE_RESOURCES}) as built:
        yield built


@contextmanager
def built_services(settings: Settings) -> Iterator[Services]:
    with built_resources(settings) as built:
        yield services_for(built.object_store, built.catalog, built.sources)


def audit_dataset(
    declaration: Declaration, settings: Settings, instance: dg.DagsterInstance
) -> AuditReport:
    """The drift audit of the dataset's every partition, as `bq-pipelines audit` runs it."""
    defs = dataset_definitions(declaration, settings)
    partitions_def = defs.resolve_job_def(op_name(declaration.id, "job")).partitions_def
    assert partitions_def is not None
    partitions = all_partition_dimensions(declaration, partitions_def, instance)
    with built_resources(settings) as built:
        services = services_for(built.object_store, built.catalog, built.sources)
        return audit(declaration, partitions, services, built.sources.locations())


def latest_metadata(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str
) -> dict[str, Any]:
    """Metadata values of the latest materialization of `key` for `partition`."""
    [record] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    materialization = record.asset_materialization
    assert materialization is not None, f"{key.to_user_string()} [{partition}]: not materialized"
    return {k: v.value for k, v in materialization.metadata.items()}


def _events(instance: dg.DagsterInstance, kind: dg.DagsterEventType) -> Iterator[Any]:
    """Every Dagster event of `kind` recorded in `instance`, run by run."""
    for run in instance.get_runs():
        records = instance.get_records_for_run(run_id=run.run_id, of_type=kind).records
        for record in records:
            yield record.event_log_entry.dagster_event


def failure_messages(instance: dg.DagsterInstance) -> str:
    """Every step-failure message recorded in `instance`, joined."""
    failures = [
        event.step_failure_data for event in _events(instance, dg.DagsterEventType.STEP_FAILURE)
    ]
    return "\n".join(failure.error.message if failure.error else "" for failure in failures)


def check_evaluations(instance: dg.DagsterInstance, check_name: str) -> list[Any]:
    """Every evaluation of the asset check `check_name` recorded in `instance`."""
    evaluations = [
        event.event_specific_data
        for event in _events(instance, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    ]
    return [evaluation for evaluation in evaluations if evaluation.check_name == check_name]
