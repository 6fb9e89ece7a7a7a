"""What an item says of its COG's grid: the footprint in WGS84 and the projection fields."""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from affine import Affine
from rasterio.crs import CRS
from rasterio.io import DatasetReader

from bq_pipelines.lib import georef


@dataclass(frozen=True)
class GridFields:
    """What an item says of its grid: the same for every COG on one grid (every band of a
    cube), so worked out once per grid and copied into each item."""

    footprint: georef.Footprint
    projection: dict[str, Any]


def grid_fields(src: DatasetReader) -> GridFields:
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
) -> GridFields:
    crs, affine = CRS.from_wkt(wkt), Affine(*transform[:6])
    return GridFields(
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
