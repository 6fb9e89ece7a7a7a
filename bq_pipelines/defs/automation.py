"""Sensors of the whole catalog: collections refreshed after their runs (one automation sensor
for every collection: such sensors may not overlap), and runs whose worker is gone failed."""

import dagster as dg

from bq_pipelines.orchestration.sensors import automation_sensor
from bq_pipelines.runtime.monitoring import dead_run_workers_sensor

defs = dg.Definitions(sensors=[automation_sensor(), dead_run_workers_sensor()])
