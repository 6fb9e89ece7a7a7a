"""Band metadata (units, scale and offset, classes, descriptions) and the conversion paths of
`to_cog` it must survive, shared by the COG and STAC item tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bq_pipelines.lib.cog import (
    CogInfo,
    CogSettings,
    RasterInput,
    band_converter,
    band_extractor,
    to_cog,
)
from bq_pipelines_testkit.rasters import BandMetadata, RasterSpec, write_raster

NAN = float("nan")

CONTINUOUS = BandMetadata(
    unit="m",
    description="elevation",
    scale=0.1,
    offset=-5.0,
    band_tags={"VARIABLE": "dem"},
    dataset_tags={"PRODUCER": "bq tests"},
)
CATEGORY_NAMES = dataclasses.replace(
    CONTINUOUS,
    unit="class",
    description="land cover",
    scale=1.0,
    offset=0.0,
    colormap={0: (0, 0, 0, 0), 1: (0, 0, 255, 255), 2: (0, 128, 0, 255), 3: (160, 82, 45, 255)},
    category_names=("", "Open water", "Forest", "Wetland / bog"),
)
ATTRIBUTE_TABLE = dataclasses.replace(
    CATEGORY_NAMES,
    colormap={},
    category_names=(),
    attribute_table=(
        (1, "water", (0, 0, 255)),
        (5, "urban", (255, 0, 0)),
        (11, "bare", (200,) * 3),
    ),
)
METADATA_CASES = {
    "continuous": (CONTINUOUS, None),
    "category-names": (
        CATEGORY_NAMES,
        [
            {"value": 1, "description": "Open water", "name": "Open_water", "color_hint": "0000FF"},
            {"value": 2, "description": "Forest", "name": "Forest", "color_hint": "008000"},
            {
                "value": 3,
                "description": "Wetland / bog",
                "name": "Wetland_bog",
                "color_hint": "A0522D",
            },
        ],
    ),
    "attribute-table": (
        ATTRIBUTE_TABLE,
        [
            {"value": 1, "description": "water", "name": "water", "color_hint": "0000FF"},
            {"value": 5, "description": "urban", "name": "urban", "color_hint": "FF0000"},
            {"value": 11, "description": "bare", "name": "bare", "color_hint": "C8C8C8"},
        ],
    ),
}
METADATA_PATHS = [
    "raw",
    "display",
    "band-selection",
    "stack",
    "assign-crs",
    "band-extractor",
    "band-converter",
]


def convert_by_path(
    path_kind: str, folder: Path, metadata: BandMetadata, categorical: bool
) -> tuple[CogInfo, int]:
    """Convert a generated raster with `metadata` along one of to_cog's paths; returns the COG
    and the source band its band 1 comes from."""
    spec = RasterSpec(
        dtype="uint8" if categorical else "float32",
        nodata=0 if categorical else NAN,
        categorical=categorical,
        crs="EPSG:32198",
        count=3 if path_kind in ("band-selection", "band-extractor", "band-converter") else 1,
        metadata=metadata,
    )
    settings = CogSettings(categorical=categorical)
    source = write_raster(folder / "src.tif", spec)
    out = folder / "out.tif"
    if path_kind == "raw":
        return to_cog(RasterInput(source), out, settings), 1
    if path_kind == "display":
        return to_cog(RasterInput(source), out, dataclasses.replace(settings, profile="display")), 1
    if path_kind == "band-selection":
        return to_cog(RasterInput(source, bands=(2,)), out, settings), 2
    if path_kind == "stack":
        other = write_raster(folder / "other.tif", dataclasses.replace(spec, seed=1))
        return to_cog([RasterInput(source), RasterInput(other)], out, settings), 1
    if path_kind == "assign-crs":
        no_crs = write_raster(folder / "no-crs.tif", dataclasses.replace(spec, crs=None))
        settings = dataclasses.replace(settings, assign_crs="EPSG:4326")
        return to_cog(RasterInput(no_crs), out, settings), 1
    work = folder / "work"
    work.mkdir()
    if path_kind == "band-converter":
        with band_converter(RasterInput(source), settings, work) as convert:
            return convert(2, out).info, 2
    with band_extractor(RasterInput(source), settings, work) as extract:
        return to_cog(extract(2), out, settings), 2
