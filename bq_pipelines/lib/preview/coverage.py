"""A collection's coverage map: its items' footprints over land outlines and a graticule."""

from __future__ import annotations

import functools
import importlib.resources
import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine
from rasterio.enums import MergeAlg
from rasterio.features import rasterize

from bq_pipelines.lib.preview.png import rgba_png

COVERAGE_MAX_SIDE = 512
# The map's colours: sea, land (Natural Earth 110m, `basemap/`), coastlines, graticule.
SEA_COLOUR = (236, 242, 247)
LAND_COLOUR = (226, 224, 212)
COAST_COLOUR = (170, 166, 150)
GRATICULE_COLOUR = (210, 214, 220)
# Opacity of a footprint covered by one item, and by the most items.
FOOTPRINT_OPACITY = (0.45, 0.7)


@dataclass(frozen=True)
class CoverageMap:
    png: bytes
    width: int
    height: int
    bounds: tuple[float, float, float, float]  # west, south, east, north of the map
    footprints: int  # distinct footprints drawn
    max_overlap: int  # most items covering one pixel


def _footprint(item: Mapping[str, Any]) -> dict[str, Any] | None:
    geometry = item.get("geometry")
    if geometry:
        return dict(geometry)
    bbox = item.get("bbox")
    if bbox and len(bbox) >= 4:
        west, south, east, north = bbox[0], bbox[1], bbox[-2], bbox[-1]
        ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
        return {"type": "Polygon", "coordinates": [ring]}
    return None


def _map_bounds(bboxes: Iterable[Sequence[float]]) -> tuple[float, float, float, float]:
    """The items' bounds, padded by a tenth of their span (at least 1 degree) for context."""
    boxes = np.array([[b[0], b[1], b[-2], b[-1]] for b in bboxes], dtype=float)
    west, south = boxes[:, 0].min(), boxes[:, 1].min()
    east, north = boxes[:, 2].max(), boxes[:, 3].max()
    pad = max(1.0, 0.1 * max(east - west, north - south))
    return (
        max(-180.0, west - pad),
        max(-90.0, south - pad),
        min(180.0, east + pad),
        min(90.0, north + pad),
    )


def _graticule_step(span: float) -> float:
    for step in (0.5, 1, 2, 5, 10, 15, 30, 60):
        if span / step <= 8:
            return float(step)
    return 90.0


def coverage_map(
    items: Iterable[Mapping[str, Any]], max_side: int = COVERAGE_MAX_SIDE
) -> CoverageMap | None:
    """An equirectangular map (lon/lat) of the items' footprints over their bounds: covered
    pixels coloured by how many items cover them (darker: more), over land outlines (Natural
    Earth) and a graticule, so one sees where they are. None without footprints. Identical
    footprints are drawn once, weighted by their count."""
    counts: Counter[str] = Counter()
    boxes: dict[str, Sequence[float]] = {}
    for item in items:
        footprint = _footprint(item)
        if footprint is None:
            continue
        text = json.dumps(footprint, sort_keys=True)
        counts[text] += 1
        if text not in boxes:
            boxes[text] = item.get("bbox") or _bbox_of(footprint)
    if not counts:
        return None
    west, south, east, north = _map_bounds(boxes.values())
    scale = max_side / max(east - west, north - south)
    width, height = max(1, round((east - west) * scale)), max(1, round((north - south) * scale))
    transform = Affine((east - west) / width, 0, west, 0, -(north - south) / height, north)
    overlap = rasterize(
        ((json.loads(text), count) for text, count in counts.items()),
        out_shape=(height, width),
        transform=transform,
        fill=0,
        all_touched=True,
        merge_alg=MergeAlg.add,
        dtype="uint32",
    )
    rgba = np.empty((height, width, 4), np.uint8)
    rgba[:] = (*SEA_COLOUR, 255)
    _draw_land(rgba, transform)
    _draw_graticule(rgba, (west, south, east, north), transform)
    covered = overlap > 0
    most = int(overlap.max())
    if covered.any():
        # Log scale: one item is light, the most-covered pixels dark.
        level = np.log1p(overlap[covered]) / math.log1p(max(most, 1))
        start, end = np.array([158, 202, 225]), np.array([8, 48, 107])
        colour = start + (end - start) * level[:, None]
        # Translucent, so the land and coastlines under the footprints still show.
        opacity = (FOOTPRINT_OPACITY[0] + np.diff(FOOTPRINT_OPACITY) * level)[:, None]
        below = rgba[covered, :3].astype(float)
        rgba[covered, :3] = (below + (colour - below) * opacity).round().astype(np.uint8)
    return CoverageMap(rgba_png(rgba), width, height, (west, south, east, north), len(counts), most)


def _bbox_of(geometry: Mapping[str, Any]) -> list[float]:
    points = np.array(list(_coordinates(geometry.get("coordinates"))), dtype=float)
    return [points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max()]


def _coordinates(nested: Any) -> Iterable[Sequence[float]]:
    if isinstance(nested, list | tuple) and nested and isinstance(nested[0], int | float):
        yield nested
    elif isinstance(nested, list | tuple):
        for part in nested:
            yield from _coordinates(part)


@functools.cache
def land_polygons() -> tuple[dict[str, Any], ...]:
    """Natural Earth's 1:110m land, simplified (package data: `basemap/`, public domain)."""
    text = importlib.resources.files("bq_pipelines.lib").joinpath("basemap/land.json").read_text()
    land = json.loads(text)
    return tuple({"type": "Polygon", "coordinates": rings} for rings in land["coordinates"])


def _draw_land(rgba: np.ndarray, transform: Affine) -> None:
    """Land filled, its coastline a pixel wide, on the map's grid."""
    height, width = rgba.shape[:2]
    polygons = land_polygons()
    land = rasterize(((p, 1) for p in polygons), out_shape=(height, width), transform=transform)
    rgba[land == 1, :3] = LAND_COLOUR
    coasts = ({"type": "MultiLineString", "coordinates": p["coordinates"]} for p in polygons)
    coast = rasterize(((c, 1) for c in coasts), out_shape=(height, width), transform=transform)
    rgba[coast == 1, :3] = COAST_COLOUR


def _draw_graticule(
    rgba: np.ndarray, bounds: tuple[float, float, float, float], transform: Affine
) -> None:
    west, south, east, north = bounds
    step = _graticule_step(max(east - west, north - south))
    inverse = ~transform
    height, width = rgba.shape[:2]
    for lon in np.arange(math.ceil(west / step) * step, east + 1e-9, step):
        column = int((inverse * (lon, north))[0])
        if 0 <= column < width:
            rgba[:, column, :3] = GRATICULE_COLOUR
    for lat in np.arange(math.ceil(south / step) * step, north + 1e-9, step):
        row = int((inverse * (west, lat))[1])
        if 0 <= row < height:
            rgba[row, :, :3] = GRATICULE_COLOUR
