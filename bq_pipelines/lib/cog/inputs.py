"""The rasters a COG is made from: naming, opening and refusing them, and what to say when
GDAL cannot read one."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader

from bq_pipelines.lib import tiff
from bq_pipelines.lib.errors import CogError, RasterTooLarge, SourceRefused

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


@contextmanager
def open_input(
    inp: RasterInput, reader: type[DatasetReader] | None = None
) -> Iterator[DatasetReader]:
    """Open an input (with `reader`, a DatasetReader class, or rasterio.open), turning GDAL's
    failure into a CogError that names the input."""
    name = inp.gdal_name()
    require_file(inp)
    try:
        with warnings.catch_warnings():
            # A raster without geotransform is reported below as an error of ours.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(name) if reader is None else reader(name)
    except RasterioError as exc:
        raise unreadable([inp], exc) from exc
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


def is_read_error(error: BaseException) -> bool:
    """Whether GDAL failed reading a source's pixels (then the source is named, not the COG)."""
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


def unreadable(inputs: Sequence[RasterInput], error: BaseException) -> CogError:
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


def refuse_oversized(
    inputs: Sequence[RasterInput], width: int, height: int, bands: int, max_pixels: int | None
) -> None:
    """RasterTooLarge when width x height x bands is over `max_pixels` (None: no limit)."""
    pixels = width * height * bands
    if max_pixels is not None and pixels > max_pixels:
        raise RasterTooLarge(
            str(inputs[0].path) if len(inputs) == 1 else input_names(list(inputs)),
            f"{width} x {height} pixels x {bands} bands is {pixels} pixels, more than the "
            f"limit of {max_pixels}",
        )


def require_file(inp: RasterInput) -> None:
    """CogError when the input's file is missing or a truncated TIFF, SourceRefused when XML."""
    if not Path(inp.path).exists():
        raise CogError(f"{inp.gdal_name()}: no such file")
    _refuse_xml(inp)
    if tiff.is_tiff(Path(inp.path)):
        cut = tiff.truncation(Path(inp.path))
        if cut is not None:
            raise CogError(f"{inp.path}: truncated or corrupt TIFF ({cut})")


def input_names(inputs: list[RasterInput]) -> str:
    """The inputs as GDAL names them, for messages."""
    return ", ".join(inp.gdal_name() for inp in inputs)
