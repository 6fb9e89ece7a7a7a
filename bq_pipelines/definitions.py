"""The code location: the datasets of defs/ (StacDataset components), with the backup, the
ingestion API, monitoring, configured resources and the executor."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

import bq_pipelines.defs
from bq_pipelines.backup_assets import backup_definitions
from bq_pipelines.declarations import load_declarations
from bq_pipelines.executors import executor_for
from bq_pipelines.ingestion import ingestion_definitions
from bq_pipelines.monitoring import dead_run_workers_sensor
from bq_pipelines.resources import resources_for
from bq_pipelines.sensors import automation_sensor
from bq_pipelines.settings import ApiSettings, Settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dg.definitions
def defs() -> dg.Definitions:
    settings = Settings.from_env(os.environ)
    # What no single component can check (ids and object keys unique across datasets) fails
    # the load here; the ingestion API needs every declaration.
    declarations = load_declarations()
    datasets = dg.load_defs(defs_root=bq_pipelines.defs, project_root=PROJECT_ROOT)
    return dg.Definitions.merge(
        datasets,
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
