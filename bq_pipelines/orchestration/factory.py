"""The one factory: a dataset declaration -> its Dagster definitions.

Per dataset: `<id>/raw`, `<id>/cog`, `<id>/object`, `<id>/stac_item` (partitioned, one step:
assets.py) and `<id>/collection`; their checks (checks.py); the job, schedule and sensors that
start its runs (jobs.py). A run processes a batch of partitions (materialize.py); one failing
partition does not stop the others.
"""

import os

import dagster as dg

from bq_pipelines.datasets.plans import SourceLocations
from bq_pipelines.datasets.sandbox import check_local_sources
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.orchestration.adopt_job import adopt_job
from bq_pipelines.orchestration.assets import (
    collection_asset,
    partition_assets,
    partition_code_version,
)
from bq_pipelines.orchestration.checks import audit_check
from bq_pipelines.orchestration.jobs import (
    dataset_job,
    dataset_sensors,
    newest_partition_schedule,
)
from bq_pipelines.orchestration.keys import partitions_definition
from bq_pipelines.settings import Settings

# Dagster writes the events of one output's partitions (our 4 assets x the run's partitions) in
# one batch when this is set; dagster-postgres (production) inserts a batch of materializations in
# one statement instead of a connection and a commit each. SQLite writes them one by one either way.
EVENT_BATCH_SIZE_ENV = "DAGSTER_EVENT_BATCH_SIZE"
EVENT_BATCH_SIZE = 1000


def batch_event_writes() -> None:
    """Turn on Dagster's batched event writes in this process (read by Dagster at every event;
    the step processes and run workers build the Definitions before running anything). An
    explicit value in the environment wins (`0` turns batching off)."""
    os.environ.setdefault(EVENT_BATCH_SIZE_ENV, str(EVENT_BATCH_SIZE))


def build_dataset(declaration: Declaration, settings: Settings | None = None) -> dg.Definitions:
    """Assets, checks, jobs, sensors and schedule of one dataset. `settings` (the embedded
    defaults when None) only says which kinds of store and catalog the assets show."""
    settings = settings or Settings()
    # Nothing outside the data root is read: a file:// URL, a mirror or a symlink leading out
    # fails the load, naming the field.
    check_local_sources(
        declaration, SourceLocations(settings.source_base_urls, settings.local_data_root)
    )
    batch_event_writes()
    partitions_def = partitions_definition(declaration.id, declaration.partitions)
    audit_def = audit_check(declaration, partitions_def)
    job = dataset_job(declaration, partitions_def, audit_def)
    schedule = newest_partition_schedule(declaration, partitions_def, job)
    code_version = partition_code_version(declaration)
    return dg.Definitions(
        assets=[
            partition_assets(declaration, partitions_def, settings),
            collection_asset(declaration, partitions_def, settings),
        ],
        asset_checks=[audit_def],
        jobs=[job, adopt_job(declaration, partitions_def, code_version)],
        sensors=dataset_sensors(declaration, partitions_def, job),
        schedules=[schedule] if schedule is not None else [],
    )
