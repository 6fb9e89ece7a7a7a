"""Generate the demo dataset's rasters: small, deterministic, with real CRSs and nodata."""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

DEMO_LAYERS = ("landcover", "elevation", "temperature")


def _smooth_field(shape: tuple[int, int], seed: int) -> np.ndarray:
    """A smooth random surface in [0, 1] (sums of a few sine waves), looks like terrain."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    surface = np.zeros(shape)
    for _ in range(6):
        fx, fy, phase = rng.uniform(1, 8), rng.uniform(1, 8), rng.uniform(0, 2 * np.pi)
        surface += np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
    return (surface - surface.min()) / np.ptp(surface)


def _write(
    path: Path,
    data: np.ndarray,
    crs: str,
    origin: tuple[float, float],
    resolution: float,
    nodata: float,
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
    if path.is_file() and filecmp.cmp(tmp, path, shallow=False):
        tmp.unlink()
        return False
    tmp.replace(path)
    return True


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
        folder / "landcover.tif", landcover, "EPSG:32198", (-450_000.0, 350_000.0), 500.0, 0
    )
    elevation = (terrain * 1100 - 50).astype("int16")
    elevation[terrain < 0.08] = -9999
    written["elevation"] = _write(
        folder / "elevation.tif", elevation, "EPSG:4326", (-76.0, 49.0), 0.01, -9999
    )
    temperature = (8.0 - 12.0 * _smooth_field((400, 600), seed=7)).astype("float32")
    temperature[-30:, -50:] = np.nan
    written["temperature"] = _write(
        folder / "temperature.tif", temperature, "EPSG:4326", (-76.0, 49.0), 0.01, np.nan
    )
    return [(folder / f"{layer}.tif", written[layer]) for layer in DEMO_LAYERS]
