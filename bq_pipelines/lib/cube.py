"""What an EBV NetCDF cube says of its entities (species): their names, from the cube itself.

GDAL's raster API cannot read a NetCDF character variable (the EBV standard's `entity`), so the
names are read with netCDF4, once per file version (path, size, modification time). netCDF4 is
imported when a cube is read: loading the code location does not need it.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from bq_pipelines.lib.errors import PipelineError

if TYPE_CHECKING:
    import numpy as np


class CubeError(PipelineError):
    """A cube without the variable asked for, or one that is not a NetCDF file."""


def cube_entity_names(path: Path, variable: str) -> list[str]:
    """The strings of `variable` (characters `[entity, nchar]` or variable-length strings),
    stripped; CubeError naming the file and the variables it has otherwise."""
    try:
        stat = path.stat()
    except OSError as error:
        raise CubeError(f"{path}: {error.strerror or error}") from None
    return list(_names(str(path), stat.st_size, stat.st_mtime_ns, variable))


@functools.lru_cache(maxsize=16)
def _names(path: str, size: int, mtime_ns: int, variable: str) -> tuple[str, ...]:
    import netCDF4

    try:
        with netCDF4.Dataset(path) as cube:
            if variable not in cube.variables:
                present = ", ".join(sorted(cube.variables)) or "none"
                raise CubeError(f"{path}: no variable {variable!r} (it has: {present})")
            values = cube.variables[variable][:]
    except OSError as error:
        raise CubeError(f"{path}: not a readable NetCDF file ({error})") from None
    return tuple(_as_text(v) for v in _strings(values))


def _strings(values: np.ndarray) -> list[object]:
    import netCDF4
    import numpy as np

    if values.dtype.kind == "S" and values.ndim == 2:  # characters [entity, nchar]
        return list(netCDF4.chartostring(np.ma.filled(values, b"")))
    return list(np.ravel(np.ma.filled(values, "")))


def _as_text(value: object) -> str:
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return text.strip().strip("\x00")
