"""The catalog backup in Dagster: a daily-partitioned asset, its blocking restorability check,
a job and the schedule. The work is done by `bq_pipelines.backup` (Dagster-free).

Each day's backup is a partition: a missed day can be backfilled (it then holds the catalog as
it was when the backfill ran; `started_at` says when). The check restores the new dump into a
scratch copy before retention may delete anything older.
"""

import argparse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import dagster as dg

from bq_pipelines.backup import cli as backup_cli
from bq_pipelines.backup.dump import take_backup, write_manifest
from bq_pipelines.backup.manifest import Manifest
from bq_pipelines.backup.retention import RetentionPlan, RetentionPolicy, apply_retention
from bq_pipelines.backup.verify import Verification, verify_backup
from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.orchestration.resources import CatalogBackupResource, ObjectStoreResource
from bq_pipelines.settings import Settings

BACKUP_ASSET = dg.AssetKey("catalog_backup")
BACKUP_GROUP = "catalog_backup"
RESTORABLE_CHECK = "restorable"
BACKUP_JOB = "catalog_backup_job"
BACKUP_SCHEDULE = "catalog_backup_schedule"
# The first day a backup can be backfilled for: backups older than the retention window are
# deleted again at once, so an earlier start would only lengthen the partition list.
BACKUP_PARTITIONS = dg.DailyPartitionsDefinition(
    start_date="2026-11-01", timezone="UTC", end_offset=1
)


def backup_day(tick: datetime | None) -> str:
    """The partition a tick backs up: the day (UTC) the dump is taken."""
    return (tick or datetime.now(UTC)).astimezone(UTC).date().isoformat()


def build_backup_asset(kinds: set[str]) -> dg.AssetsDefinition:
    @dg.asset(
        key=BACKUP_ASSET,
        group_name=BACKUP_GROUP,
        kinds=kinds,
        partitions_def=BACKUP_PARTITIONS,
        check_specs=[
            dg.AssetCheckSpec(
                RESTORABLE_CHECK,
                asset=BACKUP_ASSET,
                blocking=True,
                description="The new backup, downloaded back from the object store, restores "
                "into a scratch copy holding the collections, items and item ids recorded at "
                "dump time; the copy is dropped.",
            )
        ],
        description="The STAC catalog backed up to backups/<name>/<day> in the object store: "
        "pg_dump -Fc of the pgstac database (BQ_PGSTAC_DSN), else the static catalog folder "
        "as tar.gz. Old backups are deleted once the new one is verified (retention).",
    )
    def catalog_backup(
        context: dg.AssetExecutionContext,
        object_store: ObjectStoreResource,
        backup: CatalogBackupResource,
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        backend = backup.backend()
        store = object_store.store()
        progress = context.log.info
        day = date.fromisoformat(context.partition_key)
        manifest = take_backup(backend, store, day, progress=progress)
        verification = verify_backup(
            backend, store, manifest, Path(backup.work_dir), progress=progress
        )
        manifest = replace(
            manifest, verified=verification.passed, verification_seconds=verification.seconds
        )
        write_manifest(store, manifest)
        plan = None
        if verification.passed:  # never delete old backups for one that does not restore
            plan = apply_retention(
                store,
                backend.name,
                datetime.now(UTC).date(),
                backup.retention(),
                protect=manifest.backup_key,
                progress=progress,
            )
        yield dg.MaterializeResult(metadata=backup_metadata(manifest, plan, backup.retention()))
        yield dg.AssetCheckResult(
            check_name=RESTORABLE_CHECK,
            passed=verification.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description="; ".join(verification.problems) or None,
            metadata=check_metadata(verification),
        )

    return catalog_backup


def backup_metadata(
    manifest: Manifest, plan: RetentionPlan | None, policy: RetentionPolicy
) -> dict[str, dg.MetadataValue]:
    metadata: dict[str, dg.MetadataValue] = {
        "key": dg.MetadataValue.text(manifest.key),
        "catalog": dg.MetadataValue.text(manifest.catalog),
        "size_bytes": dg.MetadataValue.int(manifest.size),
        "duration_seconds": dg.MetadataValue.float(manifest.duration_seconds),
        "sha256": dg.MetadataValue.text(manifest.sha256),
        "collections": dg.MetadataValue.int(manifest.state.collections),
        "items": dg.MetadataValue.int(manifest.state.items),
        "item_ids_sha256": dg.MetadataValue.text(manifest.state.item_ids_sha256),
        "started_at": dg.MetadataValue.text(manifest.started_at),
        **{
            f"{tool}_version": dg.MetadataValue.text(version)
            for tool, version in manifest.versions.items()
        },
        "retention_days": dg.MetadataValue.int(policy.days),
        "retention_keep_last": dg.MetadataValue.int(policy.keep_last),
        "retention_dry_run": dg.MetadataValue.bool(policy.dry_run),
    }
    if plan is None:
        metadata["retention"] = dg.MetadataValue.text("skipped: the backup did not verify")
    else:
        label = "retention_would_delete" if policy.dry_run else "retention_deleted"
        metadata[label] = dg.MetadataValue.json(plan.deleted_keys)
        metadata["retention_kept"] = dg.MetadataValue.int(len(plan.keep))
        metadata["retention_without_manifest"] = dg.MetadataValue.json(
            [backup.key.key for backup in plan.untouched]
        )
    return metadata


def check_metadata(verification: Verification) -> dict[str, dg.MetadataValue]:
    expected, found = verification.expected, verification.found
    metadata: dict[str, dg.MetadataValue] = {
        "verification_seconds": dg.MetadataValue.float(verification.seconds),
        "expected_collections": dg.MetadataValue.int(expected.collections),
        "expected_items": dg.MetadataValue.int(expected.items),
        "expected_item_ids_sha256": dg.MetadataValue.text(expected.item_ids_sha256),
    }
    if found is not None:
        metadata["restored_collections"] = dg.MetadataValue.int(found.collections)
        metadata["restored_items"] = dg.MetadataValue.int(found.items)
        metadata["restored_item_ids_sha256"] = dg.MetadataValue.text(found.item_ids_sha256)
    if verification.problems:
        metadata["problems"] = dg.MetadataValue.json(verification.problems)
    return metadata


def build_backup_schedule(at: tuple[int, int], enabled: bool) -> dg.ScheduleDefinition:
    hour, minute = at

    @dg.schedule(
        name=BACKUP_SCHEDULE,
        cron_schedule=f"{minute} {hour} * * *",
        execution_timezone="UTC",
        job_name=BACKUP_JOB,
        default_status=(
            dg.DefaultScheduleStatus.RUNNING if enabled else dg.DefaultScheduleStatus.STOPPED
        ),
        description=f"Backs up the catalog daily at {hour:02d}:{minute:02d} UTC "
        "(BQ_BACKUP_TIME; BQ_BACKUP_SCHEDULE_ENABLED=false leaves it off).",
    )
    def catalog_backup_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        day = backup_day(context.scheduled_execution_time)
        return dg.RunRequest(run_key=day, partition_key=day)

    return catalog_backup_schedule


def backup_definitions(settings: Settings) -> dg.Definitions:
    """The backup's asset (with its check), job and schedule, as the settings configure them."""
    kinds = {"postgres"} if settings.pgstac_dsn or settings.catalog == "stac-api" else {"file"}
    asset = build_backup_asset(kinds)
    job = dg.define_asset_job(
        BACKUP_JOB,
        selection=dg.AssetSelection.assets(asset),
        partitions_def=BACKUP_PARTITIONS,
        description="Back up the catalog, verify the backup, apply retention.",
    )
    schedule = build_backup_schedule(settings.backup_time, settings.backup_schedule_enabled)
    return dg.Definitions(assets=[asset], jobs=[job], schedules=[schedule])


def run_backup_command(args: argparse.Namespace, definitions: dg.Definitions) -> int:
    """`bq-pipelines backups|restore` with the code location's resources (EnvVars resolved)."""
    available = definitions.resources or {}
    resources = {name: available[name] for name in ("object_store", "backup")}
    with dg.build_resources(resources) as built:
        return backup_cli.run(
            args, built.object_store.store(), built.backup.backend(), Path(built.backup.work_dir)
        )


@dataclass(frozen=True)
class BackupRun:
    """A backup taken on request: the run, and what its asset and check recorded."""

    run_id: str
    day: str
    success: bool
    metadata: Mapping[str, Any]  # the materialization's metadata values (none if it failed)
    problems: list[str]  # the restorable check's findings, or the step's error


def backup_now(definitions: dg.Definitions, instance: dg.DagsterInstance, day: date) -> BackupRun:
    """The code location's backup job for `day`, run here and now: the same asset, blocking
    `restorable` check and retention as a scheduled run, recorded in `instance` as one."""
    key = day.isoformat()
    days = BACKUP_PARTITIONS.get_partition_keys()
    if key not in days:
        raise ConfigError(f"--date: {key} is not a backup day (from {days[0]} to {days[-1]}, UTC)")
    result = definitions.resolve_job_def(BACKUP_JOB).execute_in_process(
        partition_key=key, instance=instance, raise_on_error=False
    )
    materializations = result.asset_materializations_for_node(BACKUP_ASSET.path[-1])
    metadata = (
        {k: v.value for k, v in materializations[0].metadata.items()} if materializations else {}
    )
    problems = [
        event.step_failure_data.error.message.strip()
        for event in result.get_step_failure_events()
        if event.step_failure_data.error is not None
    ]
    problems += [
        check.description or f"check {check.check_name} failed"
        for check in result.get_asset_check_evaluations()
        if not check.passed
    ]
    return BackupRun(result.run_id, key, result.success, metadata, problems)
