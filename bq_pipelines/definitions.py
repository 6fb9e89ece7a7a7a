"""The code location: every dataset declaration turned into assets, with configured resources."""

from __future__ import annotations

import os

import dagster as dg

from bq_pipelines.backup_assets import backup_definitions
from bq_pipelines.declarations import load_declarations
from bq_pipelines.executors import executor_for
from bq_pipelines.factory import build_dataset
from bq_pipelines.ingestion import ingestion_definitions
from bq_pipelines.monitoring import dead_run_workers_sensor
from bq_pipelines.resources import resources_for
from bq_pipelines.sensors import automation_sensor
from bq_pipelines.settings import ApiSettings, Settings


@dg.definitions
def defs() -> dg.Definitions:
    settings = Settings.from_env(os.environ)
    declarations = load_declarations()
    datasets = [build_dataset(declaration) for declaration in declarations]
    return dg.Definitions.merge(
        *datasets,
        backup_definitions(settings),
        ingestion_definitions(declarations, ApiSettings.from_env(os.environ)),
        dg.Definitions(
            # One sensor for every collection: automation sensors may not overlap.
            sensors=[automation_sensor(), dead_run_workers_sensor()],
            resources=resources_for(settings),
            # Every job, the implicit asset job of backfills included.
            executor=executor_for(settings),
        ),
    )
