"""Cloud-Optimized GeoTIFF conversion and validation, with the legacy profiles.

Profile `raw` keeps CRS and resolution; `display` warps to EPSG:3857. Both: DEFLATE with a
predictor fitting the dtype, 512 px tiles, internal overviews, and everything GDAL knows about the
source: dtype, nodata and masks, units, descriptions, scale/offset, colour tables, dataset and band
tags. Category names and raster attribute tables, which a TIFF cannot hold (GDAL would put them in
an .aux.xml beside the file, which the object store never sees), become band metadata items of the
COG (see `categories`), read back by the STAC item.

How: GDAL serializes each input as a VRT (so nothing it knows about the input is dropped); the VRT
is edited (`vrt`: band selection, stacking, assigned CRS, nodata, classes), warped for the display
profile, and written by GDAL's own COG driver (`convert`), then checked (`validate`). Many-band
sources are read once for all their bands (`bands`). `settings`, `inputs` and `grid` hold what
those share.
"""

from bq_pipelines.lib.cog.bands import (
    BandCog,
    BandFacts,
    band_converter,
    band_extractor,
    band_facts,
)
from bq_pipelines.lib.cog.convert import to_cog
from bq_pipelines.lib.cog.grid import dataset_bounds
from bq_pipelines.lib.cog.inputs import RasterInput
from bq_pipelines.lib.cog.settings import (
    COG_ALGORITHM_VERSION,
    GDAL_CONFIG,
    ZSTD_LEVEL,
    CogCompression,
    CogProfileName,
    CogSettings,
    cog_creation_options,
    predictor_for,
)
from bq_pipelines.lib.cog.validate import CogInfo, describe_cog, validate_cog

__all__ = [
    "COG_ALGORITHM_VERSION",
    "GDAL_CONFIG",
    "ZSTD_LEVEL",
    "BandCog",
    "BandFacts",
    "CogCompression",
    "CogInfo",
    "CogProfileName",
    "CogSettings",
    "RasterInput",
    "band_converter",
    "band_extractor",
    "band_facts",
    "cog_creation_options",
    "dataset_bounds",
    "describe_cog",
    "predictor_for",
    "to_cog",
    "validate_cog",
]
