"""Links to the tile server (titiler-pgstac, eoAPI's raster service) that serves the catalog's
COGs as maps: an item's map viewer, its tiles as a map reader draws them, a collection's mosaic.

Links go to titiler-pgstac's asset endpoints (`/collections/{c}/items/{i}/assets/{a}/...`,
`TITILER_PGSTAC_API_ENABLE_ASSETS_ENDPOINTS=TRUE`), the COG asset being keyed by the item id
(`stac.data_asset`): they read the COG as a COG, so its own colour table draws a categorical
band (titiler's item endpoints, which mix assets, ignore it). How a COG is drawn otherwise comes
from its item: 3 or more uint8 bands as RGB; classes (`classification:classes`) in their colour
hints when every class has one, else the COG's colour table; other single uint8 bands as they
are (a colour table, else grey); any other band stretched over its minimum..maximum (the item's
statistics of valid pixels) on viridis. Nodata, masked and NaN pixels are transparent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from bq_pipelines.lib import stac

TILE_MATRIX_SET = "WebMercatorQuad"
# The name under which the tile server (bq_pipelines.runtime.tiler) offers every item's COG to
# mosaics.
MOSAIC_ASSET = "data"
CONTINUOUS_COLORMAP = "viridis"


def render_params(item: Mapping[str, Any]) -> dict[str, str]:
    """titiler's query parameters drawing the item's COG (see the module docstring)."""
    params: dict[str, str] = {}
    bands = stac.data_asset(item).get("raster:bands") or []
    if not bands or (len(bands) >= 3 and all(b.get("data_type") == "uint8" for b in bands[:3])):
        return params
    first = bands[0]
    classes = first.get("classification:classes") or []
    if classes:
        hints = {c["value"]: c.get("color_hint") for c in classes}
        if all(hints.values()):
            params["colormap"] = json.dumps({str(v): f"#{h}" for v, h in hints.items()})
        return params
    if first.get("data_type") == "uint8":
        return params
    statistics = first.get("statistics") or {}
    if "minimum" in statistics and "maximum" in statistics:
        params["rescale"] = f"{statistics['minimum']},{statistics['maximum']}"
    params["colormap_name"] = CONTINUOUS_COLORMAP
    return params


def _asset_path(tiler_url: str, item: Mapping[str, Any]) -> str:
    """The item's COG asset (keyed by the item id) on the tile server."""
    stac.data_asset(item)  # KeyError naming the item when it has none
    collection, item_id = (quote(str(item[key]), safe="") for key in ("collection", "id"))
    return f"{tiler_url.rstrip('/')}/collections/{collection}/items/{item_id}/assets/{item_id}"


def _query(params: Mapping[str, str]) -> str:
    return f"?{urlencode(params)}" if params else ""


def item_map_url(tiler_url: str, item: Mapping[str, Any]) -> str:
    """The tile server's map viewer of the item, drawn as `render_params` says."""
    return f"{_asset_path(tiler_url, item)}/{TILE_MATRIX_SET}/map.html{_query(render_params(item))}"


def item_tile_url(tiler_url: str, item: Mapping[str, Any], z: int, x: int, y: int) -> str:
    """One PNG tile of the item, as its map viewer requests it."""
    tile = f"tiles/{TILE_MATRIX_SET}/{z}/{x}/{y}.png"
    return f"{_asset_path(tiler_url, item)}/{tile}{_query(render_params(item))}"


def _mosaic_params(sample_item: Mapping[str, Any] | None) -> dict[str, str]:
    """A collection's items drawn alike: as its `sample_item` would be (mosaics ignore a COG's
    colour table: classes need colour hints to show in colour)."""
    params = {"assets": MOSAIC_ASSET}
    if sample_item is not None:
        params |= render_params(sample_item)
    return params


def collection_map_url(
    tiler_url: str, collection_id: str, sample_item: Mapping[str, Any] | None = None
) -> str:
    """The tile server's map viewer of a mosaic of the collection's items."""
    path = f"{tiler_url.rstrip('/')}/collections/{quote(collection_id, safe='')}"
    return f"{path}/{TILE_MATRIX_SET}/map.html{_query(_mosaic_params(sample_item))}"


def collection_tile_url(
    tiler_url: str,
    collection_id: str,
    z: int,
    x: int,
    y: int,
    sample_item: Mapping[str, Any] | None = None,
) -> str:
    """One PNG tile of the collection's mosaic, as its map viewer requests it."""
    path = f"{tiler_url.rstrip('/')}/collections/{quote(collection_id, safe='')}"
    tile = f"tiles/{TILE_MATRIX_SET}/{z}/{x}/{y}.png"
    return f"{path}/{tile}{_query(_mosaic_params(sample_item))}"
