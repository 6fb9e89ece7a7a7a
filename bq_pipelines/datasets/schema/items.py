"""What each partition publishes: its item (id, file name, dates, properties as templates),
or many items expanded from the bands of one source."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from bq_pipelines.datasets.schema.base import Strict
from bq_pipelines.datasets.templates import as_typed

# global-mammals needs 5,090 items per partition; a partition is one run's step, and its items
# are published together.
MAX_ITEMS_PER_PARTITION = 100_000


class ExpansionNames(Strict):
    """The names of the expanded entities, read from the source file itself (an EBV cube's
    `entity` variable holds its species names): item `i` gets the `i - start + 1`-th name as
    the template variable `variable`, with each `replace` key replaced by its value."""

    variable: str
    netcdf_variable: str = "entity"
    replace: dict[str, str] = Field(default_factory=dict)


class ItemExpansion(Strict):
    """Many items from one partition: item `i` (start..start+count-1) reads band
    `first_band + (i - start) * stride` of the source (e.g. one species of an EBV cube)."""

    variable: str
    start: int = Field(default=1, ge=0, le=1_000_000_000)
    count: int = Field(ge=1, le=MAX_ITEMS_PER_PARTITION)
    first_band: str = "1"  # a template rendering to an integer, e.g. "{band_offset}"
    stride: int = Field(default=1, ge=1, le=1_000_000)
    names: ExpansionNames | None = None

    def placeholder_name(self, index: int) -> str:
        """What stands for an entity's name at load, before the source is read."""
        return f"entity{index}"


class ItemTemplate(Strict):
    id: str
    expand: ItemExpansion | None = None
    file_name: str | None = None  # COG file name; default "<item id>.tif"
    title: str | None = None
    datetime: str | None = None  # ISO template; default: the time partition's start
    start_datetime: str | None = None
    end_datetime: str | None = None
    # Literals, templates, or typed templates `{template: ..., type: integer}` (templates.py).
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("properties", mode="before")
    @classmethod
    def _typed_properties(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            return {key: as_typed(value) for key, value in raw.items()}
        return raw
