"""The VRTs the COG driver reads: the inputs' bands selected and stacked with their metadata,
nodata and masks, and warped for the display profile."""

from __future__ import annotations

import copy
import math
import xml.etree.ElementTree as ET
from contextlib import ExitStack
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds
from rasterio.windows import Window

from bq_pipelines.lib import categories
from bq_pipelines.lib import vrt as gdal_vrt
from bq_pipelines.lib.cog.grid import Grid
from bq_pipelines.lib.cog.inputs import RasterInput, input_names, require_file, unreadable
from bq_pipelines.lib.cog.settings import (
    SCAN_BYTES,
    CogSettings,
    overview_resampling,
    warp_resampling,
)
from bq_pipelines.lib.errors import CogError

WEB_MERCATOR = "EPSG:3857"

# Web Mercator is undefined at the poles; a global source is clipped to the latitudes that
# EPSG:3857 (and every web map) covers, otherwise the suggested warp extent is absurd.
_WEB_MERCATOR_MAX_LAT = 85.0511287798066


def input_vrt(inp: RasterInput) -> ET.Element:
    """GDAL's VRT of an input; CogError naming it when it is missing or unreadable."""
    require_file(inp)
    try:
        return gdal_vrt.serialize(inp.gdal_name())
    except CogError as error:
        raise unreadable([inp], error.__cause__ or error) from error


def source_vrt(
    inputs: list[RasterInput], grid: Grid, roots: list[ET.Element], settings: CogSettings
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
    metadata["OVERVIEW_RESAMPLING"] = overview_resampling(settings)
    root.append(gdal_vrt.metadata_element(metadata))
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
            f"{input_names(inputs)}: cannot stack inputs that carry an internal mask; "
            "set CogSettings.nodata or convert the masks to nodata first"
        )
    if masks:
        root.append(copy.deepcopy(masks[0]))
    return root


def _merged_dataset_metadata(roots: list[ET.Element]) -> dict[str, str]:
    """Default-domain dataset tags of every input; the first input wins on a shared key."""
    merged: dict[str, str] = {}
    for root in reversed(roots):
        merged.update(gdal_vrt.metadata_items(root))
    return merged


def _apply_nodata(root: ET.Element, inputs: list[RasterInput], settings: CogSettings) -> None:
    """Override every band's nodata, or check that the stacked bands share one (a GeoTIFF has a
    single nodata value for all its bands)."""
    bands = root.findall("VRTRasterBand")
    if settings.nodata is not None:
        for band in bands:
            gdal_vrt.set_child_text(band, "NoDataValue", _nodata_text(settings.nodata))
        return
    values = {_nodata_key(band.findtext("NoDataValue")) for band in bands}
    if len(values) > 1:
        raise CogError(
            f"{input_names(inputs)}: inputs have different nodata values "
            f"{sorted(values, key=str)}; set CogSettings.nodata"
        )


def _nodata_key(text: str | None) -> float | str | None:
    if text is None:
        return None
    value = float(text)
    return "nan" if math.isnan(value) else value


def _nodata_text(value: float) -> str:
    return "nan" if math.isnan(value) else repr(value)


def warped_vrt(source: ET.Element, crs: CRS, settings: CogSettings, stack: ExitStack) -> ET.Element:
    """A warped VRT of `source` in `crs`, with the source's metadata on its bands.

    Every pixel the warp invents (outside the source's footprint) is marked: by the source's
    nodata; else, for a source without mask, by a nodata chosen outside its values (NaN for
    floats); else by an internal mask, which also keeps a source mask.
    """
    # The warped VRT names its source: it must stay readable until the COG is written.
    with rasterio.open(gdal_vrt.in_memory(source, stack)) as src:
        nodata, mask = _display_validity(src)
        options: dict[str, Any] = {
            "crs": crs,
            "resampling": warp_resampling(settings),
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
            warped = gdal_vrt.serialize(warp)
        count = src.count
    target = _mask_from_alpha(warped, gdal_vrt.in_memory(warped, stack), count) if mask else warped
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
    rows = max(1, SCAN_BYTES // max(1, row_bytes))
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
        gdal_vrt.add_source(band, "SimpleSource", warped_name, str(number))
    mask_band = ET.SubElement(ET.SubElement(root, "MaskBand"), "VRTRasterBand", dataType="Byte")
    # Any alpha above 0 is a pixel with source data (alpha is partial at bilinear edges).
    source = gdal_vrt.add_source(mask_band, "ComplexSource", warped_name, str(count + 1))
    ET.SubElement(source, "LUT").text = "0:0,1:255,1e30:255"
    return root


def _copy_band_metadata(source_root: ET.Element, target_root: ET.Element) -> None:
    """Carry dataset tags and each band's metadata (tags, description, unit, scale/offset,
    colour table) from the source VRT onto the warped bands, which GDAL leaves bare."""
    target_root.append(gdal_vrt.metadata_element(gdal_vrt.metadata_items(source_root)))
    targets = target_root.findall("VRTRasterBand")
    for source_band, target_band in zip(
        source_root.findall("VRTRasterBand"), targets, strict=False
    ):
        for tag in ("Description", "UnitType", "Offset", "Scale", "ColorTable"):
            element = source_band.find(tag)
            if element is not None:
                target_band.append(copy.deepcopy(element))
        if source_band.findtext("ColorInterp") == "Palette":
            gdal_vrt.set_child_text(target_band, "ColorInterp", "Palette")
        target_band.append(gdal_vrt.metadata_element(gdal_vrt.metadata_items(source_band)))


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
