"""Georeferencing facts shared by COG conversion and STAC items: exact EPSG codes, footprints.

An EPSG code is only claimed when it is exact (a fuzzy guess published a custom "UTM 25S" as
EPSG:32000), and a footprint follows the four edges of the grid, rotated or not.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as transform_points

WGS84 = CRS.from_epsg(4326)

# Points added along each edge before reprojection: GDAL's own choice for transform_bounds.
DENSIFY_POINTS = 21
# How many times finer the edges are sampled for the bbox than for the geometry.
_BBOX_REFINEMENT = 5

_CRS_NAME = re.compile(r'^\s*[A-Z_0-9]+\[\s*"([^"]*)"')


class GeorefError(ValueError):
    """A grid cannot be placed on the globe (its CRS has no path to WGS84)."""


def exact_epsg(crs: CRS) -> int | None:
    """The EPSG code of `crs` when it is one exactly, else None.

    PROJ's identification with confidence 100 only accepts an EPSG entry that is equivalent and
    has the same name (or the CRS carries the EPSG authority itself). Searching the database
    costs ~0.15 s for a CRS without a code, so the answer is cached per WKT: every file of a
    dataset shares its CRS.
    """
    return _exact_epsg_of_wkt(crs.to_wkt())


@functools.lru_cache(maxsize=512)
def _exact_epsg_of_wkt(wkt: str) -> int | None:
    epsg: int | None = CRS.from_wkt(wkt).to_epsg(confidence_threshold=100)
    return epsg


def crs_label(crs: CRS) -> str:
    """A short name for messages and metadata: `EPSG:n` when exact, else the CRS's own name."""
    epsg = exact_epsg(crs)
    if epsg is not None:
        return f"EPSG:{epsg}"
    wkt = crs.to_wkt()
    match = _CRS_NAME.match(wkt)
    return f'"{match[1]}"' if match and match[1] else wkt


def outline(transform: Affine, width: int, height: int, densify: int) -> list[tuple[float, float]]:
    """The closed ring of the grid's outer edges in its own CRS, `densify` points per edge.

    Follows the geotransform, so a rotated or sheared grid gives its true quadrilateral rather
    than the axis-aligned envelope of its corners.
    """
    steps = np.linspace(0.0, 1.0, densify + 2)[:-1]
    zeros, ones = np.zeros_like(steps), np.ones_like(steps)
    # Columns and rows of the ring: left edge down, bottom edge right, right edge up, top left.
    cols = np.concatenate([zeros, steps, ones, 1 - steps, [0.0]]) * width
    rows = np.concatenate([steps, ones, 1 - steps, zeros, [0.0]]) * height
    xs = transform.a * cols + transform.b * rows + transform.c
    ys = transform.d * cols + transform.e * rows + transform.f
    return list(zip(xs.tolist(), ys.tolist(), strict=True))


@dataclass(frozen=True)
class Footprint:
    """Where a grid lies in WGS84: a GeoJSON Polygon and a bbox that contains its curved edges."""

    geometry: dict[str, Any]
    bbox: tuple[float, float, float, float]  # west, south, east, north


def footprint_wgs84(crs: CRS, transform: Affine, width: int, height: int) -> Footprint:
    """The grid's outline in WGS84 longitude/latitude, counter-clockwise (RFC 7946).

    Projected edges curve in WGS84: the geometry has DENSIFY_POINTS per edge, and the bbox is
    taken from 5 times as many (the geometry's among them), so that it contains the curve between
    the geometry's vertices too. Geographic grids keep straight edges and their corners. Raises
    GeorefError when the CRS cannot be transformed to WGS84 (an engineering/local CRS), naming
    the CRS.
    """
    step = 1 if crs.is_geographic else _BBOX_REFINEMENT
    densify = 0 if crs.is_geographic else (DENSIFY_POINTS + 1) * step - 1
    lons, lats = _to_wgs84(crs, outline(transform, width, height, densify))
    ring = list(zip(lons[::step], lats[::step], strict=True))
    if _signed_area(ring) < 0:
        ring.reverse()
    geometry = {"type": "Polygon", "coordinates": [[list(point) for point in ring]]}
    return Footprint(geometry, (min(lons), min(lats), max(lons), max(lats)))


def _signed_area(ring: list[tuple[float, float]]) -> float:
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in itertools.pairwise(ring)) / 2


def require_wgs84(crs: CRS, transform: Affine, width: int, height: int) -> None:
    """Raise GeorefError naming the CRS unless the grid's corners reach WGS84: the cheap check
    made before any conversion."""
    _to_wgs84(crs, outline(transform, width, height, densify=0))


def _to_wgs84(crs: CRS, points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    xs, ys = zip(*points, strict=True)
    try:
        lons, lats = transform_points(crs, WGS84, list(xs), list(ys))
    except Exception:  # rasterio raises GDAL's CPLE_* classes, which it does not export
        # GDAL's text is a page of PROJJSON; the CRS's name says more to a user.
        raise GeorefError(
            f"CRS {crs_label(crs)} has no transformation to WGS84 (EPSG:4326), so the raster "
            "cannot be placed on a map (an engineering or local CRS?)"
        ) from None
    if not all(math.isfinite(v) for v in (*lons, *lats)):
        raise GeorefError(f"CRS {crs_label(crs)} gives no WGS84 coordinates for this grid")
    return lons, lats
