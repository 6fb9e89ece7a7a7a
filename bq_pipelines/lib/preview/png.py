"""PNG files of pixels, written in memory by GDAL's PNG driver (libpng).

The same pixels always give the same bytes (a re-run stores nothing new): the driver is given
nothing but the pixels and their palette, and writes no date.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

PNG_MEDIA_TYPE = "image/png"
# zlib level 1: a quarter of level 6's time for about a fifth more bytes (thumbnails are small).
PNG_COMPRESSION = 1


def palette_png(indexes: np.ndarray, palette: Sequence[tuple[int, int, int, int]]) -> bytes:
    """A palette PNG: `indexes` (height, width) into `palette` (RGBA, at most 256 entries); the
    entries' alpha becomes the PNG's transparency (tRNS)."""
    colormap = {index: tuple(int(c) for c in colour) for index, colour in enumerate(palette)}
    return _png(indexes[np.newaxis], colormap)


def rgba_png(rgba: np.ndarray) -> bytes:
    """A truecolour PNG with alpha from `rgba` (height, width, 4) of uint8."""
    return _png(np.moveaxis(rgba, -1, 0), None)


def _png(bands: np.ndarray, colormap: dict[int, tuple[int, ...]] | None) -> bytes:
    """`bands` (count, height, width) as an 8-bit PNG: one band with `colormap` is a palette
    PNG, four bands are RGBA."""
    count, height, width = bands.shape
    with MemoryFile(ext=".png") as memory, warnings.catch_warnings():
        # A picture, not a map: it has no geotransform.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        # The PNG driver only copies a dataset: rasterio writes to memory, then copies on close.
        with memory.open(
            driver="PNG",
            width=width,
            height=height,
            count=count,
            dtype="uint8",
            ZLEVEL=PNG_COMPRESSION,
        ) as png:
            png.write(bands.astype(np.uint8, copy=False))
            if colormap is not None:
                png.write_colormap(1, colormap)
        memory.seek(0)
        return bytes(memory.read())
