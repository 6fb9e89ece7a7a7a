"""Many-band sources (EBV cubes): what each band says, read once and cached, and each band
extracted or converted to a COG without opening the source again."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader, MemoryFile
from rasterio.windows import Window

from bq_pipelines.lib import categories, files
from bq_pipelines.lib.cog.convert import temp_path_beside, to_cog, write_cog
from bq_pipelines.lib.cog.grid import (
    Grid,
    crs_and_bbox,
    dataset_bounds,
    input_grid,
    layout_of_dataset,
)
from bq_pipelines.lib.cog.inputs import RasterInput, open_input, refuse_oversized, unreadable
from bq_pipelines.lib.cog.settings import GDAL_CONFIG, SCAN_BYTES, CogSettings, overview_resampling
from bq_pipelines.lib.cog.validate import CogInfo, cog_errors
from bq_pipelines.lib.errors import CogError
from bq_pipelines.lib.hashing import sha256_bytes

log = logging.getLogger(__name__)


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
    with rasterio.Env(**GDAL_CONFIG), open_input(whole, _ManyBandReader) as src:
        grid = input_grid(whole, layout_of_dataset(src), settings)
        refuse_oversized([whole], src.width, src.height, 1, max_pixels)
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
                raise unreadable([whole], error) from error
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
    with rasterio.Env(**GDAL_CONFIG), open_input(whole, _ManyBandReader) as src:
        grid = input_grid(whole, layout_of_dataset(src), settings)
        refuse_oversized([whole], src.width, src.height, 1, max_pixels)
        known = facts if facts is not None else _facts_of(src, whole, facts_cache)
        place = _Placement.of(grid, whole)

        def staged(band: int, dst: Path) -> BandCog:
            path = work_dir / f"band-{band:06d}.tif"
            try:
                try:
                    _copy_band(src, band, grid, known, path)
                except RasterioError as error:
                    raise unreadable([whole], error) from error
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
                raise unreadable([whole], error) from error
            band_tags = {**src.tags(band), **known.classes.get(band, {})}
            return _band_cog(values, band, band_tags, known, place, settings, Path(dst))

        yield convert


@dataclass(frozen=True)
class _Placement:
    """Where every band of a source lies: its grid, and the CogInfo fields that follow."""

    grid: Grid
    crs: str
    epsg: int | None
    bounds: tuple[float, float, float, float]
    bbox_wgs84: tuple[float, float, float, float]

    @classmethod
    def of(cls, grid: Grid, source: RasterInput) -> _Placement:
        crs, epsg, bbox = crs_and_bbox(
            grid.crs, grid.transform, grid.width, grid.height, source.gdal_name()
        )
        return cls(
            grid=grid,
            crs=crs,
            epsg=epsg,
            bounds=dataset_bounds(grid.transform, grid.width, grid.height),
            bbox_wgs84=bbox,
        )


def _from_memory(
    src: DatasetReader, band: int, grid: Grid, facts: BandFacts, settings: CogSettings
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
    `_copy_band` and `source_vrt` give it on the staging-file path."""
    index, grid = band - 1, place.grid
    dtype = facts.dtypes[index]
    nodata = settings.nodata if settings.nodata is not None else facts.nodata[index]
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_beside(dst)
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
            mem.update_tags(**{**facts.tags, "OVERVIEW_RESAMPLING": overview_resampling(settings)})
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
                write_cog(mem, memory.name, dst, dtype, settings, [])
                cog_bytes = memory.read()
                tmp.write_bytes(cog_bytes)
                with memory.open() as out:
                    errors = cog_errors(out, tmp)
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
    with rasterio.Env(**GDAL_CONFIG), open_input(whole, _ManyBandReader) as src:
        input_grid(whole, layout_of_dataset(src), settings)
        refuse_oversized([whole], src.width, src.height, 1, max_pixels)
        return _facts_of(src, whole, cache)


def _copy_band(src: DatasetReader, band: int, grid: Grid, facts: BandFacts, path: Path) -> None:
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
        rows = max(256, SCAN_BYTES // max(1, row_bytes) // 256 * 256)
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
