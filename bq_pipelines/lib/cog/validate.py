"""Whether a file is a valid COG (GDAL's layout checks, rio-cogeo for other files), and what
a user wants to know about one (CogInfo)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import rasterio
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader

from bq_pipelines.lib import tiff
from bq_pipelines.lib.cog.grid import crs_and_bbox
from bq_pipelines.lib.cog.settings import GDAL_CONFIG, CogProfileName
from bq_pipelines.lib.errors import CogError
from bq_pipelines.lib.hashing import sha256_file

log = logging.getLogger(__name__)

# rio-cogeo's cog_validate judges tiling with rasterio's is_tiled, which is false whenever the
# block is as wide as the raster: a correct 512-wide COG with 512x512 tiles is reported so.
_NOT_TILED = "The file is greater than 512xH or 512xW, but is not tiled"


@dataclass(frozen=True)
class CogInfo:
    """What a user wants to know about a COG (becomes materialization metadata)."""

    path: Path
    size: int
    sha256: str
    crs: str  # "EPSG:xxxx" when it is exactly that code, WKT otherwise
    epsg: int | None
    bounds: tuple[float, float, float, float]  # in the COG's CRS
    bbox_wgs84: tuple[float, float, float, float]  # of the footprint (rotated grids included)
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    overview_levels: list[int] = field(default_factory=list)
    profile: CogProfileName = "raw"


def validate_cog(path: Path) -> list[str]:
    """Errors that make `path` not a valid COG (empty list when valid).

    A file GDAL wrote in COG layout (and has not seen edited since) says so in its
    IMAGE_STRUCTURE metadata; its tiling and IFD/data order are then checked from GDAL's own TIFF
    metadata, on the one open dataset. Any other file goes through rio-cogeo's cog_validate,
    except its tiling test, which fails a correct COG exactly one block wide: a file counts as
    tiled when its first IFD has the TIFF tile tags, so stripped files still fail.
    """
    path = Path(path)
    try:
        with rasterio.Env(**GDAL_CONFIG), rasterio.open(path) as src:
            return cog_errors(src, path)
    except RasterioError as exc:
        return [f"{path}: cannot open ({exc})"]


def describe_cog(path: Path, profile: CogProfileName = "raw") -> CogInfo:
    """Read CogInfo from an existing COG."""
    path = Path(path)
    with rasterio.Env(**GDAL_CONFIG), rasterio.open(path) as src:
        return describe(src, path, path, profile)


def describe(src: DatasetReader, file: Path, path: Path, profile: CogProfileName) -> CogInfo:
    """CogInfo of the open COG `src`, read from `file`, to be found at `path`."""
    if src.crs is None:
        raise CogError(f"{path}: COG has no CRS")
    crs, epsg, bbox = crs_and_bbox(src.crs, src.transform, src.width, src.height, str(path))
    return CogInfo(
        path=path,
        size=file.stat().st_size,
        sha256=sha256_file(file),
        crs=crs,
        epsg=epsg,
        bounds=tuple(src.bounds),
        bbox_wgs84=bbox,
        width=src.width,
        height=src.height,
        count=src.count,
        dtype=src.dtypes[0],
        nodata=src.nodata,
        overview_levels=list(src.overviews(1)),
        profile=profile,
    )


def cog_errors(src: DatasetReader, path: Path) -> list[str]:
    if src.driver != "GTiff":
        return [f"{path}: not a GeoTIFF (GDAL reads it as {src.driver})"]
    if src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG":
        errors, cog_warnings = _gdal_layout_errors(src, path)
    else:
        # Imported here: rio-cogeo pulls in morecantile and pydantic (~0.3-1.4 s at start-up),
        # and the COGs we write (GDAL's COG layout) never need it.
        from rio_cogeo.cogeo import cog_validate

        _, errors, cog_warnings = cog_validate(str(path), quiet=True, config=GDAL_CONFIG)
        if _NOT_TILED in errors and tiff.first_directory_tags(path) >= tiff.TILE_TAGS:
            errors = [error for error in errors if error != _NOT_TILED]
    for warning in cog_warnings:
        # Warnings (e.g. a raster smaller than one block has no overviews) do not stop a
        # client from range-reading the file: keep them in the log, not in the errors.
        log.warning("COG %s: %s", path, warning)
    return list(errors)


def _gdal_layout_errors(src: DatasetReader, path: Path) -> tuple[list[str], list[str]]:
    """The checks of GDAL's validate_cloud_optimized_geotiff.py that its layout claim does not
    already settle: internal tiled overviews, IFDs before data, smallest overview's data first."""
    errors, cog_warnings = [], []
    if any(name.endswith(".ovr") for name in src.files):
        errors.append("Overviews found in external .ovr file. They should be internal")
    if max(src.width, src.height) > 512:
        if not tiff.first_directory_tags(path) >= tiff.TILE_TAGS:
            errors.append(_NOT_TILED)
        if not src.overviews(1):
            cog_warnings.append(
                "The file is greater than 512xH or 512xW, it is recommended "
                "to include internal overviews"
            )
    levels = [None, *range(len(src.overviews(1)))]  # the full resolution, then each overview
    ifds = [int(src.get_tag_item("IFD_OFFSET", "TIFF", bidx=1, ovr=level)) for level in levels]
    if ifds != sorted(ifds):
        errors.append(f"IFDs are not in the order full resolution, overviews: {ifds}")
    data = [
        int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1, ovr=level) or 0)
        for level in levels
    ]
    if data != sorted(data, reverse=True):
        errors.append(f"image data does not start with the smallest overview: {data}")
    written = [offset for offset in data if offset]  # 0: a sparse file's missing block
    if written and min(written) < max(ifds):
        errors.append("image data comes before an IFD")
    return errors, cog_warnings
