"""Cloud-Optimized GeoTIFF conversion and validation (rio-cogeo), with the legacy profiles.

Profile `raw` keeps CRS and resolution; `display` warps to EPSG:3857. Both: DEFLATE with a
predictor fitting the dtype, 512 px tiles, internal overviews, nodata kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

CogProfileName = Literal["raw", "display"]


@dataclass(frozen=True)
class RasterInput:
    """One input raster: a path, optionally a NetCDF/HDF subdataset and a band selection."""

    path: Path
    subdataset: str | None = None  # e.g. "lccs_class" or "/scenario_1/metric_1/ebv_cube"
    bands: tuple[int, ...] | None = None  # 1-based; None keeps every band


@dataclass(frozen=True)
class CogSettings:
    """How to convert: everything that changes the bytes of the output COG."""

    profile: CogProfileName = "raw"
    categorical: bool = False
    assign_crs: str | None = None  # for sources that carry no CRS (e.g. "EPSG:4326")
    nodata: float | None = None  # override the source nodata
    blocksize: int = 512
    deflate_level: int = 6

    def fingerprint(self) -> str:
        """Stable hash of the settings, part of the skip-unchanged fingerprint."""
        raise NotImplementedError


@dataclass(frozen=True)
class CogInfo:
    """What a user wants to know about a COG (becomes materialization metadata)."""

    path: Path
    size: int
    sha256: str
    crs: str  # "EPSG:xxxx" when it has a code, WKT otherwise
    epsg: int | None
    bounds: tuple[float, float, float, float]  # in the COG's CRS
    bbox_wgs84: tuple[float, float, float, float]
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    overview_levels: list[int] = field(default_factory=list)
    profile: CogProfileName = "raw"


def to_cog(inputs: RasterInput | list[RasterInput], dst: Path, settings: CogSettings) -> CogInfo:
    """Convert one raster (or several, stacked as bands in order) into a validated COG at `dst`.

    Raises CogError naming the input when it is unreadable, has no CRS (and none is assigned),
    or when the output does not validate. Writes atomically (temp file then rename).
    """
    raise NotImplementedError


def validate_cog(path: Path) -> list[str]:
    """Errors that make `path` not a valid COG (empty list when valid)."""
    raise NotImplementedError


def describe_cog(path: Path, profile: CogProfileName = "raw") -> CogInfo:
    """Read CogInfo from an existing COG."""
    raise NotImplementedError
