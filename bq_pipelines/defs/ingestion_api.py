"""The ingestion API's Dagster side (bq_pipelines/ingestion): its asset, job and request
sensor, and the `ingestion_api` resource."""

import dagster as dg

from bq_pipelines.datasets.loading import load_declarations
from bq_pipelines.ingestion.definitions import ingestion_definitions
from bq_pipelines.settings import current_api_settings


@dg.definitions
def defs() -> dg.Definitions:
    # The API needs every declaration: a request to a declared collection takes its settings.
    return ingestion_definitions(load_declarations(), current_api_settings())
