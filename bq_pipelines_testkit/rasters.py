"""Small, deterministic test rasters with real CRSs, nodata, masks, dtypes, bands, rotated grids
and the band metadata GDAL knows (units, descriptions, scale/offset, tags, colour tables,
category names, attribute tables)."""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

# A Lambert Conformal Conic with no EPSG code (Québec Lambert's parameters, custom datum name).
CUSTOM_LCC_WKT = (
    'PROJCS["custom_lcc",GEOGCS["GRS80 based",DATUM["unnamed",SPHEROID["GRS 1980",6378137,'
    '298.257222101]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
    'PROJECTION["Lambert_Conformal_Conic_2SP"],PARAMETER["standard_parallel_1",60],'
    'PARAMETER["standard_parallel_2",46],PARAMETER["latitude_of_origin",44],'
    'PARAMETER["central_meridian",-70],PARAMETER["false_easting",0],'
    'PARAMETER["false_northing",0],UNIT["metre",1]]'
)

# A Transverse Mercator with UTM zone 25S's parameters on GRS 1980 and an unnamed datum (a
# "UTM 25S" of some survey): no EPSG code is exactly it, but PROJ's fuzzy identification (rasterio's
# to_epsg(), rio-stac) calls it EPSG:32000, which is what the catalog once published.
CUSTOM_UTM25S_WKT = (
    'PROJCS["UTM 25S",GEOGCS["unnamed",DATUM["unnamed",SPHEROID["GRS 1980",6378137,'
    '298.257222101]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],'
    'PROJECTION["Transverse_Mercator"],PARAMETER["latitude_of_origin",0],'
    'PARAMETER["central_meridian",-33],PARAMETER["scale_factor",0.9996],'
    'PARAMETER["false_easting",500000],PARAMETER["false_northing",10000000],UNIT["metre",1]]'
)

# An engineering (local) CRS, e.g. a site grid: there is no transformation to WGS84.
ENGINEERING_WKT = (
    'LOCAL_CS["Site grid",UNIT["metre",1],AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
)


@dataclass(frozen=True)
class BandMetadata:
    """What GDAL can say about bands beyond their pixels: the same for every band, except the
    description (band n of several gets " n" appended)."""

    unit: str | None = None
    description: str | None = None
    scale: float = 1.0
    offset: float = 0.0
    band_tags: dict[str, str] = field(default_factory=dict)
    dataset_tags: dict[str, str] = field(default_factory=dict)
    colormap: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)  # band 1 only
    # Value = position. GDAL keeps category names and attribute tables in the .aux.xml of a
    # GeoTIFF, which is where they are written.
    category_names: tuple[str, ...] = ()
    attribute_table: tuple[tuple[int, str, tuple[int, int, int]], ...] = ()  # value, name, RGB

    def descriptions(self, count: int) -> tuple[str | None, ...]:
        if self.description is None or count == 1:
            return (self.description,) * count
        return tuple(f"{self.description} {band}" for band in range(1, count + 1))


class RasterSize(TypedDict):
    """A raster's size, to spread into `RasterSpec(**size)` beside other fields."""

    width: int
    height: int


@dataclass(frozen=True)
class RasterSpec:
    """Enough to generate a raster: dtype, CRS, bands, nodata and a footprint."""

    dtype: str = "float32"
    crs: str | None = "EPSG:4326"  # None: a raster without CRS (on EPSG:4326's default grid)
    count: int = 1
    width: int = 300
    height: int = 200
    nodata: float | None = None
    categorical: bool = False
    origin: tuple[float, float] | None = None  # top-left, in CRS units
    resolution: float | None = None
    seed: int = 0
    mask: bool = False  # an internal mask (invalid corner) instead of nodata
    rotation: float = 0.0  # degrees, a geotransform rotated about its origin
    metadata: BandMetadata = BandMetadata()


@functools.cache  # identifying a CRS that has no EPSG code takes PROJ ~35 ms
def _default_grid(crs_input: str) -> tuple[tuple[float, float], float]:
    crs = CRS.from_user_input(crs_input)
    if crs.is_geographic or not crs.is_projected:
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
        fill = np.nan if np.isnan(spec.nodata) else spec.nodata
        data = np.where(~raster_valid(spec), np.array(fill, dtype=spec.dtype), data)
    return data


def raster_valid(spec: RasterSpec) -> np.ndarray:
    """Where `spec` has data, shape (height, width): all but a corner when it has nodata or a
    mask."""
    valid = np.ones((spec.height, spec.width), dtype=bool)
    if spec.nodata is not None or spec.mask:
        valid[: spec.height // 10, : spec.width // 10] = False
    return valid


def raster_transform(spec: RasterSpec) -> Affine:
    default_origin, default_res = _default_grid(spec.crs or "EPSG:4326")
    x, y = spec.origin or default_origin
    resolution = spec.resolution or default_res
    return (
        Affine.translation(x, y)
        * Affine.rotation(spec.rotation)
        * Affine.scale(resolution, -resolution)
    )


def write_raster(path: Path, spec: RasterSpec = RasterSpec(), driver: str = "GTiff") -> Path:
    """Write `spec` as a plain (striped, uncompressed, not cloud-optimized) GeoTIFF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = spec.metadata
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
        rasterio.open(
            path,
            "w",
            driver=driver,
            width=spec.width,
            height=spec.height,
            count=spec.count,
            dtype=spec.dtype,
            crs=CRS.from_user_input(spec.crs) if spec.crs else None,
            transform=raster_transform(spec),
            nodata=spec.nodata,
        ) as dst,
    ):
        dst.write(raster_values(spec))
        if spec.mask:
            dst.write_mask(np.where(raster_valid(spec), 255, 0).astype("uint8"))
        for band, description in enumerate(meta.descriptions(spec.count), start=1):
            if description:
                dst.set_band_description(band, description)
            if meta.unit:
                dst.set_band_unit(band, meta.unit)
            dst.update_tags(band, **meta.band_tags)
        dst.scales = (meta.scale,) * spec.count
        dst.offsets = (meta.offset,) * spec.count
        dst.update_tags(**meta.dataset_tags)
        if meta.colormap:
            dst.write_colormap(1, meta.colormap)
    if meta.category_names or meta.attribute_table:
        _write_pam_classes(path, meta, spec.count)
    return path


def _write_pam_classes(path: Path, meta: BandMetadata, count: int) -> None:
    """Every band's category names and attribute table in the .aux.xml, as GDAL writes them."""
    root = ET.Element("PAMDataset")
    for number in range(1, count + 1):
        band = ET.SubElement(root, "PAMRasterBand", band=str(number))
        if meta.category_names:
            names = ET.SubElement(band, "CategoryNames")
            for name in meta.category_names:
                ET.SubElement(names, "Category").text = name
        if meta.attribute_table:
            _add_attribute_table(band, meta.attribute_table)
    ET.ElementTree(root).write(f"{path}.aux.xml", encoding="utf-8")


def _add_attribute_table(
    band: ET.Element, rows: tuple[tuple[int, str, tuple[int, int, int]], ...]
) -> None:
    table = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    # GDAL's field types (0 integer, 2 string) and usages (5 MinMax, 2 Name, 6-8 RGB).
    columns = [
        ("Value", 0, 5),
        ("Class_Name", 2, 2),
        ("Red", 0, 6),
        ("Green", 0, 7),
        ("Blue", 0, 8),
    ]
    for index, (name, type_, usage) in enumerate(columns):
        definition = ET.SubElement(table, "FieldDefn", index=str(index))
        ET.SubElement(definition, "Name").text = name
        ET.SubElement(definition, "Type").text = str(type_)
        ET.SubElement(definition, "Usage").text = str(usage)
    for row, (value, name, rgb) in enumerate(rows):
        cells = ET.SubElement(table, "Row", index=str(row))
        for cell in (value, name, *rgb):
            ET.SubElement(cells, "F").text = str(cell)


def write_huge_header(path: Path, side: int = 100_000) -> Path:
    """A crafted GeoTIFF declaring side x side pixels in a sparse file of a few MB (no block is
    written): what a size limit must refuse from its header alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=side,
        height=side,
        count=1,
        dtype="uint8",
        crs="EPSG:4326",
        transform=raster_transform(RasterSpec(resolution=0.0001)),
        tiled=True,
        SPARSE_OK=True,
        BIGTIFF="YES",
    ):
        pass
    return path
