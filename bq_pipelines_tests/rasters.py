"""Small, deterministic test rasters with real CRSs, nodata, dtypes and bands."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

# A Lambert Conformal Conic with no EPSG code (Québec Lambert's parameters, custom datum name).
CUSTOM_LCC_WKT = (
    'PROJCS["custom_lcc",GEOGCS["GRS80 based",DATUM["unnamed",SPHEROID["GRS 1980",6378137,'
    '298.257222101]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
    'PROJECTION["Lambert_Conformal_Conic_2SP"],PARAMETER["standard_parallel_1",60],'
    'PARAMETER["standard_parallel_2",46],PARAMETER["latitude_of_origin",44],'
    'PARAMETER["central_meridian",-70],PARAMETER["false_easting",0],'
    'PARAMETER["false_northing",0],UNIT["metre",1]]'
)


@dataclass(frozen=True)
class RasterSpec:
    """Enough to generate a raster: dtype, CRS, bands, nodata and a footprint."""

    dtype: str = "float32"
    crs: str = "EPSG:4326"
    count: int = 1
    width: int = 300
    height: int = 200
    nodata: float | None = None
    categorical: bool = False
    origin: tuple[float, float] | None = None  # top-left, in CRS units
    resolution: float | None = None
    seed: int = 0


def _default_grid(crs: CRS) -> tuple[tuple[float, float], float]:
    if crs.is_geographic:
        return (-75.0, 50.0), 0.01
    if crs.to_epsg() == 32198:
        return (-300_000.0, 500_000.0), 1_000.0
    return (-200_000.0, 700_000.0), 1_000.0


def raster_values(spec: RasterSpec) -> np.ndarray:
    """The pixel array of `spec`, shape (count, height, width), with nodata where it applies."""
    rng = np.random.default_rng(spec.seed)
    shape = (spec.count, spec.height, spec.width)
    if spec.categorical:
        data = rng.integers(1, 12, size=shape).astype(spec.dtype)
    elif np.issubdtype(np.dtype(spec.dtype), np.integer):
        info = np.iinfo(spec.dtype)
        low, high = max(info.min + 1, -500), min(info.max - 1, 3000)
        yy, xx = np.mgrid[0 : spec.height, 0 : spec.width]
        ramp = (low + (xx + yy) * (high - low) / (spec.width + spec.height)).astype(spec.dtype)
        data = np.stack([ramp + band for band in range(spec.count)]).astype(spec.dtype)
    else:
        data = rng.normal(10.0, 5.0, size=shape).astype(spec.dtype)
    if spec.nodata is not None:
        mask = np.zeros(shape, dtype=bool)
        mask[:, : spec.height // 10, : spec.width // 10] = True  # a nodata corner
        fill = np.nan if np.isnan(spec.nodata) else spec.nodata
        data = np.where(mask, np.array(fill, dtype=spec.dtype), data)
    return data


def write_raster(path: Path, spec: RasterSpec = RasterSpec(), driver: str = "GTiff") -> Path:
    """Write `spec` as a plain (striped, uncompressed, not cloud-optimized) GeoTIFF."""
    crs = CRS.from_user_input(spec.crs)
    default_origin, default_res = _default_grid(crs)
    origin = spec.origin or default_origin
    resolution = spec.resolution or default_res
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver=driver,
        width=spec.width,
        height=spec.height,
        count=spec.count,
        dtype=spec.dtype,
        crs=crs,
        transform=from_origin(*origin, resolution, resolution),
        nodata=spec.nodata,
    ) as dst:
        dst.write(raster_values(spec))
    return path
