"""The ingestion steps, chained: fetch -> COG -> check -> item -> check -> store -> publish.

Dagster-free, so the dataset assets and the ingestion API run the very same code. Nothing is
published unless the COG and the item validate; the object is uploaded only after both checks.
`plan` says what an item is made from, `services` where it goes, `steps` makes one item,
`band_items` the items of a many-band source (in worker processes), `partition` chains them.
"""

from bq_pipelines.lib.pipeline.band_items import MIN_ITEMS_PER_WORKER, item_workers
from bq_pipelines.lib.pipeline.partition import ItemResult, PartitionResult, run_items
from bq_pipelines.lib.pipeline.plan import (
    PIPELINE_VERSION,
    ItemPlan,
    SourceRef,
    fingerprint,
    item_fields,
    settings_digest,
)
from bq_pipelines.lib.pipeline.services import Services
from bq_pipelines.lib.pipeline.steps import Step, StepCallback, probe_sources

__all__ = [
    "MIN_ITEMS_PER_WORKER",
    "PIPELINE_VERSION",
    "ItemPlan",
    "ItemResult",
    "PartitionResult",
    "Services",
    "SourceRef",
    "Step",
    "StepCallback",
    "fingerprint",
    "item_fields",
    "item_workers",
    "probe_sources",
    "run_items",
    "settings_digest",
]
