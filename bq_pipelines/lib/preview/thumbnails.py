"""A COG's thumbnail: a small PNG read from its overviews (GDAL picks the smallest one at least
as fine as the thumbnail), never from the full resolution of a large raster."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling

from bq_pipelines.lib.categories import CLASSES_TAG
from bq_pipelines.lib.preview.png import palette_png, rgba_png

THUMBNAIL_SUFFIX = ".thumbnail.png"
THUMBNAIL_MAX_SIDE = 256
# Bump when a change here alters a thumbnail's pixels: part of the skip-unchanged fingerprint.
PREVIEW_VERSION = "1"
# Percentiles of the valid pixels mapped to the ends of the colour ramp.
STRETCH_PERCENTILES = (2.0, 98.0)

# Viridis at 9 stops (perceptually uniform, readable by colour-blind people), interpolated.
_VIRIDIS_STOPS = (
    (68, 1, 84),
    (71, 45, 123),
    (59, 82, 139),
    (44, 114, 142),
    (33, 145, 140),
    (40, 174, 128),
    (94, 201, 98),
    (173, 220, 48),
    (253, 231, 37),
)
# Distinct colours for classes without a colour table or colour hints (Tableau 20), picked by
# class value so that a class has the same colour in every item of a dataset.
CATEGORY_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)  # fmt: skip
_MAX_PALETTE = 255  # index 0 is the transparent entry


def thumbnail_file_name(cog_file_name: str) -> str:
    """The thumbnail's file name beside its COG (`x.tif` -> `x.tif.thumbnail.png`): one per
    COG file name, so two COGs never share a thumbnail."""
    return cog_file_name + THUMBNAIL_SUFFIX


@dataclass(frozen=True)
class Thumbnail:
    """A rendered thumbnail and how it was drawn."""

    png: bytes
    width: int
    height: int
    style: str  # "rgb", "colour table", "class colours", "palette", "stretch", "empty"

    def write(self, path: Path) -> Path:
        path.write_bytes(self.png)
        return path


def thumbnail_shape(height: int, width: int, max_side: int = THUMBNAIL_MAX_SIDE) -> tuple[int, int]:
    """(height, width) scaled so the longer side is `max_side` (never enlarged)."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _hex_colour(text: str) -> tuple[int, int, int] | None:
    text = text.strip().lstrip("#")
    if len(text) != 6:
        return None
    try:
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    except ValueError:
        return None


def _class_colours(src: rasterio.io.DatasetReader) -> dict[int, tuple[int, int, int, int]]:
    """Colour hints of band 1's classification classes (what to_cog kept of a RAT or CF
    flag_colors)."""
    try:
        classes = json.loads(src.tags(1).get(CLASSES_TAG) or "[]")
    except json.JSONDecodeError:
        return {}
    colours = {}
    for entry in classes if isinstance(classes, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("value"), int):
            rgb = _hex_colour(str(entry.get("color_hint") or ""))
            if rgb is not None:
                colours[entry["value"]] = (*rgb, 255)
    return colours


def _colour_table(src: rasterio.io.DatasetReader) -> dict[int, tuple[int, int, int, int]]:
    try:
        return {int(k): tuple(v) for k, v in src.colormap(1).items()}
    except ValueError:  # no colour table
        return {}


def _class_indexes(valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of `valid` (sorted) and each pixel's position among them; by counting
    for integers of up to 16 bits (the usual classes), 10x faster than sorting."""
    if valid.dtype.kind in "ui" and valid.dtype.itemsize <= 2 and valid.size:
        low = int(valid.min())
        shifted = valid.astype(np.int64) - low
        present = np.bincount(shifted) > 0
        positions = np.cumsum(present) - 1
        return np.nonzero(present)[0] + low, positions[shifted]
    return np.unique(valid, return_inverse=True)


def _categorical(
    values: np.ma.MaskedArray,
    src: rasterio.io.DatasetReader,
    table: Mapping[int, tuple[int, int, int, int]],
) -> tuple[bytes, str] | None:
    """A palette PNG of classes: the COG's colour `table`, else its classes' colour hints, else
    a fixed palette by class value. None when there are more classes than a palette holds."""
    classes, inverse = _class_indexes(values.compressed())
    if classes.size > _MAX_PALETTE:
        return None
    style = "colour table"
    if not table:
        table, style = _class_colours(src), "class colours"
    if not table:
        style = "palette"

    def colour(value: Any) -> tuple[int, int, int, int]:
        key = int(value) if float(value).is_integer() else None
        if key is not None and key in table:
            return table[key]
        index = key if key is not None else int(np.searchsorted(classes, value))
        return (*CATEGORY_PALETTE[index % len(CATEGORY_PALETTE)], 255)

    indexes = np.zeros(values.shape, np.uint8)
    indexes[~np.ma.getmaskarray(values)] = inverse.astype(np.uint8) + 1
    palette = [(0, 0, 0, 0), *(colour(value) for value in classes)]
    return palette_png(indexes, palette), style


@functools.cache
def colour_ramp(steps: int = _MAX_PALETTE) -> tuple[tuple[int, int, int, int], ...]:
    """The RGBA colours a continuous band is stretched over: viridis in `steps` levels."""
    stops = np.array(_VIRIDIS_STOPS, dtype=float)
    positions = np.linspace(0, len(stops) - 1, steps)
    channels = np.stack(
        [np.interp(positions, np.arange(len(stops)), stops[:, c]) for c in range(3)], axis=1
    )
    return tuple((int(r), int(g), int(b), 255) for r, g, b in np.round(channels))


def _stretched(values: np.ma.MaskedArray) -> bytes:
    """A palette PNG of a continuous band: its 2nd-98th percentiles over the colour ramp."""
    valid = values.compressed().astype("float64")
    indexes = np.zeros(values.shape, np.uint8)
    if valid.size:
        low, high = np.percentile(valid, STRETCH_PERCENTILES)
        scaled = (values.filled(low).astype("float64") - low) / (high - low or 1.0)
        levels = np.clip(np.round(scaled * (_MAX_PALETTE - 1)), 0, _MAX_PALETTE - 1)
        indexes = np.where(np.ma.getmaskarray(values), 0, levels.astype(np.uint8) + 1)
    return palette_png(indexes.astype(np.uint8), [(0, 0, 0, 0), *colour_ramp()])


def _rgb(values: np.ma.MaskedArray) -> bytes:
    """Three uint8 bands as they are; a pixel is transparent when any band is masked."""
    mask = np.ma.getmaskarray(values).any(axis=0)
    rgba = np.dstack([*values.filled(0)[:3], np.where(mask, 0, 255)]).astype(np.uint8)
    return rgba_png(rgba)


def render_thumbnail(
    cog_path: Path | str, *, categorical: bool = False, max_side: int = THUMBNAIL_MAX_SIDE
) -> Thumbnail:
    """A PNG of the COG, its longer side at most `max_side` px, read from its overviews.

    - 3 or more uint8 bands: bands 1-3 as RGB;
    - otherwise band 1: categorical (declared so, or with a colour table) in its colour table,
      its classes' colour hints or a fixed palette; continuous with a 2-98 % stretch over a
      viridis ramp;
    - nodata, masked and NaN pixels transparent.
    """
    with rasterio.open(cog_path) as src:
        height, width = thumbnail_shape(src.height, src.width, max_side)
        rgb = src.count >= 3 and all(dtype == "uint8" for dtype in src.dtypes[:3])
        indexes = [1, 2, 3] if rgb else [1]
        table = _colour_table(src) if not rgb else {}
        by_class = categorical or bool(table)
        # Nearest keeps classes and colours exact; out_shape makes GDAL read the smallest
        # overview at least this fine, never the full resolution of a large COG.
        values = src.read(
            indexes,
            out_shape=(len(indexes), height, width),
            resampling=Resampling.nearest,
            masked=True,
        )
        values = np.ma.masked_invalid(values) if values.dtype.kind == "f" else values
        if rgb:
            return Thumbnail(_rgb(values), width, height, "rgb")
        band = values[0]
        if not band.count():
            empty = palette_png(np.zeros(band.shape, np.uint8), [(0, 0, 0, 0)])
            return Thumbnail(empty, width, height, "empty")
        if by_class:
            drawn = _categorical(band, src, table)
            if drawn is not None:
                return Thumbnail(drawn[0], width, height, drawn[1])
        return Thumbnail(_stretched(band), width, height, "stretch")
