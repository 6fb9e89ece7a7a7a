"""Publishing STAC: a self-contained static catalog on disk (default), a STAC API with the
Transactions extension, or the pgstac database behind that API (bulk loads). Every backend is
idempotent: publishing the same item twice is one item. One module per backend:

- `base`: the `Publisher` interface and what the backends share;
- `static`: `StaticCatalogPublisher`;
- `stac_api`: `StacApiPublisher` (HTTP, `/bulk_items`);
- `pgstac`: `PgstacPublisher` (the API for reads, pypgstac's `Loader` and SQL for writes and
  extents);
- `reader`: `open_catalog`, any catalog opened for reading (another deployment, the legacy one).
"""

from bq_pipelines.lib.catalog.base import (
    CollectionContent,
    Publisher,
    PublishOutcome,
    same_content,
    to_json_dict,
)
from bq_pipelines.lib.catalog.pgstac import PgstacPublisher
from bq_pipelines.lib.catalog.reader import open_catalog
from bq_pipelines.lib.catalog.stac_api import (
    API_RETRY,
    API_TIMEOUT,
    BULK_THRESHOLD,
    StacApiPublisher,
)
from bq_pipelines.lib.catalog.static import StaticCatalogPublisher

__all__ = [
    "API_RETRY",
    "API_TIMEOUT",
    "BULK_THRESHOLD",
    "CollectionContent",
    "PgstacPublisher",
    "PublishOutcome",
    "Publisher",
    "StacApiPublisher",
    "StaticCatalogPublisher",
    "open_catalog",
    "same_content",
    "to_json_dict",
]
