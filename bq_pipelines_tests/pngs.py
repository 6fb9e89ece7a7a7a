"""PNGs read by Pillow, a decoder independent of the GDAL driver that wrote them: a mistake made
by our writer is not undone by the same code on the reading side."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_image(data: bytes) -> Image.Image:
    """The PNG `data` opened and checked by Pillow (a bad chunk or checksum fails here)."""
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def png_pixels(data: bytes) -> np.ndarray:
    """The RGBA pixels (height, width, 4) of a PNG, its palette and transparency applied."""
    return np.asarray(png_image(data).convert("RGBA"))
