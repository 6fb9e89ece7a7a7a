"""STAC collections: built from their declaration, their extent the union of their items' (or
grown item by item), their summaries worked out from the items' properties."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import pystac
from pystac.utils import str_to_datetime

from bq_pipelines.lib.stac.extensions import ITEM_ASSETS_SCHEMA, extensions_for
from bq_pipelines.lib.stac.items import TEMPORAL_KEYS, item_document

GLOBAL_BBOX = [-180.0, -90.0, 180.0, 90.0]


def _item_times(properties: Mapping[str, Any]) -> list[datetime]:
    return [str_to_datetime(properties[key]) for key in TEMPORAL_KEYS if properties.get(key)]


def union_extent(items: Iterable[pystac.Item | Mapping[str, Any]]) -> pystac.Extent:
    """The extent covering every item: global and open when they have no bbox and no time."""
    bbox: list[float] | None = None
    times: list[datetime] = []
    for item in items:
        item_dict = item_document(item)
        if item_dict.get("bbox"):
            horizontal = _horizontal(item_dict["bbox"])
            bbox = horizontal if bbox is None else _union(bbox, horizontal)
        times.extend(_item_times(item_dict.get("properties", {})))
    spatial = pystac.SpatialExtent([bbox or GLOBAL_BBOX])
    # An open interval [[null, null]] is valid in STAC 1.1 (both ends may be null).
    interval: list[datetime | None] = [min(times), max(times)] if times else [None, None]
    return pystac.Extent(spatial, pystac.TemporalExtent([interval]))


def _horizontal(bbox: Sequence[float]) -> list[float]:
    # 3D bboxes carry six numbers: the horizontal ones are the first and fourth pairs.
    half = len(bbox) // 2
    return [bbox[0], bbox[1], bbox[half], bbox[half + 1]]


def _union(bbox: Sequence[float], other: Sequence[float]) -> list[float]:
    return [
        min(bbox[0], other[0]),
        min(bbox[1], other[1]),
        max(bbox[2], other[2]),
        max(bbox[3], other[3]),
    ]


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
    bboxes[0] = _union(_horizontal(bboxes[0]), new_bbox)
    [[new_start, new_end]] = added["temporal"]["interval"]
    start, end = intervals[0]
    # The stored texts are kept unless the item moves them: unchanged extents compare equal.
    if start is not None and new_start is not None:
        start = new_start if str_to_datetime(new_start) < str_to_datetime(start) else start
    if end is not None and new_end is not None:
        end = new_end if str_to_datetime(new_end) > str_to_datetime(end) else end
    intervals[0] = [start, end]
    return {**extent, "spatial": {"bbox": bboxes}, "temporal": {"interval": intervals}}


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
    extensions = extensions_for(used_fields)
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
