"""Cloud-Optimized GeoTIFF conversion and validation, with the legacy profiles.

Profile `raw` keeps CRS and resolution; `display` warps to EPSG:3857. Both: DEFLATE with a
predictor fitting the dtype, 512 px tiles, internal overviews, and everything GDAL knows about the
source: dtype, nodata and masks, units, descriptions, scale/offset, colour tables, dataset and band
tags. Category names and raster attribute tables, which a TIFF cannot hold (GDAL would put them in
an .aux.xml beside the file, which the object store never sees), become band metadata items of the
COG (see `categories`), read back by the STAC item.

How: GDAL serializes each input as a VRT (so nothing it knows about the input is dropped); the VRT
is edited here (band selection, stacking, assigned CRS, nodata, classes), warped for the display
profile, and written by GDAL's own COG driver.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import logging
import math
import os
import uuid
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader, MemoryFile
from rasterio.transform import from_gcps
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds
from rasterio.windows import Window

from bq_pipelines.lib import categories, files, georef, tiff, vrt
from bq_pipelines.lib.errors import CogError, RasterTooLarge, SourceRefused
from bq_pipelines.lib.hashing import sha256_bytes, sha256_file

log = logging.getLogger(__name__)

CogProfileName = Literal["raw", "display"]
CogCompression = Literal["deflate", "zstd"]
# ZSTD's fastest level: a 720x360 float32 band (global-mammals') encodes in half DEFLATE 6's time
# (12.6 against 26.4 ms) to the same size (bench/RESULTS.md, "Items produced from an EBV cube").
ZSTD_LEVEL = 1

# Part of every settings fingerprint: bump it whenever the conversion logic changes the bytes of
# the output, so that already converted partitions are redone.
# 2: GDAL's COG driver; display keeps dtypes and masks and marks invented pixels; category
#    names, attribute tables and CF flags become CLASSES_TAG/RAT_TAG; metadata kept on every path.
COG_ALGORITHM_VERSION = "2"

WEB_MERCATOR = "EPSG:3857"
# Web Mercator is undefined at the poles; a global source is clipped to the latitudes that
# EPSG:3857 (and every web map) covers, otherwise the suggested warp extent is absurd.
_WEB_MERCATOR_MAX_LAT = 85.0511287798066

# GDAL's block cache defaults to 5% of RAM; a fixed cap keeps the peak memory of a conversion
# independent of the machine and of the raster size (the COG driver streams by blocks anyway).
# No GDAL_NUM_THREADS: on 2 cores, threaded DEFLATE was not faster (bench/RESULTS.md).
# EBV cubes flatten (entity, time) into bands: global-mammals has 45,810 per scenario, beyond
# GDAL's default cap of 32,768 (the netCDF driver would drop the rest).
_GDAL_CONFIG: dict[str, Any] = {"GDAL_CACHEMAX": 256, "GDAL_MAX_BAND_COUNT": 1_000_000}

# rio-cogeo's cog_validate judges tiling with rasterio's is_tiled, which is false whenever the
# block is as wide as the raster: a correct 512-wide COG with 512x512 tiles is reported so.
_NOT_TILED = "The file is greater than 512xH or 512xW, but is not tiled"

# Bytes read at once when scanning a source for its value range (display profile).
_SCAN_BYTES = 64 << 20

# What rasterio says of a failed read: the GDAL errors before it say what happened.
_GENERIC_READ_ERROR = "Read failed. See previous exception for details."


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
    compression: CogCompression = "deflate"

    def fingerprint(self) -> str:
        """Stable hash of the settings, part of the skip-unchanged fingerprint."""
        fields = dataclasses.asdict(self)
        if self.compression == "deflate":
            # As before the choice existed: published DEFLATE partitions stay unchanged.
            del fields["compression"]
        else:
            fields["level"] = ZSTD_LEVEL
        if isinstance(self.nodata, float) and math.isnan(self.nodata):
            fields["nodata"] = "nan"  # json writes NaN, but spell it the same on every platform
        payload = json.dumps(
            {"algorithm": COG_ALGORITHM_VERSION, "settings": fields}, sort_keys=True
        )
        return sha256_bytes(payload)


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


@dataclass(frozen=True)
class _Grid:
    """What stacked inputs must share to become bands of one raster."""

    crs: CRS
    transform: Affine
    width: int
    height: int
    dtype: str
    crs_assigned: bool = False  # the CRS comes from CogSettings.assign_crs, not the source
    gcps_only: bool = False  # placed by ground control points: rectified by a warp


def to_cog(
    inputs: RasterInput | list[RasterInput],
    dst: Path,
    settings: CogSettings,
    max_pixels: int | None = None,
) -> CogInfo:
    """Convert one raster (or several, stacked as bands in order) into a validated COG at `dst`.

    Raises CogError naming the input when it is unreadable (a truncated TIFF, a NetCDF variable
    that is not there...), has no CRS (and none is assigned), or has a CRS that cannot be placed
    on WGS84 (all found before anything is written), or when the output does not validate;
    SourceRefused when the input is XML (a VRT can read any file), RasterTooLarge when it holds
    more than `max_pixels` (width x height x bands read), found from its header before any
    conversion.
    Writes atomically (temp file then rename).
    """
    inputs = [inputs] if isinstance(inputs, RasterInput) else list(inputs)
    if not inputs:
        raise CogError(f"{dst}: no input raster given")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        stack.enter_context(rasterio.Env(**_GDAL_CONFIG))
        source, dtype = _prepare_source(inputs, settings, stack, max_pixels)
        tmp = _temp_path_beside(dst)
        try:
            _write_cog(source, tmp, dst, dtype, settings, inputs)
            with rasterio.open(tmp) as out:  # one open to check and describe
                errors = _cog_errors(out, tmp)
                if errors:
                    raise CogError(f"{dst}: output is not a valid COG: {'; '.join(errors)}")
                info = _describe(out, tmp, dst, settings.profile)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
            _pam_sidecar(tmp).unlink(missing_ok=True)
    log.info("wrote COG %s (%s profile) from %s", dst, settings.profile, _names(inputs))
    return info


@dataclass(frozen=True)
class BandFacts:
    """What a many-band source says of each of its bands, read once (picklable: a partition's
    worker processes receive it instead of reading it again, ~30 s for a 45,810-band cube)."""

    dtypes: tuple[str, ...]
    nodata: tuple[float | None, ...]
    masked: tuple[bool, ...]  # an internal (per-dataset) mask
    descriptions: tuple[str | None, ...]
    units: tuple[str | None, ...]
    scales: tuple[float, ...]
    offsets: tuple[float, ...]
    tags: dict[str, str]  # the dataset's
    classes: dict[int, dict[str, str]]  # CLASSES_TAG/RAT_TAG of the bands that have them

    @classmethod
    def of(cls, src: DatasetReader) -> BandFacts:
        # rasterio builds each per-band tuple over every band at each access: read them once.
        return cls(
            dtypes=tuple(src.dtypes),
            nodata=tuple(src.nodatavals),
            masked=tuple(MaskFlags.per_dataset in flags for flags in src.mask_flag_enums),
            descriptions=tuple(src.descriptions),
            units=tuple(src.units),
            scales=tuple(src.scales),
            offsets=tuple(src.offsets),
            tags=src.tags(),
            classes=categories.classification_tags_by_band(src),
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BandFacts:
        fields = json.loads(text)
        return cls(
            **{name: tuple(fields[name]) for name in _BAND_FACTS_TUPLES},
            tags=dict(fields["tags"]),
            classes={int(band): dict(tags) for band, tags in fields["classes"].items()},
        )


_BAND_FACTS_TUPLES = ("dtypes", "nodata", "masked", "descriptions", "units", "scales", "offsets")
# Bump when BandFacts or what it reads changes: cached facts of another version are not used.
_BAND_FACTS_VERSION = "1"


def _facts_cache_file(cache_dir: Path, source: RasterInput) -> Path:
    """Where the facts of `source` are kept: named after the file (its path, size and
    modification time), the subdataset and GDAL's version, so that a changed file, another
    variable or another GDAL never reads stale facts."""
    stat = Path(source.path).stat()
    key = json.dumps(
        [
            _BAND_FACTS_VERSION,
            rasterio.__gdal_version__,
            str(Path(source.path).resolve()),
            stat.st_size,
            stat.st_mtime_ns,
            source.subdataset,
            source.subdataset_driver,
        ]
    )
    return cache_dir / f"{sha256_bytes(key)}.json"


def _cached_facts(cache_dir: Path | None, source: RasterInput) -> BandFacts | None:
    if cache_dir is None:
        return None
    try:
        return BandFacts.from_json(_facts_cache_file(cache_dir, source).read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:  # unreadable: read them again
        log.warning("band facts of %s: cache not used (%s)", source.gdal_name(), error)
        return None


def _facts_of(src: DatasetReader, source: RasterInput, cache_dir: Path | None) -> BandFacts:
    """The facts of the open `src`: from the cache when they are there, else read (~30 s for a
    45,810-band cube) and kept in the cache for the next partition of the same file."""
    cached = _cached_facts(cache_dir, source)
    if cached is not None:
        return cached
    facts = BandFacts.of(src)
    if cache_dir is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            files.write_text_atomically(_facts_cache_file(cache_dir, source), facts.to_json())
        except OSError as error:  # a cache, not a result: the partition goes on
            log.warning("band facts of %s: not cached (%s)", source.gdal_name(), error)
    return facts


class _ManyBandReader(DatasetReader):  # type: ignore[misc]  # rasterio ships no stubs
    """rasterio's reader with the bands' mask flags and indexes read once: its `read` looks at
    every band's flags at each call (0.36 s a call on a 45,810-band cube) and builds the tuple
    of every band index three times (~5 ms a call there, as much as reading the band). A
    read-only dataset's flags and bands do not change."""

    @functools.cached_property
    def mask_flag_enums(self) -> tuple[list[MaskFlags], ...]:
        flags: tuple[list[MaskFlags], ...] = super().mask_flag_enums
        return flags

    @functools.cached_property
    def indexes(self) -> tuple[int, ...]:
        indexes: tuple[int, ...] = super().indexes
        return indexes


@contextmanager
def band_extractor(
    source: RasterInput,
    settings: CogSettings,
    work_dir: Path,
    max_pixels: int | None = None,
    facts: BandFacts | None = None,
) -> Iterator[Callable[[int], RasterInput]]:
    """Open a many-band source once; `extract(band)` copies one band, in strips, into a plain
    one-band GeoTIFF under `work_dir` and returns it as an input for `to_cog`.

    The copy keeps what the band says about itself (nodata, mask, description, unit,
    scale/offset, colour table, tags, classes) and the dataset tags. Opening a 45,810-band EBV
    cube takes seconds, reading what each band says ~30 s: once per partition instead of once
    per item; `facts` (from `band_facts`) skips the second. Each item reads one band:
    `max_pixels` bounds width x height.
    """
    whole = dataclasses.replace(source, bands=None)
    with rasterio.Env(**_GDAL_CONFIG), _open_input(whole, _ManyBandReader) as src:
        grid = _grid(whole, _layout_of_dataset(src), settings)
        _refuse_oversized([whole], src.width, src.height, 1, max_pixels)
        known = facts if facts is not None else BandFacts.of(src)

        def extract(band: int) -> RasterInput:
            if not 1 <= band <= src.count:
                raise CogError(
                    f"{whole.gdal_name()}: band {band} does not exist ({src.count} bands)"
                )
            path = work_dir / f"band-{band:06d}.tif"
            try:
                _copy_band(src, band, grid, known, path)
            except RasterioError as error:
                raise _unreadable([whole], error) from error
            return RasterInput(path)

        yield extract


@dataclass(frozen=True)
class BandCog:
    """One band of a many-band source converted: its COG (validated, at `info.path`) and, when it
    was converted from memory, the band's values as a reader of the COG sees them (masked as
    rasterio's `read(masked=True)` masks them), so that the item's statistics need not read
    the COG back."""

    info: CogInfo
    values: np.ma.MaskedArray | None = None


@contextmanager
def band_converter(
    source: RasterInput,
    settings: CogSettings,
    work_dir: Path,
    max_pixels: int | None = None,
    facts: BandFacts | None = None,
    facts_cache: Path | None = None,
) -> Iterator[Callable[[int, Path], BandCog]]:
    """Open a many-band source once; `convert(band, dst)` writes band `band` as a validated COG
    at `dst`.

    The band is read whole (one read), put in a GDAL in-memory dataset with everything the
    staging-file path (`band_extractor` then `to_cog`) would give it, and written by the COG
    driver to memory: no staging GeoTIFF, no VRT, the same COG bytes (tested). Bands that path
    does not cover (an internal mask, a colour table, the display profile, a grid placed by
    ground control points) take the staging-file path. What is the same for every band (CRS,
    bounds, footprint) is worked out once. `facts` (from `band_facts`) skips reading what each
    band says; else they are read, or found in `facts_cache` (a folder) when the same file was
    read before.
    """
    whole = dataclasses.replace(source, bands=None)
    with rasterio.Env(**_GDAL_CONFIG), _open_input(whole, _ManyBandReader) as src:
        grid = _grid(whole, _layout_of_dataset(src), settings)
        _refuse_oversized([whole], src.width, src.height, 1, max_pixels)
        known = facts if facts is not None else _facts_of(src, whole, facts_cache)
        place = _Placement.of(grid, whole)

        def staged(band: int, dst: Path) -> BandCog:
            path = work_dir / f"band-{band:06d}.tif"
            try:
                try:
                    _copy_band(src, band, grid, known, path)
                except RasterioError as error:
                    raise _unreadable([whole], error) from error
                return BandCog(to_cog(RasterInput(path), dst, settings, max_pixels))
            finally:
                path.unlink(missing_ok=True)

        def convert(band: int, dst: Path) -> BandCog:
            if not 1 <= band <= src.count:
                raise CogError(
                    f"{whole.gdal_name()}: band {band} does not exist ({src.count} bands)"
                )
            if not _from_memory(src, band, grid, known, settings):
                return staged(band, dst)
            try:
                values = src.read(band)
            except RasterioError as error:
                raise _unreadable([whole], error) from error
            band_tags = {**src.tags(band), **known.classes.get(band, {})}
            return _band_cog(values, band, band_tags, known, place, settings, Path(dst))

        yield convert


@dataclass(frozen=True)
class _Placement:
    """Where every band of a source lies: its grid, and the CogInfo fields that follow."""

    grid: _Grid
    crs: str
    epsg: int | None
    bounds: tuple[float, float, float, float]
    bbox_wgs84: tuple[float, float, float, float]

    @classmethod
    def of(cls, grid: _Grid, source: RasterInput) -> _Placement:
        crs, epsg, bbox = _crs_and_bbox(
            grid.crs, grid.transform, grid.width, grid.height, source.gdal_name()
        )
        return cls(
            grid=grid,
            crs=crs,
            epsg=epsg,
            bounds=dataset_bounds(grid.transform, grid.width, grid.height),
            bbox_wgs84=bbox,
        )


def _crs_and_bbox(
    crs: CRS, transform: Affine, width: int, height: int, where: str
) -> tuple[str, int | None, tuple[float, float, float, float]]:
    """What CogInfo says of a grid's CRS ("EPSG:xxxx" when it is exactly that code, WKT
    otherwise), its EPSG code, and the WGS84 bbox of its footprint."""
    epsg = georef.exact_epsg(crs)
    try:
        footprint = georef.footprint_wgs84(crs, transform, width, height)
    except georef.GeorefError as error:
        raise CogError(f"{where}: {error}") from None
    return (f"EPSG:{epsg}" if epsg is not None else crs.to_wkt()), epsg, footprint.bbox


def dataset_bounds(transform: Affine, width: int, height: int) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) as rasterio's `dataset.bounds` computes them."""
    a, b, c, d, e, f = tuple(transform)[:6]
    if b == d == 0:
        return c, f + e * height, c + a * width, f
    corners = [transform * point for point in ((0, 0), (0, height), (width, height), (width, 0))]
    xs, ys = [x for x, _ in corners], [y for _, y in corners]
    return min(xs), min(ys), max(xs), max(ys)


def _from_memory(
    src: DatasetReader, band: int, grid: _Grid, facts: BandFacts, settings: CogSettings
) -> bool:
    """Whether `band` can be converted from memory (see `band_converter`)."""
    index = band - 1
    if settings.profile != "raw" or grid.gcps_only or facts.masked[index]:
        return False
    if settings.nodata is not None and not _fits(settings.nodata, facts.dtypes[index]):
        return False  # rasterio refuses it; what GDAL makes of it is the VRT path's business
    if np.dtype(facts.dtypes[index]) not in (np.uint8, np.uint16):
        return True  # GDAL keeps colour tables for 8 and 16-bit bands only
    try:
        src.colormap(band)
    except ValueError:  # no colour table
        return True
    return False


def _fits(value: float, dtype: str) -> bool:
    kind = np.dtype(dtype).kind
    if kind == "f":
        return math.isnan(value) or bool(np.finfo(dtype).min <= value <= np.finfo(dtype).max)
    if kind in "iu":
        info = np.iinfo(dtype)
        return not math.isnan(value) and info.min <= value <= info.max
    return False


def _band_cog(
    values: np.ndarray,
    band: int,
    band_tags: dict[str, str],
    facts: BandFacts,
    place: _Placement,
    settings: CogSettings,
    dst: Path,
) -> BandCog:
    """`values` (band `band`) written as a validated COG at `dst`, with the metadata that
    `_copy_band` and `_source_vrt` give it on the staging-file path."""
    index, grid = band - 1, place.grid
    dtype = facts.dtypes[index]
    nodata = settings.nodata if settings.nodata is not None else facts.nodata[index]
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path_beside(dst)
    try:
        with rasterio.open(
            f"/vsimem/band-{uuid.uuid4().hex}",
            "w+",
            driver="MEM",
            width=grid.width,
            height=grid.height,
            count=1,
            dtype=dtype,
            crs=grid.crs,
            transform=grid.transform,
            nodata=nodata,
        ) as mem:
            mem.write(values, 1)
            mem.update_tags(**{**facts.tags, "OVERVIEW_RESAMPLING": _overview_resampling(settings)})
            mem.update_tags(1, **band_tags)
            if facts.descriptions[index]:
                mem.set_band_description(1, facts.descriptions[index])
            if facts.units[index]:
                mem.set_band_unit(1, facts.units[index])
            mem.scales = (facts.scales[index],)
            mem.offsets = (facts.offsets[index],)
            # What a reader of the COG gets with masked=True (rasterio): GDAL's nodata mask
            # when there is a nodata, else no mask at all.
            mask = np.ma.nomask if nodata is None else mem.read_masks(1) == 0
            with MemoryFile(ext=".tif") as memory:
                _write_cog(mem, memory.name, dst, dtype, settings, [])
                cog_bytes = memory.read()
                tmp.write_bytes(cog_bytes)
                with memory.open() as out:
                    errors = _cog_errors(out, tmp)
                    if errors:
                        raise CogError(f"{dst}: output is not a valid COG: {'; '.join(errors)}")
                    overview_levels = list(out.overviews(1))
                    written_nodata = out.nodata
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    info = CogInfo(
        path=dst,
        size=len(cog_bytes),
        sha256=sha256_bytes(cog_bytes),
        crs=place.crs,
        epsg=place.epsg,
        bounds=place.bounds,
        bbox_wgs84=place.bbox_wgs84,
        width=grid.width,
        height=grid.height,
        count=1,
        dtype=dtype,
        nodata=written_nodata,
        overview_levels=overview_levels,
        profile=settings.profile,
    )
    return BandCog(info, np.ma.MaskedArray(values, mask=mask, fill_value=nodata))


def band_facts(
    source: RasterInput,
    settings: CogSettings,
    max_pixels: int | None = None,
    cache: Path | None = None,
) -> BandFacts:
    """What `band_extractor` reads of each band of `source`, to hand to other processes; the
    same checks (readable, georeferenced, size). `cache`: a folder where the facts of a file
    already read are found (and kept)."""
    whole = dataclasses.replace(source, bands=None)
    with rasterio.Env(**_GDAL_CONFIG), _open_input(whole, _ManyBandReader) as src:
        _grid(whole, _layout_of_dataset(src), settings)
        _refuse_oversized([whole], src.width, src.height, 1, max_pixels)
        return _facts_of(src, whole, cache)


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
        with rasterio.Env(**_GDAL_CONFIG), rasterio.open(path) as src:
            return _cog_errors(src, path)
    except RasterioError as exc:
        return [f"{path}: cannot open ({exc})"]


def describe_cog(path: Path, profile: CogProfileName = "raw") -> CogInfo:
    """Read CogInfo from an existing COG."""
    path = Path(path)
    with rasterio.Env(**_GDAL_CONFIG), rasterio.open(path) as src:
        return _describe(src, path, path, profile)


def _describe(src: DatasetReader, file: Path, path: Path, profile: CogProfileName) -> CogInfo:
    """CogInfo of the open COG `src`, read from `file`, to be found at `path`."""
    if src.crs is None:
        raise CogError(f"{path}: COG has no CRS")
    crs, epsg, bbox = _crs_and_bbox(src.crs, src.transform, src.width, src.height, str(path))
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


def _cog_errors(src: DatasetReader, path: Path) -> list[str]:
    if src.driver != "GTiff":
        return [f"{path}: not a GeoTIFF (GDAL reads it as {src.driver})"]
    if src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG":
        errors, cog_warnings = _gdal_layout_errors(src, path)
    else:
        # Imported here: rio-cogeo pulls in morecantile and pydantic (~0.3-1.4 s at start-up),
        # and the COGs we write (GDAL's COG layout) never need it.
        from rio_cogeo.cogeo import cog_validate

        _, errors, cog_warnings = cog_validate(str(path), quiet=True, config=_GDAL_CONFIG)
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


# --- COG writing ------------------------------------------------------------------------------


def cog_creation_options(dtype: str, settings: CogSettings) -> dict[str, Any]:
    """Creation options of GDAL's COG driver for the final COG."""
    return {
        "COMPRESS": settings.compression.upper(),
        "LEVEL": settings.deflate_level if settings.compression == "deflate" else ZSTD_LEVEL,
        "PREDICTOR": {1: "NO", 2: "STANDARD", 3: "FLOATING_POINT"}[
            predictor_for(dtype, settings.categorical)
        ],
        "BLOCKSIZE": settings.blocksize,
        # Halvings until the largest side fits in one block (OVERVIEWS=AUTO).
        "OVERVIEW_RESAMPLING": _overview_resampling(settings),
    }


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
    return "MODE" if settings.categorical else "AVERAGE"


def _warp_resampling(settings: CogSettings) -> Resampling:
    # Classes must stay classes: never interpolate categorical codes.
    return Resampling.nearest if settings.categorical else Resampling.bilinear


def _write_cog(
    source: str | DatasetReader,
    tmp: Path | str,
    dst: Path,
    dtype: str,
    settings: CogSettings,
    inputs: Sequence[RasterInput],
) -> None:
    try:
        rasterio.shutil.copy(
            source, str(tmp), driver="COG", **cog_creation_options(dtype, settings)
        )
    except Exception as exc:  # rasterio raises GDAL's CPLE_* classes, which it does not export
        if inputs and _is_read_error(exc):
            raise _unreadable(inputs, exc) from exc
        raise CogError(f"{dst}: conversion to COG failed: {exc}") from exc


# --- inputs -----------------------------------------------------------------------------------


@contextmanager
def _open_input(
    inp: RasterInput, reader: type[DatasetReader] | None = None
) -> Iterator[DatasetReader]:
    """Open an input (with `reader`, a DatasetReader class, or rasterio.open), turning GDAL's
    failure into a CogError that names the input."""
    name = inp.gdal_name()
    _require_file(inp)
    try:
        with warnings.catch_warnings():
            # A raster without geotransform is reported below as an error of ours.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(name) if reader is None else reader(name)
    except RasterioError as exc:
        raise _unreadable([inp], exc) from exc
    with src:
        yield src


def _gdal_messages(error: BaseException) -> list[str]:
    """What GDAL said, from the error and the ones chained before it, without rasterio's
    generic "Read failed" (which only points at them)."""
    messages: list[str] = []
    seen: BaseException | None = error
    while seen is not None:
        text = str(seen).strip()
        if text and text != _GENERIC_READ_ERROR and text not in messages:
            messages.append(text)
        seen = seen.__cause__ or seen.__context__
    return messages


def _is_read_error(error: BaseException) -> bool:
    markers = ("IReadBlock", "TIFFRead", "TIFFFill", "Read error", _GENERIC_READ_ERROR)
    seen: BaseException | None = error
    while seen is not None:
        if any(marker in str(seen) for marker in markers):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _signature(path: Path, size: int = 4) -> bytes:
    try:
        with Path(path).open("rb") as stream:
            return stream.read(size)
    except OSError:
        return b""


def _unreadable(inputs: Sequence[RasterInput], error: BaseException) -> CogError:
    """What a user can act on when GDAL cannot open or read an input: a variable that is not in
    the NetCDF (and those that are), a truncated or corrupt TIFF, or GDAL's own words."""
    messages = _gdal_messages(error)
    named = [i for i in inputs if any(i.path.name in m for m in messages)]
    inp = named[0] if named else inputs[0]
    if inp.subdataset is not None:
        variables = _subdataset_names(inp.path)
        wanted = inp.subdataset.strip("/")
        if variables and wanted not in variables:
            return CogError(
                f"{inp.path}: no variable {inp.subdataset!r} (it has: {', '.join(variables)})"
            )
    reason = "; ".join(messages) or type(error).__name__
    if tiff.is_tiff(Path(inp.path)):
        return CogError(f"{inp.path}: truncated or corrupt TIFF (GDAL: {reason})")
    return CogError(f"{inp.gdal_name()}: cannot read raster: {reason}")


def _subdataset_names(path: Path) -> list[str]:
    """The variables (or group paths) GDAL lists in a NetCDF/HDF file; [] when it cannot."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as container:
                listed = container.subdatasets
                # A file of one raster variable lists no subdatasets: GDAL opens that variable
                # itself, and its bands name it.
                opened = {container.tags(band).get("NETCDF_VARNAME") for band in container.indexes}
    except RasterioError:
        return []
    if not listed:
        return sorted(name for name in opened if name)
    # `NETCDF:"file.nc":/group/var`, `netcdf:file.nc:var`, `HDF5:"file.h5"://group/var`
    return [name.rpartition(":")[2].strip("/") for name in listed]


def _refuse_xml(inp: RasterInput) -> None:
    """A source that is an XML document (a GDAL VRT, WMS or tile index) could make GDAL read
    any file or URL: never a source, whatever its name."""
    head = _signature(inp.path, 512).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<"):
        raise SourceRefused(
            str(inp.path),
            "an XML document (a GDAL VRT or another format that can point at other files or "
            "URLs): not accepted as a source",
        )


def _refuse_oversized(
    inputs: Sequence[RasterInput], width: int, height: int, bands: int, max_pixels: int | None
) -> None:
    """RasterTooLarge when width x height x bands is over `max_pixels` (None: no limit)."""
    pixels = width * height * bands
    if max_pixels is not None and pixels > max_pixels:
        raise RasterTooLarge(
            str(inputs[0].path) if len(inputs) == 1 else _names(list(inputs)),
            f"{width} x {height} pixels x {bands} bands is {pixels} pixels, more than the "
            f"limit of {max_pixels}",
        )


@dataclass(frozen=True)
class _Layout:
    """What GDAL says about an input's grid, read from an open dataset or from its VRT."""

    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine | None  # None when the input has no geotransform
    gcps: list[GroundControlPoint]
    gcps_crs: CRS | None


def _layout_of_dataset(src: DatasetReader) -> _Layout:
    gcps, gcps_crs = src.gcps
    transform = None if src.transform.is_identity else src.transform
    return _Layout(
        src.width, src.height, src.count, src.dtypes[0], src.crs, transform, gcps, gcps_crs
    )


def _layout_of_vrt(root: ET.Element) -> _Layout:
    bands = root.findall("VRTRasterBand")
    geotransform = root.findtext("GeoTransform")
    transform = (
        Affine.from_gdal(*(float(v) for v in geotransform.split(","))) if geotransform else None
    )
    srs = root.findtext("SRS")
    gcp_list = root.find("GCPList")
    gcps = [
        GroundControlPoint(
            row=float(gcp.get("Line", "0")),
            col=float(gcp.get("Pixel", "0")),
            x=float(gcp.get("X", "0")),
            y=float(gcp.get("Y", "0")),
            z=float(gcp.get("Z", "0")),
        )
        for gcp in (gcp_list.findall("GCP") if gcp_list is not None else [])
    ]
    gcps_srs = gcp_list.get("Projection") if gcp_list is not None else None
    return _Layout(
        width=int(root.get("rasterXSize", "0")),
        height=int(root.get("rasterYSize", "0")),
        count=len(bands),
        dtype=vrt.numpy_dtype(bands[0].get("dataType", "Byte")) if bands else "uint8",
        crs=CRS.from_wkt(srs) if srs else None,
        transform=None if transform is None or transform.is_identity else transform,
        gcps=gcps,
        gcps_crs=CRS.from_wkt(gcps_srs) if gcps_srs else None,
    )


def _grid(inp: RasterInput, layout: _Layout, settings: CogSettings) -> _Grid:
    """Check an input is usable (georeferenced, bands exist, its CRS reaches WGS84) and return
    its grid."""
    name = inp.gdal_name()
    if layout.transform is None and not layout.gcps:
        raise CogError(
            f"{name}: has no geotransform (GDAL found no coordinates); for a NetCDF variable "
            "in a group, the grid mapping variable needs a GeoTransform attribute"
        )
    for band in inp.bands or ():
        if not 1 <= band <= layout.count:
            raise CogError(f"{name}: band {band} does not exist (it has {layout.count} bands)")
    gcps_only = layout.transform is None
    crs, assigned = layout.gcps_crs if gcps_only else layout.crs, False
    if crs is None:
        if settings.assign_crs is None:
            raise CogError(
                f"{name}: has no CRS; set assign_crs (e.g. 'EPSG:4326') in the COG settings"
            )
        crs, assigned = CRS.from_user_input(settings.assign_crs), True
    elif settings.assign_crs is not None:
        log.warning("%s: has a CRS, assign_crs=%s ignored", name, settings.assign_crs)
    transform = from_gcps(layout.gcps) if layout.transform is None else layout.transform
    try:
        georef.require_wgs84(crs, transform, layout.width, layout.height)
    except georef.GeorefError as error:
        raise CogError(f"{name}: {error}") from None
    return _Grid(crs, transform, layout.width, layout.height, layout.dtype, assigned, gcps_only)


def _input_vrt(inp: RasterInput) -> ET.Element:
    """GDAL's VRT of an input; CogError naming it when it is missing or unreadable."""
    _require_file(inp)
    try:
        return vrt.serialize(inp.gdal_name())
    except CogError as error:
        raise _unreadable([inp], error.__cause__ or error) from error


def _require_file(inp: RasterInput) -> None:
    if not Path(inp.path).exists():
        raise CogError(f"{inp.gdal_name()}: no such file")
    _refuse_xml(inp)
    if tiff.is_tiff(Path(inp.path)):
        cut = tiff.truncation(Path(inp.path))
        if cut is not None:
            raise CogError(f"{inp.path}: truncated or corrupt TIFF ({cut})")


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


# --- the source VRT ---------------------------------------------------------------------------


def _prepare_source(
    inputs: list[RasterInput],
    settings: CogSettings,
    stack: ExitStack,
    max_pixels: int | None = None,
) -> tuple[str, str]:
    """The VRT the COG driver reads (selected/stacked bands, metadata, warp), in memory for as
    long as `stack`, and its dtype. Only headers are read before the size check."""
    roots = [_input_vrt(inp) for inp in inputs]
    layouts = [_layout_of_vrt(root) for root in roots]
    grids = [_grid(inp, layout, settings) for inp, layout in zip(inputs, layouts, strict=True)]
    _check_same_grid(inputs, grids)
    bands = sum(
        len(inp.bands) if inp.bands else layout.count
        for inp, layout in zip(inputs, layouts, strict=True)
    )
    _refuse_oversized(inputs, grids[0].width, grids[0].height, bands, max_pixels)
    source = _source_vrt(inputs, grids[0], roots, settings)
    try:
        if settings.profile == "display":
            source = _warped_vrt(source, CRS.from_user_input(WEB_MERCATOR), settings, stack)
        elif grids[0].gcps_only:
            source = _warped_vrt(source, grids[0].crs, settings, stack)
    except RasterioError as error:  # the display profile scans the source's values
        raise _unreadable(inputs, error) from error
    return vrt.in_memory(source, stack), grids[0].dtype


def _source_vrt(
    inputs: list[RasterInput], grid: _Grid, roots: list[ET.Element], settings: CogSettings
) -> ET.Element:
    """One VRT whose bands are the selected bands of `inputs`, in order, each carrying its own
    metadata, with the first input's georeferencing (or the assigned CRS) and dataset tags."""
    first = roots[0]
    root = ET.Element("VRTDataset", rasterXSize=str(grid.width), rasterYSize=str(grid.height))
    if grid.crs_assigned:
        ET.SubElement(root, "SRS").text = grid.crs.to_wkt()
    for tag in ("SRS", "GeoTransform", "GCPList"):
        element = first.find(tag)
        if element is not None and not (tag == "SRS" and grid.crs_assigned):
            root.append(copy.deepcopy(element))
    metadata = _merged_dataset_metadata(roots)
    metadata["OVERVIEW_RESAMPLING"] = _overview_resampling(settings)
    root.append(vrt.metadata_element(metadata))
    for inp, source_root in zip(inputs, roots, strict=True):
        bands = {int(band.get("band", "0")): band for band in source_root.findall("VRTRasterBand")}
        for number in inp.bands or sorted(bands):
            band = copy.deepcopy(bands[number])
            band.set("band", str(len(root.findall("VRTRasterBand")) + 1))
            categories.move_classes_to_metadata(band)
            root.append(band)
    _apply_nodata(root, inputs, settings)
    masks = [mask for mask in (r.find("MaskBand") for r in roots) if mask is not None]
    if masks and len(inputs) > 1:
        raise CogError(
            f"{_names(inputs)}: cannot stack inputs that carry an internal mask; "
            "set CogSettings.nodata or convert the masks to nodata first"
        )
    if masks:
        root.append(copy.deepcopy(masks[0]))
    return root


def _merged_dataset_metadata(roots: list[ET.Element]) -> dict[str, str]:
    """Default-domain dataset tags of every input; the first input wins on a shared key."""
    merged: dict[str, str] = {}
    for root in reversed(roots):
        merged.update(vrt.metadata_items(root))
    return merged


def _apply_nodata(root: ET.Element, inputs: list[RasterInput], settings: CogSettings) -> None:
    """Override every band's nodata, or check that the stacked bands share one (a GeoTIFF has a
    single nodata value for all its bands)."""
    bands = root.findall("VRTRasterBand")
    if settings.nodata is not None:
        for band in bands:
            vrt.set_child_text(band, "NoDataValue", _nodata_text(settings.nodata))
        return
    values = {_nodata_key(band.findtext("NoDataValue")) for band in bands}
    if len(values) > 1:
        raise CogError(
            f"{_names(inputs)}: inputs have different nodata values "
            f"{sorted(values, key=str)}; set CogSettings.nodata"
        )


def _nodata_key(text: str | None) -> float | str | None:
    if text is None:
        return None
    value = float(text)
    return "nan" if math.isnan(value) else value


def _nodata_text(value: float) -> str:
    return "nan" if math.isnan(value) else repr(value)


# --- the display warp -------------------------------------------------------------------------


def _warped_vrt(
    source: ET.Element, crs: CRS, settings: CogSettings, stack: ExitStack
) -> ET.Element:
    """A warped VRT of `source` in `crs`, with the source's metadata on its bands.

    Every pixel the warp invents (outside the source's footprint) is marked: by the source's
    nodata; else, for a source without mask, by a nodata chosen outside its values (NaN for
    floats); else by an internal mask, which also keeps a source mask.
    """
    # The warped VRT names its source: it must stay readable until the COG is written.
    with rasterio.open(vrt.in_memory(source, stack)) as src:
        nodata, mask = _display_validity(src)
        options: dict[str, Any] = {
            "crs": crs,
            "resampling": _warp_resampling(settings),
            # rasterio's default working type turns int8 into int16.
            "dtype": src.dtypes[0],
        }
        if nodata is not None:
            options["nodata"] = nodata
        if mask:
            options["add_alpha"] = True
        if crs == CRS.from_user_input(WEB_MERCATOR):
            grid = _web_mercator_grid(src)
            if grid is not None:
                options.update(transform=grid[0], width=grid[1], height=grid[2])
        with WarpedVRT(src, **options) as warp:
            warped = vrt.serialize(warp)
        count = src.count
    target = _mask_from_alpha(warped, vrt.in_memory(warped, stack), count) if mask else warped
    _copy_band_metadata(source, target)
    return target


def _display_validity(src: DatasetReader) -> tuple[float | None, bool]:
    """(nodata of the warped raster, whether it needs an internal mask) for a source."""
    if src.nodata is not None:
        return src.nodata, False
    flags = src.mask_flag_enums[0]
    if MaskFlags.alpha in flags:
        return None, False  # the warp carries the source's alpha band over
    if MaskFlags.per_dataset in flags:
        return None, True
    spare = _spare_nodata(src)
    return spare, spare is None


def _spare_nodata(src: DatasetReader) -> float | None:
    """A value no pixel of `src` has, to mark invented pixels: NaN for floats; for integers
    the dtype's minimum or maximum when the data do not reach it; None when the data use the
    whole range (or for complex types)."""
    dtype = np.dtype(src.dtypes[0])
    if dtype.kind == "f":
        return math.nan
    if dtype.kind not in "iu":
        return None
    low, high = _value_range(src)
    info = np.iinfo(dtype)
    if low > info.min:
        return float(info.min)
    if high < info.max:
        return float(info.max)
    return None


def _value_range(src: DatasetReader) -> tuple[int, int]:
    """Minimum and maximum over every band, read in strips of bounded size."""
    row_bytes = src.width * src.count * np.dtype(src.dtypes[0]).itemsize
    rows = max(1, _SCAN_BYTES // max(1, row_bytes))
    low, high = None, None
    for top in range(0, src.height, rows):
        window = Window(0, top, src.width, min(rows, src.height - top))
        values = src.read(window=window)
        low = values.min() if low is None else min(low, values.min())
        high = values.max() if high is None else max(high, values.max())
    return int(low), int(high)  # type: ignore[arg-type]


def _mask_from_alpha(warped_root: ET.Element, warped_name: str, count: int) -> ET.Element:
    """A VRT of the warped bands 1..count whose internal mask is the warp's alpha band.

    The COG driver would write an alpha band as one more band; a mask band keeps the band count
    and is what GDAL writes as the TIFF's internal mask.
    """
    root = ET.Element(
        "VRTDataset", {k: warped_root.get(k, "") for k in ("rasterXSize", "rasterYSize")}
    )
    for tag in ("SRS", "GeoTransform"):
        element = warped_root.find(tag)
        if element is not None:
            root.append(copy.deepcopy(element))
    warped_bands = warped_root.findall("VRTRasterBand")
    for number in range(1, count + 1):
        band = ET.SubElement(
            root,
            "VRTRasterBand",
            dataType=warped_bands[number - 1].get("dataType", "Byte"),
            band=str(number),
        )
        vrt.add_source(band, "SimpleSource", warped_name, str(number))
    mask_band = ET.SubElement(ET.SubElement(root, "MaskBand"), "VRTRasterBand", dataType="Byte")
    # Any alpha above 0 is a pixel with source data (alpha is partial at bilinear edges).
    source = vrt.add_source(mask_band, "ComplexSource", warped_name, str(count + 1))
    ET.SubElement(source, "LUT").text = "0:0,1:255,1e30:255"
    return root


def _copy_band_metadata(source_root: ET.Element, target_root: ET.Element) -> None:
    """Carry dataset tags and each band's metadata (tags, description, unit, scale/offset,
    colour table) from the source VRT onto the warped bands, which GDAL leaves bare."""
    target_root.append(vrt.metadata_element(vrt.metadata_items(source_root)))
    targets = target_root.findall("VRTRasterBand")
    for source_band, target_band in zip(
        source_root.findall("VRTRasterBand"), targets, strict=False
    ):
        for tag in ("Description", "UnitType", "Offset", "Scale", "ColorTable"):
            element = source_band.find(tag)
            if element is not None:
                target_band.append(copy.deepcopy(element))
        if source_band.findtext("ColorInterp") == "Palette":
            vrt.set_child_text(target_band, "ColorInterp", "Palette")
        target_band.append(vrt.metadata_element(vrt.metadata_items(source_band)))


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


def _copy_band(src: DatasetReader, band: int, grid: _Grid, facts: BandFacts, path: Path) -> None:
    """Write band `band` of `src` as a tiled one-band GeoTIFF with its metadata and mask."""
    index = band - 1
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=src.width,
        height=src.height,
        count=1,
        dtype=facts.dtypes[index],
        crs=grid.crs,
        transform=src.transform,
        nodata=facts.nodata[index],
        tiled=True,
        blockxsize=256,
        blockysize=256,
    ) as out:
        # Strips of bounded size, few reads: each rasterio read costs ~1 ms per 10,000 bands of
        # the source (tuples of every band's properties), whatever its size.
        row_bytes = src.width * np.dtype(facts.dtypes[index]).itemsize
        rows = max(256, _SCAN_BYTES // max(1, row_bytes) // 256 * 256)
        for top in range(0, src.height, rows):
            window = Window(0, top, src.width, min(rows, src.height - top))
            out.write(src.read(band, window=window), 1, window=window)
            if facts.masked[index]:
                out.write_mask(src.read_masks(band, window=window), window=window)
        out.update_tags(**facts.tags)
        out.update_tags(1, **{**src.tags(band), **facts.classes.get(band, {})})
        if facts.descriptions[index]:
            out.set_band_description(1, facts.descriptions[index])
        if facts.units[index]:
            out.set_band_unit(1, facts.units[index])
        out.scales = (facts.scales[index],)
        out.offsets = (facts.offsets[index],)
        with contextlib.suppress(ValueError):  # raised when the band has no colour table
            out.write_colormap(1, src.colormap(band))


# --- small helpers ----------------------------------------------------------------------------


def _temp_path_beside(dst: Path) -> Path:
    # Same folder as dst so that os.replace is an atomic rename on the same filesystem. A unique
    # name, not a file: GDAL creates it (and first probes any existing file with every driver).
    return dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp.tif")


def _pam_sidecar(path: Path) -> Path:
    # Where GDAL would put what a TIFF cannot hold: nothing is left there (see `categories`).
    return path.with_name(path.name + ".aux.xml")


def _names(inputs: list[RasterInput]) -> str:
    return ", ".join(inp.gdal_name() for inp in inputs)
