"""How a COG is written: the settings that change its bytes, and the GDAL options they give."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from rasterio.enums import Resampling

from bq_pipelines.lib.hashing import sha256_bytes

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

# GDAL's block cache defaults to 5% of RAM; a fixed cap keeps the peak memory of a conversion
# independent of the machine and of the raster size (the COG driver streams by blocks anyway).
# No GDAL_NUM_THREADS: on 2 cores, threaded DEFLATE was not faster (bench/RESULTS.md).
# EBV cubes flatten (entity, time) into bands: global-mammals has 45,810 per scenario, beyond
# GDAL's default cap of 32,768 (the netCDF driver would drop the rest).
GDAL_CONFIG: dict[str, Any] = {"GDAL_CACHEMAX": 256, "GDAL_MAX_BAND_COUNT": 1_000_000}

# Bytes read at once when scanning a source for its value range (display profile).
SCAN_BYTES = 64 << 20


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
        "OVERVIEW_RESAMPLING": overview_resampling(settings),
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


def overview_resampling(settings: CogSettings) -> str:
    # `mode` keeps the majority class of each block (nearest would pick an arbitrary pixel and
    # alias thin classes away); `average` is the faithful summary of a continuous field.
    return "MODE" if settings.categorical else "AVERAGE"


def warp_resampling(settings: CogSettings) -> Resampling:
    # Classes must stay classes: never interpolate categorical codes.
    return Resampling.nearest if settings.categorical else Resampling.bilinear
