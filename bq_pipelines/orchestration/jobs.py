"""What starts a dataset's runs: its job, the schedule of a series' newest period, and the
sensors (new files of a files-partitioned dataset, changed remote sources)."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg

from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.errors import PipelineError
from bq_pipelines.orchestration.keys import DATASET_TAG, DatasetKeys, op_name
from bq_pipelines.orchestration.resources import SourcesResource
from bq_pipelines.orchestration.sensors import reads_remote_sources, upstream_sensor

CADENCE_CRON = {"yearly": "0 0 1 1 *", "monthly": "0 0 1 * *", "daily": "0 0 * * *"}


def dataset_job(
    declaration: Declaration,
    partitions_def: dg.PartitionsDefinition,
    audit_def: dg.AssetChecksDefinition,
) -> "dg.UnresolvedAssetJobDefinition":  # quoted: dagster exports it to type checkers only
    """The dataset's partitions, then its collection; not the audit (it runs on request)."""
    keys = DatasetKeys(declaration.id)
    return dg.define_asset_job(
        op_name(declaration.id, "job"),
        selection=dg.AssetSelection.assets(*keys.partitioned, keys.collection)
        - dg.AssetSelection.checks(audit_def),
        partitions_def=partitions_def,
        description=f"Materialize {declaration.title}: partitions, then the collection.",
        tags={DATASET_TAG: declaration.id},
    )


def dataset_sensors(
    declaration: Declaration, partitions_def: dg.PartitionsDefinition, job: Any
) -> list[dg.SensorDefinition]:
    """A files-partitioned dataset's discovery sensor, or the sensor of its remote sources."""
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        return [files_discovery_sensor(declaration, partitions_def)]
    if reads_remote_sources(declaration):
        return [upstream_sensor(declaration, partitions_def, job)]
    return []


def discover_files(declaration: Declaration, local_root: Path) -> list[str]:
    """Partition keys (file names) of a files-partitioned dataset, sorted; names must be unique."""
    assert declaration.partitions.files is not None
    paths = sorted(p for p in local_root.glob(declaration.partitions.files.glob) if p.is_file())
    names = [p.name for p in paths]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PipelineError(
            f"{declaration.id}: files with the same name under {local_root}: {duplicates}"
        )
    return names


def files_discovery_sensor(
    declaration: Declaration, partitions_def: dg.DynamicPartitionsDefinition
) -> dg.SensorDefinition:
    """Adds a partition for each new file matching the dataset's glob (runs are not started:
    materialize them from the UI or with a backfill)."""

    @dg.sensor(
        name=op_name(declaration.id, "files_sensor"),
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Finds the files of {declaration.id} under the local data root.",
    )
    def discover(
        context: dg.SensorEvaluationContext, sources: SourcesResource
    ) -> dg.SkipReason | dg.SensorResult:
        found = discover_files(declaration, Path(sources.local_data_root))
        known = set(context.instance.get_dynamic_partitions(partitions_def.name or ""))
        new = [name for name in found if name not in known]
        if not new:
            return dg.SkipReason(f"no new files among {len(found)}")
        return dg.SensorResult(dynamic_partitions_requests=[partitions_def.build_add_request(new)])

    return discover


def newest_partition_keys(
    partitions_def: dg.PartitionsDefinition, current_time: datetime
) -> list[str]:
    """The newest period's partition keys at `current_time`: one, or one per static value."""
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        dimensions = partitions_def.partitions_defs
        [time_dim] = [
            d for d in dimensions if isinstance(d.partitions_def, dg.TimeWindowPartitionsDefinition)
        ]
        [other] = [d for d in dimensions if d is not time_dim]
        periods = time_dim.partitions_def.get_partition_keys(current_time=current_time)
        if not periods:
            return []
        period = periods[-1]
        return [
            str(dg.MultiPartitionKey({time_dim.name: period, other.name: value}))
            for value in other.partitions_def.get_partition_keys()
        ]
    return list(partitions_def.get_partition_keys(current_time=current_time))[-1:]


def newest_partition_schedule(
    declaration: Declaration, partitions_def: dg.PartitionsDefinition, job: Any
) -> dg.ScheduleDefinition | None:
    """A time-partitioned dataset that declares `schedule` (a cron), or whose series grows
    (at its cadence), gets a schedule requesting its newest period (a run per static value);
    off by default. A partition already processed is skipped as unchanged by the run."""
    time = declaration.partitions.time
    if time is None or not (declaration.schedule or declaration.grows):
        return None

    @dg.schedule(
        name=op_name(declaration.id, "schedule"),
        cron_schedule=declaration.schedule or CADENCE_CRON[time.cadence],
        execution_timezone="UTC",
        job=job,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Materializes the newest period of {declaration.title}.",
    )
    def newest(context: dg.ScheduleEvaluationContext) -> dg.SkipReason | list[dg.RunRequest]:
        now = context.scheduled_execution_time or datetime.now(UTC)
        keys = newest_partition_keys(partitions_def, now)
        if not keys:
            return dg.SkipReason(f"{declaration.id}: no period has started yet")
        tick = now.strftime("%Y-%m-%dT%H:%M")
        return [dg.RunRequest(run_key=f"{key}@{tick}", partition_key=key) for key in keys]

    return newest
