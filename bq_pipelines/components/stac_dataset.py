"""The StacDataset component: one dataset declaration -> its assets, checks, job and sensors.

Each dataset is `bq_pipelines/defs/<id>/defs.yaml`:

    type: bq_pipelines.components.StacDataset
    attributes: {id: <id>, title: ..., source: ..., partitions: ..., item: ...}

The attributes are a `Declaration` (datasets/schema/): its pydantic model is the component's
schema, so `dg check yaml` reports a bad field with its line, and every refusal of the
declaration runs when the component loads. The assets are built by `factory.build_dataset`.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import BaseModel

from bq_pipelines.datasets.loading import DEFS_FILE, remember_declaration
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.orchestration.factory import build_dataset
from bq_pipelines.settings import current_settings


class StacDataset(dg.Component):
    """A raster dataset published to the STAC catalog: per partition, source -> COG -> object
    -> STAC item, then the collection.

    Not `Resolvable`: the attributes are the declaration model itself (its validators render
    every partition), not a model derived from this class's fields, and they contain `{...}`
    templates of their own that are no Dagster template.
    """

    def __init__(self, declaration: Declaration):
        self.declaration = declaration

    @classmethod
    def get_model_cls(cls) -> type[BaseModel]:
        return Declaration

    @classmethod
    def get_description(cls) -> str | None:
        return "A raster dataset of the STAC catalog, declared in YAML (datasets/schema/)."

    @classmethod
    def load(cls, attributes: BaseModel | None, context: dg.ComponentLoadContext) -> StacDataset:
        if not isinstance(attributes, Declaration):
            raise ConfigError(f"{context.path}: a StacDataset needs the dataset's attributes")
        if attributes.id != context.path.name:
            raise ConfigError(
                f"{context.path.name}/defs.yaml: id: {attributes.id!r} must match the folder name"
            )
        # Parsed and validated once: the code location's own checks reuse it.
        remember_declaration(context.path / DEFS_FILE, attributes)
        return cls(attributes)

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        # Kinds say where objects and items go: read from the same settings as the resources.
        return build_dataset(self.declaration, current_settings())

    def __repr__(self) -> str:
        return f"StacDataset({self.declaration.id!r})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, StacDataset) and other.declaration == self.declaration

    __hash__ = None  # type: ignore[assignment]
