"""Cloud-Optimized GeoTIFF conversion and validation (rio-cogeo), with the legacy profiles.

Profile `raw` keeps CRS and resolution; `display` warps to EPSG:3857. Both: DEFLATE with a
predictor fitting the dtype, 512 px tiles, internal overviews, nodata kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds
from rio_cogeo.cogeo import cog_translate, cog_validate
from rio_cogeo.profiles import cog_profiles

from bq_pipelines.lib.errors import CogError

log = logging.getLogger(__name__)

CogProfileName = Literal["raw", "display"]

# Part of every settings fingerprint: bump it whenever the conversion logic changes the bytes of
# the output, so that already converted partitions are redone.
COG_ALGORITHM_VERSION = "1"

WEB_MERCATOR = "EPSG:3857"
# Web Mercator is undefined at the poles; a global source is clipped to the latitudes that
# EPSG:3857 (and every web map) covers, otherwise the suggested warp extent is absurd.
_WEB_MERCATOR_MAX_LAT = 85.0511287798066

# GDAL's block cache defaults to 5% of RAM; a fixed cap keeps the peak memory of a conversion
# independent of the machine and of the raster size (cog_translate streams by blocks anyway).
# No GDAL_NUM_THREADS: on 2 cores, threaded DEFLATE was not faster (bench/RESULTS.md).
# EBV cubes flatten (entity, time) into bands: global-mammals has 45,810 per scenario, beyond
# GDAL's default cap of 32,768 (the netCDF driver would drop the rest).
_GDAL_CONFIG: dict[str, Any] = {"GDAL_CACHEMAX": 256, "GDAL_MAX_BAND_COUNT": 1_000_000}

# VRT dataType names (rasterio keeps its own mapping private).
_GDAL_DTYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "uint64": "UInt64",
    "int64": "Int64",
    "float32": "Float32",
    "float64": "Float64",
}


@dataclass(frozen=True)
class RasterInput:
    """One input raster: a path, optionally a NetCDF/HDF subdataset and a band selection."""

    path: Path
    subdataset: str | None = None  # e.g. "lccs_class" or "/scenario_1/metric_1/ebv_cube"
    bands: tuple[int, ...] | None = None  # 1-based; None keeps every band
    # GDAL driver prefix of the subdataset name: NETCDF also reads netCDF-4 groups; HDF5 is for
    # plain HDF5 files that the netCDF library cannot open.
    subdataset_driver: Literal["NETCDF", "HDF5"] = "NETCDF"

    def gdal_name(self) -> str:
        """The name GDAL opens: the path, or `NETCDF:"path":variable` for a subdataset."""
        if self.subdataset is None:
            return str(self.path)
        if self.subdataset_driver == "HDF5":
            return f'HDF5:"{self.path}"://{self.subdataset.lstrip("/")}'
        return f'NETCDF:"{self.path}":{self.subdataset}'


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
        fields = dataclasses.asdict(self)
        if isinstance(self.nodata, float) and math.isnan(self.nodata):
            fields["nodata"] = "nan"  # json writes NaN, but spell it the same on every platform
        payload = json.dumps(
            {"algorithm": COG_ALGORITHM_VERSION, "settings": fields}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()


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


@dataclass(frozen=True)
class _Grid:
    """What stacked inputs must share to become bands of one raster."""

    crs: CRS
    transform: Affine
    width: int
    height: int
    dtype: str
    crs_assigned: bool = False  # the CRS comes from CogSettings.assign_crs, not the source


def to_cog(inputs: RasterInput | list[RasterInput], dst: Path, settings: CogSettings) -> CogInfo:
    """Convert one raster (or several, stacked as bands in order) into a validated COG at `dst`.

    Raises CogError naming the input when it is unreadable, has no CRS (and none is assigned),
    or when the output does not validate. Writes atomically (temp file then rename).
    """
    inputs = [inputs] if isinstance(inputs, RasterInput) else list(inputs)
    if not inputs:
        raise CogError(f"{dst}: no input raster given")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        stack.enter_context(rasterio.Env(**_GDAL_CONFIG))  # inspection opens the inputs too
        source, indexes, dtype = _prepare_source(inputs, settings, stack, work_dir=dst.parent)
        tmp = _temp_path_beside(dst)
        try:
            _translate(source, tmp, indexes, dtype, settings)
            errors = validate_cog(tmp)
            if errors:
                raise CogError(f"{dst}: output is not a valid COG: {'; '.join(errors)}")
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
    log.info("wrote COG %s (%s profile) from %s", dst, settings.profile, _names(inputs))
    return describe_cog(dst, settings.profile)


@contextmanager
def band_extractor(
    source: RasterInput, settings: CogSettings, work_dir: Path
) -> Iterator[Callable[[int], RasterInput]]:
    """Open a many-band source once; `extract(band)` copies one band, block by block, into a
    plain one-band GeoTIFF under `work_dir` and returns it as an input for `to_cog`.

    Opening a 45,810-band EBV cube takes seconds: once per partition instead of once per item
    (measured 11.4 s -> 0.15 s an item).
    """
    whole = dataclasses.replace(source, bands=None)
    with rasterio.Env(**_GDAL_CONFIG):
        grid = _inspect(whole, settings)
        with _open_input(whole) as src:

            def extract(band: int) -> RasterInput:
                if not 1 <= band <= src.count:
                    raise CogError(
                        f"{whole.gdal_name()}: band {band} does not exist ({src.count} bands)"
                    )
                path = work_dir / f"band-{band:06d}.tif"
                with rasterio.open(
                    path,
                    "w",
                    driver="GTiff",
                    width=src.width,
                    height=src.height,
                    count=1,
                    dtype=src.dtypes[band - 1],
                    crs=grid.crs,
                    transform=src.transform,
                    nodata=src.nodatavals[band - 1],
                    tiled=True,
                    blockxsize=256,
                    blockysize=256,
                ) as out:
                    for _, window in out.block_windows(1):
                        out.write(src.read(band, window=window), 1, window=window)
                    if src.descriptions[band - 1]:
                        out.set_band_description(1, src.descriptions[band - 1])
                return RasterInput(path)

            yield extract


def validate_cog(path: Path) -> list[str]:
    """Errors that make `path` not a valid COG (empty list when valid)."""
    try:
        _, errors, cog_warnings = cog_validate(str(path), quiet=True, config=_GDAL_CONFIG)
    except RasterioError as exc:
        return [f"{path}: cannot open ({exc})"]
    for warning in cog_warnings:
        # Warnings (e.g. a raster smaller than one block has no overviews) do not stop a
        # client from range-reading the file: keep them in the log, not in the errors.
        log.warning("COG %s: %s", path, warning)
    return list(errors)


def describe_cog(path: Path, profile: CogProfileName = "raw") -> CogInfo:
    """Read CogInfo from an existing COG."""
    path = Path(path)
    with rasterio.open(path) as src:
        if src.crs is None:
            raise CogError(f"{path}: COG has no CRS")
        epsg = src.crs.to_epsg()
        bounds = tuple(src.bounds)
        # Densified so that the WGS84 box of a curved projected footprint covers every edge.
        bbox = transform_bounds(src.crs, "EPSG:4326", *bounds, densify_pts=21)
        return CogInfo(
            path=path,
            size=path.stat().st_size,
            sha256=_sha256(path),
            crs=f"EPSG:{epsg}" if epsg is not None else src.crs.to_wkt(),
            epsg=epsg,
            bounds=bounds,  # type: ignore[arg-type]
            bbox_wgs84=tuple(bbox),  # type: ignore[arg-type]
            width=src.width,
            height=src.height,
            count=src.count,
            dtype=src.dtypes[0],
            nodata=src.nodata,
            overview_levels=list(src.overviews(1)),
            profile=profile,
        )


# --- conversion steps -------------------------------------------------------------------------


def cog_creation_options(dtype: str, settings: CogSettings) -> dict[str, Any]:
    """GTiff creation options of the final COG: rio-cogeo's deflate profile, tuned per dtype."""
    options = dict(cog_profiles.get("deflate"))
    options.update(
        blockxsize=settings.blocksize,
        blockysize=settings.blocksize,
        zlevel=settings.deflate_level,
        predictor=predictor_for(dtype, settings.categorical),
    )
    return options


def predictor_for(dtype: str, categorical: bool) -> int:
    """TIFF predictor: 2 (horizontal differencing) for integers, 3 (floating point) for floats.

    Categorical rasters get no predictor: differencing class codes produces as many distinct
    symbols as there are class boundaries, and DEFLATE then compresses worse than on the raw codes
    (measured on a patchy 11-class uint8 raster, 4000x4000: predictor 2 is 8% larger, see
    bench/RESULTS.md).
    """
    kind = np.dtype(dtype).kind
    if categorical:
        return 1
    if kind == "f":
        return 3
    if kind in "iu":
        return 2
    return 1  # complex: GDAL has no predictor for it


def _overview_resampling(settings: CogSettings) -> str:
    # `mode` keeps the majority class of each block (nearest would pick an arbitrary pixel and
    # alias thin classes away); `average` is the faithful summary of a continuous field.
    return "mode" if settings.categorical else "average"


def _warp_resampling(settings: CogSettings) -> str:
    # Classes must stay classes: never interpolate categorical codes.
    return "nearest" if settings.categorical else "bilinear"


def _translate(
    source: str | DatasetReader | WarpedVRT,
    tmp: Path,
    indexes: tuple[int, ...] | None,
    dtype: str,
    settings: CogSettings,
) -> None:
    try:
        cog_translate(
            source,
            str(tmp),
            cog_creation_options(dtype, settings),
            indexes=list(indexes) if indexes else None,
            nodata=settings.nodata,
            add_mask=False,
            overview_resampling=_overview_resampling(settings),  # type: ignore[arg-type]
            overview_level=overview_level_for(source, settings.blocksize),
            resampling=_warp_resampling(settings),  # type: ignore[arg-type]
            # Never in memory: a 43200x20880 float CHELSA layer is 3.6 GB; the intermediate
            # tiled file goes beside `tmp` (rio-cogeo puts it in the destination folder).
            in_memory=False,
            config=_GDAL_CONFIG,
            forward_band_tags=True,
            quiet=True,
        )
    except (RasterioError, ValueError) as exc:
        raise CogError(f"{source_name(source)}: conversion to COG failed: {exc}") from exc


def overview_level_for(source: str | DatasetReader | WarpedVRT, blocksize: int) -> int:
    """Halvings until the largest side fits in one block, as GDAL's COG driver does.

    rio-cogeo's default stops on the smallest side, leaving e.g. a 600x400 raster without
    overviews, which cog_validate then warns about.
    """
    if isinstance(source, str):
        with rasterio.open(source) as dataset:
            largest = max(dataset.width, dataset.height)
    else:
        largest = max(source.width, source.height)
    levels = 0
    while largest > blocksize:
        largest = math.ceil(largest / 2)
        levels += 1
    return levels


def source_name(source: str | DatasetReader | WarpedVRT) -> str:
    """A printable name of what cog_translate reads."""
    return source if isinstance(source, str) else str(source.name)


def _prepare_source(
    inputs: list[RasterInput], settings: CogSettings, stack: ExitStack, work_dir: Path
) -> tuple[str | DatasetReader | WarpedVRT, tuple[int, ...] | None, str]:
    """What cog_translate should read, which of its bands, and their dtype.

    A single georeferenced input is read directly (keeps its palette, tags and descriptions);
    stacked inputs, or an input whose CRS must be assigned, go through a hand-written VRT.
    """
    grids = [_inspect(inp, settings) for inp in inputs]
    if len(inputs) == 1 and not grids[0].crs_assigned:
        source: str | DatasetReader | WarpedVRT = inputs[0].gdal_name()
        indexes = inputs[0].bands
    else:
        _check_same_grid(inputs, grids)
        vrt_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=work_dir)))
        source = str(_write_stack_vrt(inputs, grids[0], vrt_dir / "stack.vrt"))
        indexes = None
    if settings.profile == "display":
        src = stack.enter_context(rasterio.open(source))
        source = stack.enter_context(_web_mercator_vrt(src, settings))
    return source, indexes, grids[0].dtype


@contextmanager
def _open_input(inp: RasterInput) -> Iterator[DatasetReader]:
    """Open an input, turning GDAL's failure into a CogError that names the input."""
    name = inp.gdal_name()
    if inp.subdataset is None and not Path(inp.path).exists():
        raise CogError(f"{name}: no such file")
    try:
        with warnings.catch_warnings():
            # A raster without geotransform is reported below as an error of ours.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(name)
    except RasterioError as exc:
        raise CogError(f"{name}: cannot read raster: {exc}") from exc
    with src:
        yield src


def _inspect(inp: RasterInput, settings: CogSettings) -> _Grid:
    """Check an input is usable (readable, georeferenced, bands exist) and return its grid."""
    name = inp.gdal_name()
    with _open_input(inp) as src:
        if src.transform.is_identity and not src.gcps[0]:
            raise CogError(
                f"{name}: has no geotransform (GDAL found no coordinates); for a NetCDF variable "
                "in a group, the grid mapping variable needs a GeoTransform attribute"
            )
        for band in inp.bands or ():
            if not 1 <= band <= src.count:
                raise CogError(f"{name}: band {band} does not exist (it has {src.count} bands)")
        crs, assigned = src.crs, False
        if crs is None:
            if settings.assign_crs is None:
                raise CogError(
                    f"{name}: has no CRS; set assign_crs (e.g. 'EPSG:4326') in the COG settings"
                )
            crs, assigned = CRS.from_user_input(settings.assign_crs), True
        elif settings.assign_crs is not None:
            log.warning("%s: has a CRS, assign_crs=%s ignored", name, settings.assign_crs)
        return _Grid(crs, src.transform, src.width, src.height, src.dtypes[0], assigned)


def _check_same_grid(inputs: list[RasterInput], grids: list[_Grid]) -> None:
    first = grids[0]
    for inp, grid in zip(inputs[1:], grids[1:], strict=True):
        problems = []
        if grid.crs != first.crs:
            problems.append(f"CRS {grid.crs} != {first.crs}")
        if (grid.width, grid.height) != (first.width, first.height):
            problems.append(f"size {grid.width}x{grid.height} != {first.width}x{first.height}")
        if not grid.transform.almost_equals(first.transform, precision=1e-9):
            problems.append(
                f"transform {tuple(grid.transform)[:6]} != {tuple(first.transform)[:6]}"
            )
        if grid.dtype != first.dtype:
            problems.append(f"dtype {grid.dtype} != {first.dtype}")
        if problems:
            raise CogError(
                f"{inp.gdal_name()}: cannot stack with {inputs[0].gdal_name()}: "
                + "; ".join(problems)
            )


def _write_stack_vrt(inputs: list[RasterInput], grid: _Grid, vrt_path: Path) -> Path:
    """Write a VRT whose bands are the selected bands of `inputs`, in order.

    rasterio has no buildvrt; a VRT of SimpleSources is a pass-through (no resampling), and its
    SRS element is also how a CRS is assigned to a source that has none.
    """
    root = ET.Element("VRTDataset", rasterXSize=str(grid.width), rasterYSize=str(grid.height))
    ET.SubElement(root, "SRS").text = grid.crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(v) for v in grid.transform.to_gdal())
    nodata_values: set[str] = set()
    band_number = 0
    for inp in inputs:
        with _open_input(inp) as src:
            for src_band in inp.bands or src.indexes:
                band_number += 1
                nodata = src.nodatavals[src_band - 1]
                nodata_values.add(repr(nodata))
                _add_vrt_band(root, band_number, src, src_band, inp.gdal_name(), nodata)
    if len(nodata_values) > 1:
        # A GeoTIFF has one nodata value for all its bands.
        raise CogError(
            f"{_names(inputs)}: inputs have different nodata values {sorted(nodata_values)}; "
            "set CogSettings.nodata"
        )
    ET.ElementTree(root).write(vrt_path, encoding="utf-8")
    return vrt_path


def _add_vrt_band(
    root: ET.Element,
    band_number: int,
    src: DatasetReader,
    src_band: int,
    name: str,
    nodata: float | None,
) -> None:
    band = ET.SubElement(
        root, "VRTRasterBand", dataType=_gdal_dtype(src.dtypes[0]), band=str(band_number)
    )
    if nodata is not None:
        ET.SubElement(band, "NoDataValue").text = "nan" if math.isnan(nodata) else repr(nodata)
    description = src.descriptions[src_band - 1]
    if description:
        ET.SubElement(band, "Description").text = description
    ET.SubElement(band, "Offset").text = repr(src.offsets[src_band - 1])
    ET.SubElement(band, "Scale").text = repr(src.scales[src_band - 1])
    source = ET.SubElement(band, "SimpleSource")
    ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = name
    ET.SubElement(source, "SourceBand").text = str(src_band)
    full = {"xOff": "0", "yOff": "0", "xSize": str(src.width), "ySize": str(src.height)}
    ET.SubElement(source, "SrcRect", full)
    ET.SubElement(source, "DstRect", full)


def _gdal_dtype(dtype: str) -> str:
    try:
        return _GDAL_DTYPES[dtype]
    except KeyError:
        raise CogError(f"cannot stack rasters of dtype {dtype}") from None


@contextmanager
def _web_mercator_vrt(src: DatasetReader, settings: CogSettings) -> Iterator[WarpedVRT]:
    """A warped view of `src` in EPSG:3857, clipped to Web Mercator's latitudes."""
    options: dict[str, Any] = {"crs": WEB_MERCATOR, "resampling": _warp_resampling_enum(settings)}
    if settings.nodata is not None:
        options.update(src_nodata=settings.nodata, nodata=settings.nodata)
    grid = _web_mercator_grid(src)
    if grid is not None:
        options.update(transform=grid[0], width=grid[1], height=grid[2])
    with WarpedVRT(src, **options) as vrt:
        yield vrt


def _warp_resampling_enum(settings: CogSettings) -> Resampling:
    return Resampling[_warp_resampling(settings)]


def _web_mercator_grid(src: DatasetReader) -> tuple[Affine, int, int] | None:
    """Output grid for a source reaching beyond ±85.05°; None lets GDAL suggest one."""
    west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
    if south >= -_WEB_MERCATOR_MAX_LAT and north <= _WEB_MERCATOR_MAX_LAT:
        return None
    south, north = max(south, -_WEB_MERCATOR_MAX_LAT), min(north, _WEB_MERCATOR_MAX_LAT)
    # Resolution as GDAL would suggest it for the part of the source that Web Mercator covers.
    left, bottom, right, top = transform_bounds(
        "EPSG:4326", src.crs, west, south, east, north, densify_pts=21
    )
    clipped_width = max(1, round((right - left) / abs(src.transform.a)))
    clipped_height = max(1, round((top - bottom) / abs(src.transform.e)))
    suggested, _, _ = calculate_default_transform(
        src.crs, WEB_MERCATOR, clipped_width, clipped_height, left, bottom, right, top
    )
    res = suggested.a
    left, bottom, right, top = transform_bounds(
        "EPSG:4326", WEB_MERCATOR, west, south, east, north, densify_pts=21
    )
    width = max(1, round((right - left) / res))
    height = max(1, round((top - bottom) / res))
    return Affine(res, 0.0, left, 0.0, -res, top), width, height


# --- small helpers ----------------------------------------------------------------------------


def _temp_path_beside(dst: Path) -> Path:
    # Same folder as dst so that os.replace is an atomic rename on the same filesystem.
    handle, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp.tif", dir=dst.parent)
    os.close(handle)
    return Path(name)


def _sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _names(inputs: list[RasterInput]) -> str:
    return ", ".join(inp.gdal_name() for inp in inputs)
