"""Generate the demo dataset's rasters: small, deterministic, with real CRSs and nodata."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

DEMO_LAYERS = ("landcover", "elevation", "temperature")
# The land cover's classes: value -> (name, colour). Written as CF flag attributes in the band's
# metadata (inside the TIFF) and as its colour table, so items carry `classification:classes`
# and thumbnails and tiles show the classes in these colours.
LANDCOVER_CLASSES = {
    1: ("water", (70, 130, 180)),
    2: ("wetland", (120, 190, 170)),
    3: ("cropland", (235, 205, 110)),
    4: ("deciduous_forest", (90, 170, 60)),
    5: ("coniferous_forest", (30, 100, 50)),
    6: ("bare_rock", (160, 150, 140)),
}
ELEVATION_UNIT = "m"
TEMPERATURE_UNIT = "degC"  # UDUNITS, as CF and STAC's raster extension use


def _smooth_field(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth random surface in [0, 1] (sums of a few sine waves), looks like terrain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    surface = np.zeros(shape)
    for _ in range(6):
        fx, fy, phase = rng.uniform(1, 8), rng.uniform(1, 8), rng.uniform(0, 2 * np.pi)
        surface += np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
    normalized: np.ndarray = (surface - surface.min()) / np.ptp(surface)
    return normalized


def _write(
    path: Path,
    data: np.ndarray,
    crs: str,
    origin: tuple[float, float],
    resolution: float,
    nodata: float,
    *,
    unit: str | None = None,
    tags: dict[str, str] | None = None,
    colormap: dict[int, tuple[int, int, int, int]] | None = None,
) -> bool:
    """Write the raster unless `path` already holds these very bytes; True when written.

    An untouched file keeps its mtime, so the dataset's source fingerprint does not change and
    re-materializing the demo skips every partition.
    """
    tmp = path.with_suffix(f".tmp{os.getpid()}.tif")
    with rasterio.open(
        tmp,
        "w",
        driver="GTiff",
        width=data.shape[1],
        height=data.shape[0],
        count=1,
        dtype=data.dtype,
        crs=crs,
        nodata=nodata,
        transform=from_origin(*origin, resolution, resolution),
    ) as dst:
        dst.write(data, 1)
        if unit:
            dst.set_band_unit(1, unit)
        if tags:
            dst.update_tags(1, **tags)
        if colormap:
            dst.write_colormap(1, colormap)
    if path.is_file() and filecmp.cmp(tmp, path, shallow=False):
        tmp.unlink()
        return False
    tmp.replace(path)
    return True


def _flag_tags(classes: dict[int, tuple[str, tuple[int, int, int]]]) -> dict[str, str]:
    """CF flag attributes: what the pipeline reads classes from (lib/categories)."""
    return {
        "flag_values": " ".join(str(value) for value in classes),
        "flag_meanings": " ".join(name for name, _ in classes.values()),
        "flag_colors": " ".join("#{:02X}{:02X}{:02X}".format(*rgb) for _, rgb in classes.values()),
    }


def _colour_table(
    classes: dict[int, tuple[str, tuple[int, int, int]]],
) -> dict[int, tuple[int, int, int, int]]:
    table = {0: (0, 0, 0, 0)}  # nodata
    table.update({value: (*rgb, 255) for value, (_, rgb) in classes.items()})
    return table


def write_demo_rasters(root: Path) -> list[tuple[Path, bool]]:
    """Write the demo rasters under `root/demo/` where missing or different (the same bytes
    every time); each path with whether it was written."""
    folder = root / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    terrain = _smooth_field((400, 600), seed=42)
    landcover = np.digitize(terrain, [0.2, 0.35, 0.5, 0.65, 0.8]).astype("uint8") + 1
    landcover[:40, :60] = 0  # nodata corner
    written = {}
    # Québec Lambert (EPSG:32198), 500 m pixels around Montréal-Québec.
    written["landcover"] = _write(
        folder / "landcover.tif",
        landcover,
        "EPSG:32198",
        (-450_000.0, 350_000.0),
        500.0,
        0,
        tags=_flag_tags(LANDCOVER_CLASSES),
        colormap=_colour_table(LANDCOVER_CLASSES),
    )
    elevation = (terrain * 1100 - 50).astype("int16")
    elevation[terrain < 0.08] = -9999
    written["elevation"] = _write(
        folder / "elevation.tif",
        elevation,
        "EPSG:4326",
        (-76.0, 49.0),
        0.01,
        -9999,
        unit=ELEVATION_UNIT,
    )
    temperature = (8.0 - 12.0 * _smooth_field((400, 600), seed=7)).astype("float32")
    temperature[-30:, -50:] = np.nan
    written["temperature"] = _write(
        folder / "temperature.tif",
        temperature,
        "EPSG:4326",
        (-76.0, 49.0),
        0.01,
        np.nan,
        unit=TEMPERATURE_UNIT,
    )
    return [(folder / f"{layer}.tif", written[layer]) for layer in DEMO_LAYERS]
