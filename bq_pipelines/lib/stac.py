"""STAC items and collections: built with rasterio and pystac, validated offline.

Validation is always offline: the schemas ship in the package (`stac_schemas/`, see its README);
a folder given by the caller (BQ_STAC_SCHEMAS_DIR) adds to them. Compiled with jsonschema-rs.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema_rs
import numpy as np
import pystac
import rasterio
from affine import Affine
from pystac.extensions.file import FileExtension
from pystac.utils import datetime_to_str, str_to_datetime
from pystac.validation.local_validator import get_local_schema_cache
from pystac.validation.schema_uri_map import DefaultSchemaUriMap
from rasterio.crs import CRS
from rasterio.io import DatasetReader

from bq_pipelines.lib import georef
from bq_pipelines.lib.categories import CLASSES_TAG
from bq_pipelines.lib.errors import StacValidationError

logger = logging.getLogger(__name__)

# Versions pinned to what the offline schema folder holds. Projection v1.2.0: the legacy catalog's
# items carry `proj:epsg`, which clients read; v1.2.0 has it beside `proj:code` ("EPSG:4326"),
# while v2.0.0 forbids it. Raster stays at v1.1.0: v2.0.0 drops raster:bands.
PROJECTION_SCHEMA = "https://stac-extensions.github.io/projection/v1.2.0/schema.json"
RASTER_SCHEMA = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
FILE_SCHEMA = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
EO_SCHEMA = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
# Category names of classified rasters. v1.1.0: v2.0.0 requires a `name` matching
# ^[0-9A-Za-z-_]+$ in every class, which free-text GDAL category names do not guarantee.
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"
ITEM_ASSETS_SCHEMA = "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json"

# Field prefix -> extension schema, to declare the extensions a collection's fields use.
_PREFIX_SCHEMAS = {
    "proj": PROJECTION_SCHEMA,
    "raster": RASTER_SCHEMA,
    "file": FILE_SCHEMA,
    "eo": EO_SCHEMA,
    "classification": CLASSIFICATION_SCHEMA,
}

# raster v1.1 names of numpy's complex types (the real ones are the same).
_RASTER_DATA_TYPES = {
    "complex_int16": "cint16",
    "complex64": "cfloat32",
    "complex128": "cfloat64",
}

# The legacy API fills these from its own arguments; here they come from build_item's.
_TEMPORAL_KEYS = ("datetime", "start_datetime", "end_datetime")
GLOBAL_BBOX = [-180.0, -90.0, 180.0, 90.0]


@dataclass(frozen=True)
class ItemAssetSpec:
    """The COG asset of an item, keyed by the item id as in the legacy catalog (clients read
    `item.assets[item.id]`)."""

    href: str
    key: str
    title: str | None = None
    roles: tuple[str, ...] = ("data",)
    media_type: str = "image/tiff; application=geotiff; profile=cloud-optimized"


def multihash_sha256(sha256_hex: str) -> str:
    """`file:checksum` value: multihash (0x12 0x20 prefix) of a sha256 hex digest."""
    digest = sha256_hex.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"not a sha256 hex digest (64 hex digits): {sha256_hex!r}")
    return "1220" + digest


# ---------------------------------------------------------------------------- items


def _temporal_properties(
    datetime_: datetime | None, start: datetime | None, end: datetime | None
) -> dict[str, str]:
    if datetime_ is None and (start is None or end is None):
        raise ValueError("an item needs datetime_, or both start_datetime and end_datetime")
    if start is not None and end is not None and start > end:
        raise ValueError(f"start_datetime {start} is after end_datetime {end}")
    values = {"start_datetime": start, "end_datetime": end}
    return {key: datetime_to_str(value) for key, value in values.items() if value is not None}


@dataclass(frozen=True)
class _GridFields:
    """What an item says of its grid: the same for every COG on one grid (every band of a
    cube), so worked out once per grid and copied into each item."""

    footprint: georef.Footprint
    projection: dict[str, Any]


def _grid_fields(src: DatasetReader) -> _GridFields:
    if src.crs is None:
        raise ValueError(f"{src.name}: the COG has no CRS, an item needs a footprint")
    cached = _grid_fields_of(
        src.crs.to_wkt(), tuple(src.transform), src.width, src.height, tuple(src.bounds)
    )
    return copy.deepcopy(cached)  # the item owns (and may edit) its geometry and fields


@functools.lru_cache(maxsize=64)
def _grid_fields_of(
    wkt: str,
    transform: tuple[float, ...],
    width: int,
    height: int,
    bounds: tuple[float, float, float, float],
) -> _GridFields:
    crs, affine = CRS.from_wkt(wkt), Affine(*transform[:6])
    return _GridFields(
        georef.footprint_wgs84(crs, affine, width, height),
        _projection_properties(crs, affine, width, height, bounds),
    )


def _projection_properties(
    crs: CRS, transform: Affine, width: int, height: int, bounds: Sequence[float]
) -> dict[str, Any]:
    """Projection v1.2 fields. `proj:epsg` (the legacy field, an integer) and `proj:code` only
    for an exact EPSG match; any other CRS gets null ones with WKT2 and PROJJSON, so clients can
    still reconstruct it."""
    epsg = georef.exact_epsg(crs)
    fields: dict[str, Any] = {
        "proj:epsg": epsg,
        "proj:code": f"EPSG:{epsg}" if epsg is not None else None,
    }
    if epsg is None:
        fields["proj:wkt2"] = crs.to_wkt(version="WKT2_2019")
        fields["proj:projjson"] = crs.to_dict(projjson=True)
    corners = georef.outline(transform, width, height, densify=0)
    fields.update(
        {
            "proj:bbox": list(bounds),
            # The grid's own quadrilateral: a rotated grid is not its envelope.
            "proj:geometry": {"type": "Polygon", "coordinates": [[list(p) for p in corners]]},
            "proj:shape": [height, width],
            "proj:transform": list(transform),
        }
    )
    return fields


def _sample_shape(height: int, width: int, max_size: int) -> tuple[int, int]:
    """The decimated shape statistics are read from (rio-stac's rule)."""
    if not max_size or max(width, height) <= max_size:
        return height, width
    ratio = height / width
    if ratio > 1:
        return max_size, math.ceil(max_size / ratio)
    return math.ceil(max_size * ratio), max_size


def _statistics(values: np.ma.MaskedArray) -> dict[str, float]:
    """Statistics of the valid pixels: nodata, masked and NaN/inf pixels are not counted, so a
    warped raster's filled margins never weigh in valid_percent or the mean."""
    valid = np.ma.fix_invalid(values)
    count = int(valid.count())
    statistics: dict[str, float] = {"valid_percent": count / valid.size * 100 if valid.size else 0}
    if count:
        statistics.update(
            minimum=valid.min().item(),
            maximum=valid.max().item(),
            mean=float(valid.mean()),
            stddev=float(valid.std()),
        )
    return statistics


def _nodata_value(nodata: float, dtype: str) -> float | int | str:
    if math.isnan(nodata):
        return "nan"
    if math.isinf(nodata):
        return "inf" if nodata > 0 else "-inf"
    return int(nodata) if np.dtype(dtype).kind in "iu" else nodata


def _band_classes(src: DatasetReader, band: int) -> list[dict[str, Any]]:
    """The band's classification classes, as to_cog stored them (CLASSES_TAG)."""
    text = src.tags(band).get(CLASSES_TAG)
    if not text:
        return []
    try:
        classes = json.loads(text)
    except json.JSONDecodeError:
        logger.warning("%s band %d: %s is not JSON, classes ignored", src.name, band, CLASSES_TAG)
        return []
    if not isinstance(classes, list) or not all(
        isinstance(c, dict)
        and isinstance(c.get("value"), int)
        and isinstance(c.get("description"), str)
        for c in classes
    ):
        logger.warning(
            "%s band %d: %s is not a list of classes, ignored", src.name, band, CLASSES_TAG
        )
        return []
    return classes


def _is_class(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("value"), int)
        and isinstance(value.get("description"), str)
    )


def _raster_bands(
    src: DatasetReader, max_size: int, values: Sequence[np.ma.MaskedArray] | None = None
) -> list[dict[str, Any]]:
    """raster:bands (v1.1): data type, nodata, unit, scale/offset, statistics of the valid
    pixels of a decimated read, and the classes of categorical bands. No histograms: nobody reads
    them and they would weigh on 200k-item collections.

    `values` (each band as `src.read(masked=True)` gives it) spare reading the bands again when
    the statistics read them at full resolution."""
    shape = _sample_shape(src.height, src.width, max_size)
    if values is not None and (len(values) != src.count or any(v.shape != shape for v in values)):
        values = None  # decimated (from the overviews), or not these bands: read them
    sampling = src.tags().get("AREA_OR_POINT", "").lower()
    bands = []
    for index, dtype in zip(src.indexes, src.dtypes, strict=True):
        band: dict[str, Any] = {
            "data_type": _RASTER_DATA_TYPES.get(dtype, dtype),
            # As the legacy items had it: the pixel width, in the CRS's units.
            "spatial_resolution": src.res[0],
            "scale": src.scales[index - 1],
            "offset": src.offsets[index - 1],
        }
        if sampling in ("area", "point"):
            band["sampling"] = sampling
        nodata = src.nodatavals[index - 1]
        if nodata is not None:
            band["nodata"] = _nodata_value(nodata, dtype)
        if src.units[index - 1]:
            band["unit"] = src.units[index - 1]
        band_values = (
            values[index - 1]
            if values is not None
            else src.read(index, out_shape=shape, masked=True)
        )
        band["statistics"] = _statistics(band_values)
        classes = _band_classes(src, index)
        if classes:
            band["classification:classes"] = classes
        bands.append(band)
    return bands


def _band_objects(src: DatasetReader) -> list[dict[str, str]]:
    """STAC 1.1 `bands` with each band's description, when the raster describes its bands."""
    if not any(src.descriptions):
        return []
    return [
        {"name": f"b{index}", **({"description": text} if text else {})}
        for index, text in zip(src.indexes, src.descriptions, strict=True)
    ]


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
        grid = _grid_fields(src)
        footprint, projection = grid.footprint, grid.projection
        raster_bands = _raster_bands(src, raster_max_size, values)
        band_objects = _band_objects(src)
    item_properties: dict[str, Any] = {
        **projection,
        **temporal,
        **{k: v for k, v in (properties or {}).items() if k not in _TEMPORAL_KEYS},
    }
    extensions = [PROJECTION_SCHEMA, RASTER_SCHEMA]
    if any("classification:classes" in band for band in raster_bands):
        extensions.append(CLASSIFICATION_SCHEMA)
    item = pystac.Item(
        id=item_id,
        geometry=footprint.geometry,
        bbox=list(footprint.bbox),
        datetime=datetime_,
        properties=item_properties,
        stac_extensions=extensions,
        collection=collection_id,
    )
    asset_fields: dict[str, Any] = {"raster:bands": raster_bands}
    if band_objects:
        asset_fields["bands"] = band_objects
    item.add_asset(
        asset.key,
        pystac.Asset(
            href=asset.href,
            title=asset.title,
            media_type=asset.media_type,
            roles=list(asset.roles),
            extra_fields=asset_fields,
        ),
    )
    # The core item schema requires a `collection` link whenever `collection` is set.
    item.add_link(
        pystac.Link(pystac.RelType.COLLECTION, collection_href, media_type=pystac.MediaType.JSON)
    )
    file_ext = FileExtension.ext(item.assets[asset.key], add_if_missing=True)
    file_ext.size = file_size
    file_ext.checksum = multihash_sha256(file_sha256)
    return item


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
            **{k: v for k, v in properties.items() if k not in _TEMPORAL_KEYS},
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
    document = _as_dict(item)
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
    file_ext = FileExtension.ext(item.assets[THUMBNAIL_ASSET], add_if_missing=True)
    file_ext.size = size
    file_ext.checksum = multihash_sha256(sha256)


# ---------------------------------------------------------------------- item content


def _band_statistics(item: pystac.Item | Mapping[str, Any]) -> list[Mapping[str, Any]]:
    assets = _as_dict(item).get("assets", {})
    return [
        band.get("statistics", {})
        for asset in assets.values()
        for band in asset.get("raster:bands", [])
    ]


def nodata_only(item: pystac.Item | Mapping[str, Any], cog_path: Path) -> str | None:
    """Why an item describes no data at all (every pixel of every band nodata, masked or NaN),
    or None. The item's statistics come from a decimated read: when they say 0 % valid, the
    full-resolution COG is read (until its first valid pixel) before an item is refused."""
    statistics = _band_statistics(item)
    if not statistics or any(s.get("valid_percent", 100) > 0 for s in statistics):
        return None
    if _has_valid_pixel(cog_path):
        return None
    return "every pixel of every band is nodata, masked or NaN (valid_percent 0)"


def constant_values(item: pystac.Item | Mapping[str, Any]) -> str | None:
    """A warning when every band holds one value (minimum == maximum in the item's
    statistics), or None. Not an error: a mask of ones is constant, and legitimate."""
    statistics = _band_statistics(item)
    if not statistics or any(
        "minimum" not in s or s["minimum"] != s.get("maximum") for s in statistics
    ):
        return None
    values = ", ".join(f"{s['minimum']:g}" for s in statistics)
    return f"every valid pixel holds the same value in each band ({values})"


def _has_valid_pixel(cog_path: Path) -> bool:
    with rasterio.open(cog_path) as src:
        for _, window in src.block_windows(1):
            values = np.ma.fix_invalid(src.read(window=window, masked=True))
            if values.count():
                return True
    return False


# ---------------------------------------------------------------------- collections


def _as_dict(item: pystac.Item | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(item, pystac.Item):
        return item.to_dict(include_self_link=False, transform_hrefs=False)
    return item


def _item_times(properties: Mapping[str, Any]) -> list[datetime]:
    return [str_to_datetime(properties[key]) for key in _TEMPORAL_KEYS if properties.get(key)]


def union_extent(items: Iterable[pystac.Item | Mapping[str, Any]]) -> pystac.Extent:
    bbox: list[float] | None = None
    times: list[datetime] = []
    for item in items:
        item_dict = _as_dict(item)
        item_bbox = item_dict.get("bbox")
        if item_bbox:
            # 3D bboxes carry six numbers: the horizontal ones are the first and fourth pairs.
            half = len(item_bbox) // 2
            west, south, east, north = (
                item_bbox[0],
                item_bbox[1],
                item_bbox[half],
                item_bbox[half + 1],
            )
            if bbox is None:
                bbox = [west, south, east, north]
            else:
                bbox = [
                    min(bbox[0], west),
                    min(bbox[1], south),
                    max(bbox[2], east),
                    max(bbox[3], north),
                ]
        times.extend(_item_times(item_dict.get("properties", {})))
    spatial = pystac.SpatialExtent([bbox or GLOBAL_BBOX])
    # An open interval [[null, null]] is valid in STAC 1.1 (both ends may be null).
    interval: list[datetime | None] = [min(times), max(times)] if times else [None, None]
    return pystac.Extent(spatial, pystac.TemporalExtent([interval]))


def grown_extent(
    collection: Mapping[str, Any], items: Iterable[pystac.Item | Mapping[str, Any]]
) -> dict[str, Any]:
    """The collection's extent (a dict) grown to cover `items`, for adding items one at a time
    without reading the others. The overall (first) bbox and interval grow; an open end of the
    interval stays open. The placeholder extent of a collection built before any item (global,
    [null, null]) is replaced by the items' own."""
    extent = dict(collection.get("extent") or {})
    added = union_extent(items).to_dict()
    intervals = list(extent.get("temporal", {}).get("interval") or [])
    bboxes = list(extent.get("spatial", {}).get("bbox") or [])
    if not intervals or not bboxes or intervals[0] == [None, None]:
        return {**extent, **added}
    [new_bbox] = added["spatial"]["bbox"]
    old = bboxes[0]
    half = len(old) // 2
    bboxes[0] = [
        min(old[0], new_bbox[0]),
        min(old[1], new_bbox[1]),
        max(old[half], new_bbox[2]),
        max(old[half + 1], new_bbox[3]),
    ]
    [[new_start, new_end]] = added["temporal"]["interval"]
    start, end = intervals[0]
    # The stored texts are kept unless the item moves them: unchanged extents compare equal.
    if start is not None and new_start is not None:
        start = new_start if str_to_datetime(new_start) < str_to_datetime(start) else start
    if end is not None and new_end is not None:
        end = new_end if str_to_datetime(new_end) > str_to_datetime(end) else end
    intervals[0] = [start, end]
    return {**extent, "spatial": {"bbox": bboxes}, "temporal": {"interval": intervals}}


def _extensions_for(fields: Iterable[str]) -> list[str]:
    prefixes = {key.split(":", 1)[0] for key in fields if ":" in key}
    return [schema for prefix, schema in _PREFIX_SCHEMAS.items() if prefix in prefixes]


def build_collection(
    *,
    collection_id: str,
    title: str,
    description: str,
    license_: str,
    items: Iterable[pystac.Item | Mapping[str, Any]] = (),
    extent: pystac.Extent | None = None,
    providers: Sequence[Mapping[str, Any]] = (),
    keywords: Sequence[str] = (),
    summaries: Mapping[str, Any] | None = None,
    item_assets: Mapping[str, Any] | None = None,
    extra_fields: Mapping[str, Any] | None = None,
) -> pystac.Collection:
    """Collection whose spatial/temporal extent is `extent`, or else the union of its items' (a
    global, open extent when there are none yet)."""
    used_fields: list[str] = list(summaries or {})
    for definition in (item_assets or {}).values():
        used_fields.extend(definition)
    extensions = _extensions_for(used_fields)
    fields = dict(extra_fields or {})
    if item_assets:
        # STAC 1.1 made item_assets core; the extension is still declared for 1.0 clients.
        fields["item_assets"] = {key: dict(value) for key, value in item_assets.items()}
        extensions.append(ITEM_ASSETS_SCHEMA)
    return pystac.Collection(
        id=collection_id,
        title=title,
        description=description,
        license=license_,
        extent=extent if extent is not None else union_extent(items),
        providers=[pystac.Provider.from_dict(dict(p)) for p in providers] or None,
        keywords=list(keywords) or None,
        summaries=pystac.Summaries(dict(summaries)) if summaries else None,
        stac_extensions=extensions,
        extra_fields=fields,
    )


def summarize_properties(
    items: Iterable[pystac.Item | Mapping[str, Any]], names: Sequence[str]
) -> dict[str, Any]:
    """STAC summaries of item properties: a range for numbers, sorted distinct values else."""
    values: dict[str, list[Any]] = {name: [] for name in names}
    for item in items:
        properties = item.properties if isinstance(item, pystac.Item) else item["properties"]
        for name in names:
            if name in properties:
                values[name].append(properties[name])
    return summarize_values(values)


def summarize_values(values: Mapping[str, Iterable[Any]]) -> dict[str, Any]:
    """STAC summaries of the values each property takes (`summarize_properties`'s rule, for
    values gathered elsewhere, e.g. by a database): a range when every value is a number, the
    sorted distinct values otherwise; null, boolean and structured values are ignored."""
    summaries: dict[str, Any] = {}
    for name, taken in values.items():
        seen = {v for v in taken if isinstance(v, str | int | float) and not isinstance(v, bool)}
        if seen and all(isinstance(v, int | float) for v in seen):
            summaries[name] = {"minimum": min(seen), "maximum": max(seen)}
        elif seen:
            summaries[name] = sorted(seen, key=str)
    return summaries


# ----------------------------------------------------------------------- validation


# Schemas shipped inside the package (see stac_schemas/README.md), laid out like the override
# folder: `<name>/<version>/schema.json`, and PROJ's `proj/<version>/projjson.schema.json`.
SHIPPED_SCHEMAS = "stac_schemas"
_PROJJSON_FILE = "projjson.schema.json"
_PROJJSON_SHIPPED_VERSION = "v0.7"
_MAX_MESSAGE_CHARS = 300


@dataclass(frozen=True)
class _SchemaSet:
    """Every schema validation may use, by URL, and the compiled-reference registry over them."""

    schemas: Mapping[str, dict[str, Any]]
    registry: jsonschema_rs.Registry
    origin: str  # where they come from, for error messages


def _schema_url(relative: PurePosixPath) -> str | None:
    """The published URL of a schema file, from its path in a schemas folder."""
    parts = relative.parts
    if len(parts) != 3:
        return None
    name, version, file_name = parts
    if name == "proj" and file_name == _PROJJSON_FILE:
        return f"https://proj.org/schemas/{version}/{_PROJJSON_FILE}"
    if file_name == "schema.json":
        return f"https://stac-extensions.github.io/{name}/{version}/schema.json"
    return None


def _folder_schemas(folder: Traversable) -> dict[str, dict[str, Any]]:
    """Every schema file of a folder laid out `<name>/<version>/<file>`, by published URL."""
    schemas: dict[str, dict[str, Any]] = {}
    for name in folder.iterdir():
        if not name.is_dir():
            continue
        for version in name.iterdir():
            if not version.is_dir():
                continue
            for file in version.iterdir():
                url = _schema_url(PurePosixPath(name.name, version.name, file.name))
                if url is None or not file.is_file():
                    continue
                try:
                    schemas[url] = json.loads(file.read_text(encoding="utf-8"))
                except ValueError as error:
                    raise StacValidationError(f"STAC schema {file} is not JSON: {error}") from error
    return schemas


def _projjson_aliases(schemas: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    # The projection extension's versions cite PROJJSON v0.2 to v0.7; PROJ publishes only its
    # newest schema, a superset of the older ones for what GDAL writes.
    newest = schemas[f"https://proj.org/schemas/{_PROJJSON_SHIPPED_VERSION}/{_PROJJSON_FILE}"]
    return {
        f"https://proj.org/schemas/v0.{minor}/{_PROJJSON_FILE}": newest for minor in range(2, 7)
    }


def _offline_only(uri: str) -> Any:
    raise LookupError(f"{uri} is not among the offline STAC schemas")


@functools.cache
def _schema_set(override: Path | None) -> _SchemaSet:
    """Core schemas (pystac's), the shipped ones, then the override folder's on top."""
    shipped = _folder_schemas(importlib.resources.files("bq_pipelines.lib") / SHIPPED_SCHEMAS)
    schemas = {**get_local_schema_cache(), **_projjson_aliases(shipped), **shipped}
    origin = "the schemas shipped in bq_pipelines/lib/stac_schemas"
    if override is not None:
        schemas.update(_folder_schemas(override))
        origin += f" and {override}"
    try:
        registry = jsonschema_rs.Registry(list(schemas.items()), retriever=_offline_only)
    except ValueError as error:
        raise StacValidationError(f"STAC schemas ({origin}): {error}") from error
    return _SchemaSet(schemas, registry, origin)


@functools.cache
def _validator(uri: str, override: Path | None) -> jsonschema_rs.Validator:
    # Compiled once per schema: compilation costs far more than a validation.
    schema_set = _schema_set(override)
    schema = schema_set.schemas.get(uri)
    if schema is None:
        raise StacValidationError(
            f"schema {uri} is not available offline (looked in {schema_set.origin}); put it in "
            "BQ_STAC_SCHEMAS_DIR as <name>/<version>/schema.json, or drop the extension"
        )
    try:
        return jsonschema_rs.validator_for(
            schema, registry=schema_set.registry, validate_formats=True, offline=True
        )
    except ValueError as error:
        raise StacValidationError(f"schema {uri} cannot be compiled offline: {error}") from error


def _core_schema_uri(stac_dict: Mapping[str, Any]) -> str:
    object_type = pystac.serialization.identify_stac_object_type(dict(stac_dict))
    if object_type is None:
        raise StacValidationError(f"{stac_dict.get('id')!r} is not a STAC item/collection/catalog")
    version = str(stac_dict.get("stac_version", pystac.get_stac_version()))
    uri = DefaultSchemaUriMap().get_object_schema_uri(object_type, version)
    if uri is None:
        raise StacValidationError(f"no core schema for STAC {version} {object_type}")
    return uri


def _most_specific(error: jsonschema_rs.ValidationError) -> jsonschema_rs.ValidationError:
    """The deepest error under anyOf/oneOf branches.

    Extension schemas are `oneOf` an item shape and a collection shape: the error worth reading
    is the failing field inside the branch that matched the object's type, which is the one
    deepest in the instance.
    """
    branches = getattr(error.kind, "context", None) or []
    candidates = [_most_specific(inner) for branch in branches for inner in branch]
    if not candidates:
        return error
    return max(candidates, key=lambda inner: len(inner.instance_path))


def _field_path(error: jsonschema_rs.ValidationError) -> str:
    return "/" + "/".join(str(part) for part in error.instance_path)


def _check_against(stac_dict: Mapping[str, Any], uri: str, override: Path | None) -> None:
    try:
        validator = _validator(uri, override)
    except StacValidationError as error:
        raise StacValidationError(
            f"{stac_dict.get('type')} {stac_dict.get('id')!r}: {error}"
        ) from error
    # `is_valid` stops at the first failure and builds no error: the readable error is worked
    # out only for an object that fails. Tuples are read as arrays, as a JSON writer writes them.
    try:
        if validator.is_valid(stac_dict):
            return
        first = next(validator.iter_errors(stac_dict), None)
    except ValueError as error:  # e.g. a datetime object where the schema expects a string
        raise StacValidationError(
            f"{stac_dict.get('type')} {stac_dict.get('id')!r} holds a value with no JSON form: "
            f"{error}"
        ) from error
    if first is None:
        return
    specific = _most_specific(first)
    message = specific.message
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[:_MAX_MESSAGE_CHARS] + "..."
    raise StacValidationError(
        f"{stac_dict.get('type')} {stac_dict.get('id')!r} fails schema {uri} at "
        f"{_field_path(specific)}: {message}"
    )


def validate(
    stac_object: pystac.STACObject | Mapping[str, Any], schemas_dir: Path | None = None
) -> None:
    """Validate against the core schema and every extension schema the object declares, offline.

    Raises StacValidationError naming the object id, the schema, the failing field and the
    reason. `schemas_dir` (BQ_STAC_SCHEMAS_DIR) adds schemas to the shipped ones, or replaces
    them; it is read once per process. A schema found nowhere is an error, never a download.
    """
    if isinstance(stac_object, pystac.STACObject):
        stac_dict: Mapping[str, Any] = stac_object.to_dict(
            include_self_link=False, transform_hrefs=False
        )
    else:
        stac_dict = stac_object
    if schemas_dir is not None and not schemas_dir.is_dir():
        raise StacValidationError(f"STAC schemas folder {schemas_dir} does not exist")
    override = schemas_dir.resolve() if schemas_dir is not None else None
    for uri in [_core_schema_uri(stac_dict), *stac_dict.get("stac_extensions", [])]:
        _check_against(stac_dict, uri, override)
    logger.debug("%s %r is valid", stac_dict.get("type"), stac_dict.get("id"))
