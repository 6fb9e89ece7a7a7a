"""Pictures of what was published: a COG's thumbnail (`thumbnails`), a collection's coverage
map (`coverage`), its item count over time (`timeline`); PNGs written by GDAL (`png`).

Dagster-free, on rasterio and numpy only. The same pixels always give the same bytes, so a
re-run stores nothing new.
"""

from bq_pipelines.lib.preview.coverage import (
    COVERAGE_MAX_SIDE,
    LAND_COLOUR,
    SEA_COLOUR,
    CoverageMap,
    coverage_map,
    land_polygons,
)
from bq_pipelines.lib.preview.png import PNG_MEDIA_TYPE
from bq_pipelines.lib.preview.thumbnails import (
    PREVIEW_VERSION,
    THUMBNAIL_MAX_SIDE,
    Thumbnail,
    render_thumbnail,
    thumbnail_file_name,
    thumbnail_shape,
)
from bq_pipelines.lib.preview.timeline import item_start, items_over_time

__all__ = [
    "COVERAGE_MAX_SIDE",
    "LAND_COLOUR",
    "PNG_MEDIA_TYPE",
    "PREVIEW_VERSION",
    "SEA_COLOUR",
    "THUMBNAIL_MAX_SIDE",
    "CoverageMap",
    "Thumbnail",
    "coverage_map",
    "item_start",
    "items_over_time",
    "land_polygons",
    "render_thumbnail",
    "thumbnail_file_name",
    "thumbnail_shape",
]
