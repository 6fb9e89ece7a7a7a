"""STAC items and collections: built with rasterio and pystac, validated offline.

`items` builds an item from a COG (its `grid` and `bands` fields, the `extensions` it declares),
`item_content` says what its data holds, `collection` builds collections and their extents and
summaries, `validation` checks any STAC object against the schemas shipped in the package.
"""

from bq_pipelines.lib.stac.collection import (
    GLOBAL_BBOX,
    build_collection,
    grown_extent,
    summarize_properties,
    summarize_values,
    union_extent,
)
from bq_pipelines.lib.stac.extensions import (
    CLASSIFICATION_SCHEMA,
    EO_SCHEMA,
    FILE_SCHEMA,
    ITEM_ASSETS_SCHEMA,
    PROJECTION_SCHEMA,
    RASTER_SCHEMA,
    multihash_sha256,
)
from bq_pipelines.lib.stac.item_content import constant_values, nodata_only
from bq_pipelines.lib.stac.items import (
    THUMBNAIL_ASSET,
    ItemAssetSpec,
    add_thumbnail,
    build_item,
    data_asset,
    planned_item,
)
from bq_pipelines.lib.stac.validation import validate

__all__ = [
    "CLASSIFICATION_SCHEMA",
    "EO_SCHEMA",
    "FILE_SCHEMA",
    "GLOBAL_BBOX",
    "ITEM_ASSETS_SCHEMA",
    "PROJECTION_SCHEMA",
    "RASTER_SCHEMA",
    "THUMBNAIL_ASSET",
    "ItemAssetSpec",
    "add_thumbnail",
    "build_collection",
    "build_item",
    "constant_values",
    "data_asset",
    "grown_extent",
    "multihash_sha256",
    "nodata_only",
    "planned_item",
    "summarize_properties",
    "summarize_values",
    "union_extent",
    "validate",
]
