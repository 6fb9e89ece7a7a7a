"""Pictures of what was published: a COG's thumbnail, a collection's coverage map, its item
count over time.

Dagster-free and dependency-free beyond rasterio and numpy: PNGs are encoded here (zlib), so
the same pixels always give the same bytes (a re-run stores nothing new). A thumbnail is read
from the COG's overviews (GDAL picks the smallest one at least as fine as the thumbnail), never
from the full resolution of a large raster.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import math
import struct
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import MergeAlg, Resampling
from rasterio.features import rasterize

from bq_pipelines.lib.categories import CLASSES_TAG

PNG_MEDIA_TYPE = "image/png"
THUMBNAIL_SUFFIX = ".thumbnail.png"
THUMBNAIL_MAX_SIDE = 256
COVERAGE_MAX_SIDE = 512
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
_CATEGORY_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)  # fmt: skip
# zlib level 1: a quarter of level 6's time for about a fifth more bytes (thumbnails are small).
PNG_COMPRESSION = 1
# The map's colours: sea, land (Natural Earth 110m, `basemap/`), coastlines, graticule.
SEA_COLOUR = (236, 242, 247)
LAND_COLOUR = (226, 224, 212)
COAST_COLOUR = (170, 166, 150)
GRATICULE_COLOUR = (210, 214, 220)
# Opacity of a footprint covered by one item, and by the most items.
FOOTPRINT_OPACITY = (0.45, 0.7)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_PALETTE = 255  # index 0 is the transparent entry


def thumbnail_file_name(cog_file_name: str) -> str:
    """The thumbnail's file name beside its COG (`x.tif` -> `x.tif.thumbnail.png`): one per
    COG file name, so two COGs never share a thumbnail."""
    return cog_file_name + THUMBNAIL_SUFFIX


# --------------------------------------------------------------------------------- PNG


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def _png(pixels: np.ndarray, colour_type: int, extra_chunks: Sequence[bytes] = ()) -> bytes:
    """An 8-bit PNG of `pixels` (height, width[, channels]), each row filtered with `Sub` on
    truecolour images (smooth gradients compress better) and none on palette images."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1).astype(np.uint8)
    if colour_type == 3:
        filtered = np.hstack([np.zeros((height, 1), np.uint8), rows])
    else:
        channels = rows.shape[1] // width
        sub = rows.copy()
        sub[:, channels:] = rows[:, channels:] - rows[:, :-channels]  # uint8 wraps: mod 256
        filtered = np.hstack([np.ones((height, 1), np.uint8), sub])
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join(
        [
            _PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            *extra_chunks,
            _chunk(b"IDAT", zlib.compress(filtered.tobytes(), PNG_COMPRESSION)),
            _chunk(b"IEND", b""),
        ]
    )


def palette_png(indexes: np.ndarray, palette: Sequence[tuple[int, int, int, int]]) -> bytes:
    """A palette PNG: `indexes` (height, width) into `palette` (RGBA, at most 256 entries)."""
    colours = np.array(palette, dtype=np.uint8).reshape(-1, 4)
    alpha = colours[:, 3]
    chunks = [_chunk(b"PLTE", colours[:, :3].tobytes())]
    if (alpha < 255).any():
        last = int(np.nonzero(alpha < 255)[0].max()) + 1  # trailing opaque entries omitted
        chunks.append(_chunk(b"tRNS", alpha[:last].tobytes()))
    return _png(indexes, 3, chunks)


def rgba_png(rgba: np.ndarray) -> bytes:
    """A truecolour PNG with alpha from `rgba` (height, width, 4) of uint8."""
    return _png(rgba, 6)


def decode_png(data: bytes) -> np.ndarray:
    """The RGBA pixels (height, width, 4) of a PNG written by this module (for tests and the
    benchmark: palette or RGBA, 8 bits, filters None and Sub)."""
    assert data.startswith(_PNG_SIGNATURE), "not a PNG"
    position, chunks = len(_PNG_SIGNATURE), {}
    idat = b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IDAT":
            idat += body
        else:
            chunks[kind] = body
        position += 12 + length
    width, height, _, colour_type = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    channels = 1 if colour_type == 3 else 4
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * channels)
    assert set(raw[:, 0].tolist()) <= {0, 1}, "a filter this module does not write"
    pixels = raw[:, 1:].reshape(height, width, channels)
    # Sub: each byte is stored minus its left neighbour's, so a running sum undoes it.
    undone = (np.cumsum(pixels.astype(np.int64), axis=1) % 256).astype(np.uint8)
    rows = np.where((raw[:, 0] == 1)[:, None, None], undone, pixels).reshape(height, -1)
    if colour_type == 6:
        return rows.reshape(height, width, 4)
    plte = np.frombuffer(chunks[b"PLTE"], np.uint8).reshape(-1, 3)
    alpha = np.full(len(plte), 255, np.uint8)
    trns = np.frombuffer(chunks.get(b"tRNS", b""), np.uint8)
    alpha[: trns.size] = trns
    palette = np.hstack([plte, alpha[:, None]])
    return palette[rows]


# --------------------------------------------------------------------------- thumbnails


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
        return (*_CATEGORY_PALETTE[index % len(_CATEGORY_PALETTE)], 255)

    indexes = np.zeros(values.shape, np.uint8)
    indexes[~np.ma.getmaskarray(values)] = inverse.astype(np.uint8) + 1
    palette = [(0, 0, 0, 0), *(colour(value) for value in classes)]
    return palette_png(indexes, palette), style


@functools.cache
def _ramp(steps: int = _MAX_PALETTE) -> tuple[tuple[int, int, int, int], ...]:
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
    return palette_png(indexes.astype(np.uint8), [(0, 0, 0, 0), *_ramp()])


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


# --------------------------------------------------------------------------- coverage


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


# --------------------------------------------------------------------------- time


def item_start(item: Mapping[str, Any]) -> datetime | None:
    properties = item.get("properties") or {}
    text = properties.get("datetime") or properties.get("start_datetime")
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def items_over_time(
    items: Iterable[Mapping[str, Any]], max_rows: int = 60
) -> list[tuple[str, int]]:
    """(period, item count) by month, year or decade, whichever keeps at most `max_rows`
    periods between the first and the last; periods without items are listed (with 0) so
    that gaps show. Items without a date are counted under "undated"."""
    dates = []
    undated = 0
    for item in items:
        when = item_start(item)
        if when is None:
            undated += 1
        else:
            dates.append(when)
    rows: list[tuple[str, int]] = []
    if dates:
        first, last = min(dates), max(dates)
        months = (last.year - first.year) * 12 + last.month - first.month + 1
        if months <= max_rows:
            counts = Counter(d.strftime("%Y-%m") for d in dates)
            periods = [
                f"{first.year + (first.month - 1 + m) // 12}-{(first.month - 1 + m) % 12 + 1:02d}"
                for m in range(months)
            ]
        else:
            size = 1 if last.year - first.year < max_rows else 10
            counts = Counter(_year_period(d.year, size) for d in dates)
            periods = [
                _year_period(year, size)
                for year in range(first.year - first.year % size, last.year + 1, size)
            ]
        rows = [(period, counts.get(period, 0)) for period in periods]
    if undated:
        rows.append(("undated", undated))
    return rows


def _year_period(year: int, size: int) -> str:
    return str(year) if size == 1 else f"{year - year % size}s"
