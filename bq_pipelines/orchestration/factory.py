"""The one factory: a dataset declaration -> its Dagster definitions.

Per dataset: `<id>/raw`, `<id>/cog`, `<id>/object`, `<id>/stac_item` (partitioned, one step:
assets.py) and `<id>/collection`; their checks (checks.py); the job, schedule and sensors that
start its runs (jobs.py). A run processes a batch of partitions (materialize.py); one failing
partition does not stop the others.
"""

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


def build_dataset(declaration: Declaration, settings: Settings | None = None) -> dg.Definitions:
    """Assets, checks, jobs, sensors and schedule of one dataset. `settings` (the embedded
    defaults when None) only says which kinds of store and catalog the assets show."""
    settings = settings or Settings()
    # Nothing outside the data root is read: a file:// URL, a mirror or a symlink leading out
    # fails the load, naming the field.
    check_local_sources(
        declaration, SourceLocations(settings.source_base_urls, settings.local_data_root)
    )
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
