"""STAC items and collections: built with rio-stac and pystac, validated offline.

Validation reads extension schemas from a local folder when one is configured
(BQ_STAC_SCHEMAS_DIR, laid out `<name>/<version>/schema.json`) and falls back to fetching.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema.exceptions
import jsonschema.validators
import numpy as np
import pystac
import pystac.validation
import rasterio
from pystac.extensions.file import FileExtension
from pystac.utils import datetime_to_str, str_to_datetime
from pystac.validation.local_validator import get_local_schema_cache
from pystac.validation.schema_uri_map import DefaultSchemaUriMap
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable
from rio_stac import create_stac_item

from bq_pipelines.lib.errors import StacValidationError

logger = logging.getLogger(__name__)

SCHEMAS_DIR_ENV = "BQ_STAC_SCHEMAS_DIR"

# Versions pinned to what pystac 1.15 writes and what the offline schema folder holds.
# Projection v2.0.0 replaced proj:epsg by proj:code ("EPSG:4326"); rio-stac 0.12 still writes
# v1.1.0, so its output is upgraded below. Raster stays at v1.1.0: v2.0.0 drops raster:bands.
PROJECTION_SCHEMA = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER_SCHEMA = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"
FILE_SCHEMA = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
EO_SCHEMA = "https://stac-extensions.github.io/eo/v1.1.0/schema.json"
ITEM_ASSETS_SCHEMA = "https://stac-extensions.github.io/item-assets/v1.0.0/schema.json"

# Field prefix -> extension schema, to declare the extensions a collection's fields use.
_PREFIX_SCHEMAS = {
    "proj": PROJECTION_SCHEMA,
    "raster": RASTER_SCHEMA,
    "file": FILE_SCHEMA,
    "eo": EO_SCHEMA,
}

_EXTENSION_URL = re.compile(
    r"^https://stac-extensions\.github\.io/(?P<name>[\w-]+)/(?P<version>v[\w.-]+)/schema\.json$"
)
_PROJJSON_URL = re.compile(r"^https://proj\.org/schemas/v[\d.]+/projjson\.schema\.json$")
# The legacy API fills these from its own arguments; here they come from build_item's.
_TEMPORAL_KEYS = ("datetime", "start_datetime", "end_datetime")
GLOBAL_BBOX = [-180.0, -90.0, 180.0, 90.0]


@dataclass(frozen=True)
class ItemAssetSpec:
    """The COG asset of an item."""

    href: str
    key: str = "data"
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


def _projection_properties(cog_path: Path, rio_properties: Mapping[str, Any]) -> dict[str, Any]:
    """rio-stac's projection v1.1 fields rewritten for projection v2.0.

    rio-stac writes GDAL's WKT1 under `proj:wkt2`; a CRS without an EPSG code gets a real WKT2
    and PROJJSON instead, so clients can still reconstruct it.
    """
    fields = {k: v for k, v in rio_properties.items() if k.startswith("proj:")}
    epsg = fields.pop("proj:epsg", None)
    fields.pop("proj:wkt2", None)
    fields.pop("proj:projjson", None)
    fields["proj:code"] = f"EPSG:{epsg}" if epsg else None
    if not epsg:
        with rasterio.open(cog_path) as src:
            if src.crs is not None:
                fields["proj:wkt2"] = src.crs.to_wkt(version="WKT2_2019")
                fields["proj:projjson"] = src.crs.to_dict(projjson=True)
    return fields


def _sample_shape(height: int, width: int, max_size: int) -> tuple[int, int]:
    """The decimated shape rio-stac reads statistics from (same rule as get_raster_info)."""
    if not max_size or max(width, height) <= max_size:
        return height, width
    ratio = height / width
    if ratio > 1:
        return max_size, math.ceil(max_size / ratio)
    return math.ceil(max_size * ratio), max_size


def _valid_percents(cog_path: Path, max_size: int) -> list[float]:
    """Percent of valid pixels per band.

    rio-stac 0.12 counts `~mask` of a masked array whose mask is the scalar `nomask` when no
    pixel is masked, reporting one valid pixel (0.0017%) for rasters without nodata.
    """
    with rasterio.open(cog_path) as src:
        shape = _sample_shape(src.height, src.width, max_size)
        percents = []
        for band in src.indexes:
            values = np.ma.fix_invalid(src.read(band, out_shape=shape, masked=True))
            valid = np.count_nonzero(~np.ma.getmaskarray(values))
            percents.append(float(valid / values.size * 100))
    return percents


def _raster_bands(asset: pystac.Asset, valid_percents: Sequence[float]) -> list[dict[str, Any]]:
    # Histograms are dropped: nobody reads them and they would weigh on 200k-item collections.
    bands = asset.extra_fields.get("raster:bands", [])
    cleaned = []
    for band, valid_percent in zip(bands, valid_percents, strict=True):
        band = {k: v for k, v in band.items() if k != "histogram"}
        band["statistics"] = {**band.get("statistics", {}), "valid_percent": valid_percent}
        cleaned.append(band)
    return cleaned


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
) -> pystac.Item:
    """Item for one COG: geometry/bbox in WGS84, projection, raster (with statistics and
    histogram-free band info), file:size and file:checksum on the asset, `properties` merged.

    Deterministic: the same COG and arguments give the same item (no `created` timestamp).
    Legacy `properties` are kept verbatim, except datetime keys, which come from the arguments.
    `collection_href` defaults to where the static catalog puts the collection; STAC APIs
    rewrite item links anyway.
    """
    temporal = _temporal_properties(datetime_, start_datetime, end_datetime)
    # rio-stac falls back to the TIFF date tag or now() when no datetime is given: passing
    # start/end here keeps a range item free of both.
    rio_item = create_stac_item(
        str(cog_path),
        input_datetime=datetime_,
        id=item_id,
        collection=collection_id,
        properties=dict(temporal),
        asset_name=asset.key,
        asset_href=asset.href,
        asset_roles=list(asset.roles),
        asset_media_type=asset.media_type,
        with_proj=True,
        with_raster=True,
        with_eo=False,
        raster_max_size=raster_max_size,
        # GDAL's own choice: edges of projected rasters curve in WGS84, corners alone would
        # give a bbox smaller than the footprint.
        geom_densify_pts=21,
    )
    rio_asset = rio_item.assets[asset.key]
    item_properties: dict[str, Any] = {
        **_projection_properties(cog_path, rio_item.properties),
        **temporal,
        **{k: v for k, v in (properties or {}).items() if k not in _TEMPORAL_KEYS},
    }
    item = pystac.Item(
        id=item_id,
        geometry=rio_item.geometry,
        bbox=rio_item.bbox,
        datetime=datetime_,
        properties=item_properties,
        stac_extensions=[PROJECTION_SCHEMA, RASTER_SCHEMA],
        collection=collection_id,
    )
    item.add_asset(
        asset.key,
        pystac.Asset(
            href=asset.href,
            title=asset.title,
            media_type=asset.media_type,
            roles=list(asset.roles),
            extra_fields={
                "raster:bands": _raster_bands(rio_asset, _valid_percents(cog_path, raster_max_size))
            },
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


# ---------------------------------------------------------------------- collections


def _as_dict(item: pystac.Item | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(item, pystac.Item):
        return item.to_dict(include_self_link=False, transform_hrefs=False)
    return item


def _item_times(properties: Mapping[str, Any]) -> list[datetime]:
    return [str_to_datetime(properties[key]) for key in _TEMPORAL_KEYS if properties.get(key)]


def _union_extent(items: Iterable[pystac.Item | Mapping[str, Any]]) -> pystac.Extent:
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
    interval = [min(times), max(times)] if times else [None, None]
    return pystac.Extent(spatial, pystac.TemporalExtent([interval]))


def grown_extent(
    collection: Mapping[str, Any], items: Iterable[pystac.Item | Mapping[str, Any]]
) -> dict[str, Any]:
    """The collection's extent (a dict) grown to cover `items`, for adding items one at a time
    without reading the others. The overall (first) bbox and interval grow; an open end of the
    interval stays open. The placeholder extent of a collection built before any item (global,
    [null, null]) is replaced by the items' own."""
    extent = dict(collection.get("extent") or {})
    added = _union_extent(items).to_dict()
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
    items: Iterable[pystac.Item | Mapping[str, Any]],
    providers: Sequence[Mapping[str, Any]] = (),
    keywords: Sequence[str] = (),
    summaries: Mapping[str, Any] | None = None,
    item_assets: Mapping[str, Any] | None = None,
    extra_fields: Mapping[str, Any] | None = None,
) -> pystac.Collection:
    """Collection whose spatial/temporal extent is the union of its items' (a global, open
    extent when there are none yet)."""
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
        extent=_union_extent(items),
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
    seen: dict[str, set[Any]] = {name: set() for name in names}
    for item in items:
        properties = item.properties if isinstance(item, pystac.Item) else item["properties"]
        for name in names:
            value = properties.get(name)
            if isinstance(value, str | int | float) and not isinstance(value, bool):
                seen[name].add(value)
    summaries: dict[str, Any] = {}
    for name, values in seen.items():
        if values and all(isinstance(v, int | float) for v in values):
            summaries[name] = {"minimum": min(values), "maximum": max(values)}
        elif values:
            summaries[name] = sorted(values, key=str)
    return summaries


# ----------------------------------------------------------------------- validation


@functools.cache
def _read_json(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


def _projjson_schema_path() -> Path:
    # PROJ's schema ships in rasterio's wheel; a source build of rasterio reads PROJ's data dir.
    bundled = importlib.resources.files("rasterio") / "proj_data" / "projjson.schema.json"
    if bundled.is_file():
        return Path(str(bundled))
    from pyproj.datadir import get_data_dir  # only present when rasterio isn't a wheel

    return Path(get_data_dir()) / "projjson.schema.json"


def _local_schema_path(uri: str, schemas_dir: Path) -> Path:
    """Where the offline copy of `uri` lives; StacValidationError when there is none."""
    if _PROJJSON_URL.match(uri):
        # The projection schemas cite PROJJSON v0.2-v0.7; PROJ ships only its newest, a
        # superset of the older ones for what GDAL writes.
        return _projjson_schema_path()
    match = _EXTENSION_URL.match(uri)
    if match is None:
        raise StacValidationError(
            f"schema {uri} is not a stac-extensions.github.io schema and cannot be resolved "
            f"offline from {schemas_dir}"
        )
    path = schemas_dir / match["name"] / match["version"] / "schema.json"
    if not path.is_file():
        raise StacValidationError(
            f"schema {uri} not found offline: expected {path} in {schemas_dir}; add "
            f"{match['name']}/{match['version']}/schema.json there or drop the extension"
        )
    return path


@functools.cache
def _core_schemas() -> dict[str, dict[str, Any]]:
    return get_local_schema_cache()


@functools.cache
def _registry(schemas_dir: Path) -> Registry:
    def retrieve(uri: str) -> Resource[Any]:
        try:
            return Resource.from_contents(_read_json(_local_schema_path(uri, schemas_dir)))
        except StacValidationError as error:
            raise NoSuchResource(ref=uri) from error

    core = [(uri, Resource.from_contents(schema)) for uri, schema in _core_schemas().items()]
    return Registry(retrieve=retrieve).with_resources(core)  # type: ignore[call-arg]


def _core_schema_uri(stac_dict: Mapping[str, Any]) -> str:
    object_type = pystac.serialization.identify_stac_object_type(dict(stac_dict))
    if object_type is None:
        raise StacValidationError(f"{stac_dict.get('id')!r} is not a STAC item/collection/catalog")
    version = str(stac_dict.get("stac_version", pystac.get_stac_version()))
    uri = DefaultSchemaUriMap().get_object_schema_uri(object_type, version)
    if uri is None:
        raise StacValidationError(f"no core schema for STAC {version} {object_type}")
    return uri


def _schema(uri: str, schemas_dir: Path) -> dict[str, Any]:
    core = _core_schemas()
    if uri in core:
        return core[uri]
    return _read_json(_local_schema_path(uri, schemas_dir))


@functools.cache
def _validator(uri: str, schemas_dir: Path) -> Any:
    # Built once per schema: re-creating validators was most of the cost of a validation.
    schema = _schema(uri, schemas_dir)
    validator_cls = jsonschema.validators.validator_for(schema)
    return validator_cls(
        schema, registry=_registry(schemas_dir), format_checker=validator_cls.FORMAT_CHECKER
    )


def _check_against(stac_dict: Mapping[str, Any], uri: str, schemas_dir: Path) -> None:
    validator = _validator(uri, schemas_dir)
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(stac_dict))
    except Unresolvable as unresolvable:
        raise StacValidationError(
            f"{stac_dict.get('id')!r}: schema {uri} references a schema not found offline in "
            f"{schemas_dir}: {unresolvable}"
        ) from unresolvable
    if error is not None:
        raise StacValidationError(
            f"{stac_dict.get('type')} {stac_dict.get('id')!r} fails schema {uri} at "
            f"{error.json_path}: {error.message}"
        ) from error


def _validate_online(stac_dict: dict[str, Any]) -> None:
    try:
        pystac.validation.validate_dict(stac_dict)
    except pystac.STACValidationError as error:
        raise StacValidationError(f"{stac_dict.get('id')!r}: {error}") from error


def validate(
    stac_object: pystac.STACObject | Mapping[str, Any], schemas_dir: Path | None = None
) -> None:
    """Validate against core + every extension schema used; raise StacValidationError naming
    the object id, the schema and the failing field. Offline when `schemas_dir` is given (or
    BQ_STAC_SCHEMAS_DIR is set)."""
    if isinstance(stac_object, pystac.STACObject):
        raw: Any = stac_object.to_dict(include_self_link=False, transform_hrefs=False)
    else:
        raw = stac_object
    # A JSON round trip turns tuples into arrays, as a reader of the file would see them.
    stac_dict: dict[str, Any] = json.loads(json.dumps(raw))
    folder = schemas_dir or (
        Path(os.environ[SCHEMAS_DIR_ENV]) if os.environ.get(SCHEMAS_DIR_ENV) else None
    )
    if folder is None:
        _validate_online(stac_dict)
        return
    if not folder.is_dir():
        raise StacValidationError(f"STAC schemas folder {folder} does not exist")
    for uri in [_core_schema_uri(stac_dict), *stac_dict.get("stac_extensions", [])]:
        _check_against(stac_dict, uri, folder.resolve())
    logger.debug("%s %r is valid", stac_dict.get("type"), stac_dict.get("id"))
