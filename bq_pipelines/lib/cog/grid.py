"""Where an input lies: its grid (CRS, transform, size), checked to reach WGS84, and what must
be shared to stack inputs as bands."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.io import DatasetReader
from rasterio.transform import from_gcps

from bq_pipelines.lib import georef
from bq_pipelines.lib import vrt as gdal_vrt
from bq_pipelines.lib.cog.inputs import RasterInput
from bq_pipelines.lib.cog.settings import CogSettings
from bq_pipelines.lib.errors import CogError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Grid:
    """What stacked inputs must share to become bands of one raster."""

    crs: CRS
    transform: Affine
    width: int
    height: int
    dtype: str
    crs_assigned: bool = False  # the CRS comes from CogSettings.assign_crs, not the source
    gcps_only: bool = False  # placed by ground control points: rectified by a warp


@dataclass(frozen=True)
class Layout:
    """What GDAL says about an input's grid, read from an open dataset or from its VRT."""

    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine | None  # None when the input has no geotransform
    gcps: list[GroundControlPoint]
    gcps_crs: CRS | None


def layout_of_dataset(src: DatasetReader) -> Layout:
    """The layout of an open input (many-band sources, read without a VRT)."""
    gcps, gcps_crs = src.gcps
    transform = None if src.transform.is_identity else src.transform
    return Layout(
        src.width, src.height, src.count, src.dtypes[0], src.crs, transform, gcps, gcps_crs
    )


def layout_of_vrt(root: ET.Element) -> Layout:
    """The layout of an input from GDAL's VRT of it (headers only, no pixel read)."""
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
    return Layout(
        width=int(root.get("rasterXSize", "0")),
        height=int(root.get("rasterYSize", "0")),
        count=len(bands),
        dtype=gdal_vrt.numpy_dtype(bands[0].get("dataType", "Byte")) if bands else "uint8",
        crs=CRS.from_wkt(srs) if srs else None,
        transform=None if transform is None or transform.is_identity else transform,
        gcps=gcps,
        gcps_crs=CRS.from_wkt(gcps_srs) if gcps_srs else None,
    )


def input_grid(inp: RasterInput, layout: Layout, settings: CogSettings) -> Grid:
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
    return Grid(crs, transform, layout.width, layout.height, layout.dtype, assigned, gcps_only)


def check_same_grid(inputs: list[RasterInput], grids: list[Grid]) -> None:
    """CogError naming the first input that cannot be stacked on the first one, and why."""
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


def crs_and_bbox(
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
