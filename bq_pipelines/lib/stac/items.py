"""STAC items: built from a COG (its grid, bands and file), planned before the COG exists, and
their data and thumbnail assets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
from pystac.extensions.file import FileExtension
from pystac.utils import datetime_to_str

from bq_pipelines.lib.stac.bands import band_objects, raster_bands
from bq_pipelines.lib.stac.extensions import (
    CLASSIFICATION_SCHEMA,
    PROJECTION_SCHEMA,
    RASTER_SCHEMA,
    multihash_sha256,
)
from bq_pipelines.lib.stac.grid import grid_fields

# The legacy API fills these from its own arguments; here they come from build_item's.
TEMPORAL_KEYS = ("datetime", "start_datetime", "end_datetime")


@dataclass(frozen=True)
class ItemAssetSpec:
    """The COG asset of an item, keyed by the item id as in the legacy catalog (clients read
    `item.assets[item.id]`)."""

    href: str
    key: str
    title: str | None = None
    roles: tuple[str, ...] = ("data",)
    media_type: str = "image/tiff; application=geotiff; profile=cloud-optimized"


def _temporal_properties(
    datetime_: datetime | None, start: datetime | None, end: datetime | None
) -> dict[str, str]:
    if datetime_ is None and (start is None or end is None):
        raise ValueError("an item needs datetime_, or both start_datetime and end_datetime")
    if start is not None and end is not None and start > end:
        raise ValueError(f"start_datetime {start} is after end_datetime {end}")
    values = {"start_datetime": start, "end_datetime": end}
    return {key: datetime_to_str(value) for key, value in values.items() if value is not None}


def build_item(
    cog_path: Path,
    *,
    item_id: str,
    collection_id: str,
    datetime_: datetime | None,
    asset: ItemAssetSpec,
    properties: Mapping[str, Any] | None = None,
    start_datetime: datetime | None = None,
    end_datetime: datetime | None = None,
    file_size: int,
    file_sha256: str,
    raster_max_size: int = 1024,
    collection_href: str = "../collection.json",
    values: Sequence[np.ma.MaskedArray] | None = None,
) -> pystac.Item:
    """Item for one COG: the grid's footprint in WGS84 as geometry (densified, rotated grids
    included) and its bbox, projection, raster (statistics of valid pixels, unit, scale/offset,
    classification classes), band descriptions, file:size and file:checksum on the asset,
    `properties` merged.

    Deterministic: the same COG and arguments give the same item (no `created` timestamp).
    Legacy `properties` are kept verbatim, except datetime keys, which come from the arguments.
    `collection_href` defaults to where the static catalog puts the collection; STAC APIs
    rewrite item links anyway. `values`: the COG's bands as already read in memory (masked as
    `read(masked=True)` gives them), used for the statistics instead of reading the COG when
    those read it at full resolution.
    """
    temporal = _temporal_properties(datetime_, start_datetime, end_datetime)
    with rasterio.open(cog_path) as src:
        grid = grid_fields(src)
        bands = raster_bands(src, raster_max_size, values)
        descriptions = band_objects(src)
    item = pystac.Item(
        id=item_id,
        geometry=grid.footprint.geometry,
        bbox=list(grid.footprint.bbox),
        datetime=datetime_,
        properties={**grid.projection, **temporal, **_without_temporal(properties or {})},
        stac_extensions=_item_extensions(bands),
        collection=collection_id,
    )
    item.add_asset(asset.key, _cog_asset(asset, bands, descriptions))
    # The core item schema requires a `collection` link whenever `collection` is set.
    item.add_link(
        pystac.Link(pystac.RelType.COLLECTION, collection_href, media_type=pystac.MediaType.JSON)
    )
    _add_file_fields(item.assets[asset.key], file_size, file_sha256)
    return item


def _without_temporal(properties: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in properties.items() if k not in TEMPORAL_KEYS}


def _item_extensions(bands: Sequence[Mapping[str, Any]]) -> list[str]:
    extensions = [PROJECTION_SCHEMA, RASTER_SCHEMA]
    if any("classification:classes" in band for band in bands):
        extensions.append(CLASSIFICATION_SCHEMA)
    return extensions


def _cog_asset(
    asset: ItemAssetSpec, bands: list[dict[str, Any]], descriptions: list[dict[str, str]]
) -> pystac.Asset:
    fields: dict[str, Any] = {"raster:bands": bands}
    if descriptions:
        fields["bands"] = descriptions
    return pystac.Asset(
        href=asset.href,
        title=asset.title,
        media_type=asset.media_type,
        roles=list(asset.roles),
        extra_fields=fields,
    )


def _add_file_fields(asset: pystac.Asset, size: int, sha256: str) -> None:
    file_ext = FileExtension.ext(asset, add_if_missing=True)
    file_ext.size = size
    file_ext.checksum = multihash_sha256(sha256)


THUMBNAIL_ASSET = "thumbnail"
THUMBNAIL_TITLE = "Thumbnail"


def planned_item(
    *,
    item_id: str,
    collection_id: str,
    datetime_: datetime | None,
    start_datetime: datetime | None,
    end_datetime: datetime | None,
    properties: Mapping[str, Any],
    asset: ItemAssetSpec,
    thumbnail_href: str | None,
) -> dict[str, Any]:
    """What `build_item` (and `add_thumbnail`) will publish of these arguments, before the COG
    exists: no geometry, projection, raster or file fields, which come from the data."""
    temporal: dict[str, Any] = {"datetime": datetime_to_str(datetime_) if datetime_ else None}
    temporal |= _temporal_properties(datetime_, start_datetime, end_datetime)
    assets: dict[str, Any] = {asset.key: _asset_fields(asset)}
    if thumbnail_href is not None:
        assets[THUMBNAIL_ASSET] = {
            "href": thumbnail_href,
            "type": "image/png",
            "title": THUMBNAIL_TITLE,
            "roles": [THUMBNAIL_ASSET],
        }
    return {
        "type": "Feature",
        "stac_version": pystac.get_stac_version(),
        "id": item_id,
        "collection": collection_id,
        "properties": {
            **temporal,
            **_without_temporal(properties),
        },
        "assets": assets,
    }


def _asset_fields(asset: ItemAssetSpec) -> dict[str, Any]:
    fields: dict[str, Any] = {"href": asset.href, "type": asset.media_type}
    if asset.title is not None:
        fields["title"] = asset.title
    fields["roles"] = list(asset.roles)
    return fields


def data_asset(item: pystac.Item | Mapping[str, Any]) -> Mapping[str, Any]:
    """The item's COG asset (keyed by the item id); KeyError naming the item otherwise."""
    document = item_document(item)
    assets = document.get("assets") or {}
    item_id = document.get("id")
    if item_id not in assets:
        raise KeyError(f"item {item_id!r} has no asset keyed by its id (its COG)")
    asset: Mapping[str, Any] = assets[item_id]
    return asset


def add_thumbnail(item: pystac.Item, href: str, *, size: int, sha256: str) -> None:
    """The item's `thumbnail` asset: a PNG (roles ["thumbnail"]) with its file:size and
    file:checksum, so that integrity checks compare it with the store like the COG."""
    asset = pystac.Asset(
        href=href, title=THUMBNAIL_TITLE, media_type="image/png", roles=[THUMBNAIL_ASSET]
    )
    item.add_asset(THUMBNAIL_ASSET, asset)
    _add_file_fields(item.assets[THUMBNAIL_ASSET], size, sha256)


def item_document(item: pystac.Item | Mapping[str, Any]) -> Mapping[str, Any]:
    """The item as its JSON document (a mapping is one already)."""
    if isinstance(item, pystac.Item):
        return item.to_dict(include_self_link=False, transform_hrefs=False)
    return item
