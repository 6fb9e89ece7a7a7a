"""What an asset says of its COG's bands: `raster:bands` (data type, nodata, unit, statistics,
classes) and STAC 1.1 `bands` (descriptions)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from rasterio.io import DatasetReader

from bq_pipelines.lib.categories import CLASSES_TAG

logger = logging.getLogger(__name__)

# raster v1.1 names of numpy's complex types (the real ones are the same).
_RASTER_DATA_TYPES = {
    "complex_int16": "cint16",
    "complex64": "cfloat32",
    "complex128": "cfloat64",
}


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
    if not isinstance(classes, list) or not all(_is_class(c) for c in classes):
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


def raster_bands(
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
    return [
        _raster_band(
            src,
            index,
            sampling,
            values[index - 1]
            if values is not None
            else src.read(index, out_shape=shape, masked=True),
        )
        for index in src.indexes
    ]


def _raster_band(
    src: DatasetReader, index: int, sampling: str, values: np.ma.MaskedArray
) -> dict[str, Any]:
    """One band's raster:bands object; `values` its pixels, decimated or not."""
    dtype = src.dtypes[index - 1]
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
    band["statistics"] = _statistics(values)
    classes = _band_classes(src, index)
    if classes:
        band["classification:classes"] = classes
    return band


def band_objects(src: DatasetReader) -> list[dict[str, str]]:
    """STAC 1.1 `bands` with each band's description, when the raster describes its bands."""
    if not any(src.descriptions):
        return []
    return [
        {"name": f"b{index}", **({"description": text} if text else {})}
        for index, text in zip(src.indexes, src.descriptions, strict=True)
    ]
