"""Convert one raster, or several stacked as bands, into a validated COG (`to_cog`)."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader

from bq_pipelines.lib import vrt as gdal_vrt
from bq_pipelines.lib.cog.grid import check_same_grid, input_grid, layout_of_vrt
from bq_pipelines.lib.cog.inputs import (
    RasterInput,
    input_names,
    is_read_error,
    refuse_oversized,
    unreadable,
)
from bq_pipelines.lib.cog.settings import GDAL_CONFIG, CogSettings, cog_creation_options
from bq_pipelines.lib.cog.validate import CogInfo, cog_errors, describe
from bq_pipelines.lib.cog.vrt import WEB_MERCATOR, input_vrt, source_vrt, warped_vrt
from bq_pipelines.lib.errors import CogError

log = logging.getLogger(__name__)


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
        stack.enter_context(rasterio.Env(**GDAL_CONFIG))
        source, dtype = _prepare_source(inputs, settings, stack, max_pixels)
        tmp = temp_path_beside(dst)
        try:
            write_cog(source, tmp, dst, dtype, settings, inputs)
            with rasterio.open(tmp) as out:  # one open to check and describe
                errors = cog_errors(out, tmp)
                if errors:
                    raise CogError(f"{dst}: output is not a valid COG: {'; '.join(errors)}")
                info = describe(out, tmp, dst, settings.profile)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)
            _pam_sidecar(tmp).unlink(missing_ok=True)
    log.info("wrote COG %s (%s profile) from %s", dst, settings.profile, input_names(inputs))
    return info


def _prepare_source(
    inputs: list[RasterInput],
    settings: CogSettings,
    stack: ExitStack,
    max_pixels: int | None = None,
) -> tuple[str, str]:
    """The VRT the COG driver reads (selected/stacked bands, metadata, warp), in memory for as
    long as `stack`, and its dtype. Only headers are read before the size check."""
    roots = [input_vrt(inp) for inp in inputs]
    layouts = [layout_of_vrt(root) for root in roots]
    grids = [input_grid(inp, layout, settings) for inp, layout in zip(inputs, layouts, strict=True)]
    check_same_grid(inputs, grids)
    bands = sum(
        len(inp.bands) if inp.bands else layout.count
        for inp, layout in zip(inputs, layouts, strict=True)
    )
    refuse_oversized(inputs, grids[0].width, grids[0].height, bands, max_pixels)
    source = source_vrt(inputs, grids[0], roots, settings)
    try:
        if settings.profile == "display":
            source = warped_vrt(source, CRS.from_user_input(WEB_MERCATOR), settings, stack)
        elif grids[0].gcps_only:
            source = warped_vrt(source, grids[0].crs, settings, stack)
    except RasterioError as error:  # the display profile scans the source's values
        raise unreadable(inputs, error) from error
    return gdal_vrt.in_memory(source, stack), grids[0].dtype


def write_cog(
    source: str | DatasetReader,
    tmp: Path | str,
    dst: Path,
    dtype: str,
    settings: CogSettings,
    inputs: Sequence[RasterInput],
) -> None:
    """`source` written by GDAL's COG driver at `tmp` (the COG meant for `dst`); a failure to
    read the source names its `inputs`, any other names `dst`."""
    try:
        rasterio.shutil.copy(
            source, str(tmp), driver="COG", **cog_creation_options(dtype, settings)
        )
    except Exception as exc:  # rasterio raises GDAL's CPLE_* classes, which it does not export
        if inputs and is_read_error(exc):
            raise unreadable(inputs, exc) from exc
        raise CogError(f"{dst}: conversion to COG failed: {exc}") from exc


def temp_path_beside(dst: Path) -> Path:
    """Where `dst` is written before it is renamed into place."""
    # Same folder as dst so that os.replace is an atomic rename on the same filesystem. A unique
    # name, not a file: GDAL creates it (and first probes any existing file with every driver).
    return dst.with_name(f".{dst.name}.{uuid.uuid4().hex}.tmp.tif")


def _pam_sidecar(path: Path) -> Path:
    # Where GDAL would put what a TIFF cannot hold: nothing is left there (see `categories`).
    return path.with_name(path.name + ".aux.xml")
