"""What an item's data holds, read from its statistics (and its COG when they say nothing is
valid): no valid pixel at all, or one value everywhere."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio

from bq_pipelines.lib.stac.items import item_document


def _band_statistics(item: pystac.Item | Mapping[str, Any]) -> list[Mapping[str, Any]]:
    assets = item_document(item).get("assets", {})
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
