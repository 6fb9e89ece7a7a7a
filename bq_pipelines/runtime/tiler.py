"""The tile server of the catalog: titiler-pgstac's application as it ships, with one addition
for mosaics. Served by `make services` and the stack (`uvicorn bq_pipelines.runtime.tiler:app`).

Our items key their COG asset by the item id (as the legacy catalog did), so no asset name is
common to a collection's items, and titiler's mosaics select assets by name. Here every item
read for a mosaic also offers its COG as `data` (`MOSAIC_ASSET`): `?assets=data` mosaics a
collection. Nothing else changes; the settings are titiler-pgstac's (PG*, TITILER_PGSTAC_*).
"""

from __future__ import annotations

from typing import Any

import attr
from titiler.pgstac import main
from titiler.pgstac.reader import SimpleSTACReader

from bq_pipelines.lib.tiles import MOSAIC_ASSET


@attr.s
class DataAssetReader(SimpleSTACReader):
    """titiler-pgstac's mosaic reader of one item, its COG (keyed by the item id) also `data`."""

    def __attrs_post_init__(self) -> None:
        assets: dict[str, Any] = self.input["assets"]
        if self.input["id"] in assets:
            assets.setdefault(MOSAIC_ASSET, assets[self.input["id"]])
        super().__attrs_post_init__()


# Read per request by the factories' routes: the collection and search mosaics use it.
main.collection.dataset_reader = DataAssetReader
main.searches.dataset_reader = DataAssetReader
app = main.app
