"""The dataset declaration schema: pydantic models of a `defs.yaml`'s attributes and the rules
each field obeys. Rendering templates is `datasets/rendering.py`; reading files `loading.py`."""

from bq_pipelines.datasets.schema.base import shared_grids, shared_hosts
from bq_pipelines.datasets.schema.cog import CogOptions, CogOverrides
from bq_pipelines.datasets.schema.declaration import Declaration, LegacyDifference, Provider
from bq_pipelines.datasets.schema.items import ExpansionNames, ItemExpansion, ItemTemplate
from bq_pipelines.datasets.schema.partitions import (
    FILES_DIMENSION,
    STATIC_KEY_SEPARATOR,
    DimensionValue,
    FilesDimension,
    FilesMetadata,
    Partitions,
    StaticDimension,
    TimeDimension,
    next_period,
)
from bq_pipelines.datasets.schema.sources import Condition, Source, Variant

__all__ = [
    "FILES_DIMENSION",
    "STATIC_KEY_SEPARATOR",
    "CogOptions",
    "CogOverrides",
    "Condition",
    "Declaration",
    "DimensionValue",
    "ExpansionNames",
    "FilesDimension",
    "FilesMetadata",
    "ItemExpansion",
    "ItemTemplate",
    "LegacyDifference",
    "Partitions",
    "Provider",
    "Source",
    "StaticDimension",
    "TimeDimension",
    "Variant",
    "next_period",
    "shared_grids",
    "shared_hosts",
]
