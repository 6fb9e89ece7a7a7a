"""The daily catalog backup (bq_pipelines/backup): its asset, restorable check, job and
schedule, as the settings configure them."""

import dagster as dg

from bq_pipelines.backup.assets import backup_definitions
from bq_pipelines.settings import current_settings


@dg.definitions
def defs() -> dg.Definitions:
    return backup_definitions(current_settings())
