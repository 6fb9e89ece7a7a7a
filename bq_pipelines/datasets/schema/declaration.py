"""The dataset declaration: the attributes of `bq_pipelines/defs/<id>/defs.yaml`, validated.

A declaration says where a dataset's files are, how it is partitioned, and how each partition
becomes COGs and STAC items. Validating one also runs what rendering its templates would refuse
(`validation.py`): a `Declaration` renders every partition it declares without a problem.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from bq_pipelines.datasets import validation
from bq_pipelines.datasets.schema.base import Strict
from bq_pipelines.datasets.schema.cog import CogOptions
from bq_pipelines.datasets.schema.items import ItemTemplate
from bq_pipelines.datasets.schema.partitions import Partitions
from bq_pipelines.datasets.schema.sources import Source, Variant
from bq_pipelines.lib import names

DEFAULT_OWNERS = ("team:biodiversite-quebec",)


class Provider(Strict):
    name: str
    roles: list[Literal["licensor", "producer", "processor", "host"]] = Field(default_factory=list)
    url: str | None = None
    description: str | None = None


class LegacyDifference(Strict):
    """A deliberate difference from what the legacy catalog published (a fix of a legacy bug),
    with its reason: `bq-pipelines compare` reports it apart, and the README's "Differences from
    the legacy catalog" lists it.

    `field` is what differs: a collection field (`license`, `title`, `description`,
    `extent.temporal`), an item field (`properties.<name>`, `datetime`, `assets.href`), or
    `id` (a legacy item id no longer published, `items` naming them). `items` names the items
    concerned; empty means every item (or the collection itself for a collection field).
    """

    field: str
    items: list[str] = Field(default_factory=list)
    reason: Annotated[str, Field(min_length=10)]

    def covers(self, field: str, item_id: str | None) -> bool:
        return self.field == field and (not self.items or item_id in self.items)


class Declaration(Strict):
    """One dataset: the attributes of its `bq_pipelines/defs/<id>/defs.yaml`."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$", max_length=names.MAX_ID_LENGTH)]
    title: str
    description: str
    license: str
    providers: list[Provider] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)
    folder: str  # storage folder under the object prefix: keys are <prefix>/<folder>/<file>
    source: Source
    sources: list[Source] = Field(default_factory=list)  # extra inputs stacked as bands
    partitions: Partitions
    item: ItemTemplate
    cog: CogOptions = CogOptions()
    variants: list[Variant] = Field(default_factory=list)
    item_assets: dict[str, Any] = Field(default_factory=dict)
    summaries: dict[str, Any] = Field(default_factory=dict)
    summarize: list[str] = Field(default_factory=list)  # item properties summarized from items
    links: list[dict[str, Any]] = Field(default_factory=list)  # e.g. {rel: license, href: ...}
    extra_fields: dict[str, Any] = Field(default_factory=dict)
    # A PNG thumbnail per item, beside its COG and in the item's `thumbnail` asset (README:
    # "Previews"); off for datasets of very many small items.
    thumbnails: bool = True
    # Dagster asset owners: emails or `team:<name>`.
    owners: list[str] = Field(default_factory=lambda: list(DEFAULT_OWNERS))
    # A cron: a time-partitioned dataset's schedule materializing its newest period (a series
    # without an end gets one at its cadence by default). Off until turned on in the UI.
    schedule: str | None = None
    # The collection's temporal extent as the legacy catalog declared it (first and last day,
    # published as midnight of each); every item's dates must lie within those days.
    temporal_extent: tuple[date, date] | None = None
    # What this declaration publishes differently from the legacy catalog, and why.
    legacy_differences: list[LegacyDifference] = Field(default_factory=list)

    def legacy_difference(self, field: str, item_id: str | None = None) -> LegacyDifference | None:
        """The declared difference covering `field` of `item_id` (of the collection: None)."""
        return next((d for d in self.legacy_differences if d.covers(field, item_id)), None)

    @model_validator(mode="after")
    def _bounded_extent(self) -> Declaration:
        extent = self.temporal_extent
        if extent is not None and extent[1] < extent[0]:
            raise ValueError(f"temporal_extent: {extent[1]} is before {extent[0]}")
        if extent is not None and self.grows:
            raise ValueError(
                "temporal_extent: a growing series takes its extent from its items; declare none"
            )
        return self

    @field_validator("owners")
    @classmethod
    def _owners(cls, owners: list[str]) -> list[str]:
        for owner in owners:
            if not (owner.startswith("team:") and len(owner) > 5) and "@" not in owner:
                raise ValueError(f"{owner!r}: an owner is an email or team:<name>")
        return owners

    @field_validator("schedule")
    @classmethod
    def _cron(cls, schedule: str | None) -> str | None:
        if schedule is not None and len(schedule.split()) != 5:
            raise ValueError(
                f"{schedule!r}: a cron has five fields (minute hour day month weekday)"
            )
        return schedule

    @model_validator(mode="after")
    def _scheduled_series(self) -> Declaration:
        if self.schedule is not None and self.partitions.time is None:
            raise ValueError(
                "schedule: only a time-partitioned dataset has a newest partition to run; "
                "re-run static or file partitions with a backfill"
            )
        return self

    @property
    def grows(self) -> bool:
        """A time series without an end: a new partition each period."""
        return self.partitions.time is not None and self.partitions.time.end is None

    @property
    def hosts(self) -> list[str]:
        """The declared source hosts (`local` for the data root, `url` for full URLs)."""
        declared = [self.source, *self.sources]
        declared += [v.source for v in self.variants if v.source is not None]
        kinds = [s.host if s.host else "local" if s.local is not None else "url" for s in declared]
        return list(dict.fromkeys(kinds))

    @field_validator("folder")
    @classmethod
    def _folder_is_a_relative_key(cls, folder: str) -> str:
        problem = names.relative_path_problem(folder)
        segments = folder.rstrip("/").split("/")  # keys drop a trailing '/'
        if problem is None and any(p in ("", ".") or not p.strip() for p in segments):
            problem = "must not contain empty or '.' segments"
        if problem is not None:
            raise ValueError(f"{folder!r}: {problem}")
        return folder

    @model_validator(mode="after")
    def _templates_use_known_variables(self) -> Declaration:
        validation.refuse_unknown_variables(self)
        return self

    @model_validator(mode="after")
    def _item_dates_and_entity_names_readable(self) -> Declaration:
        expand = self.item.expand
        if expand is not None and expand.names is not None and self.source.local is None:
            raise ValueError(
                "item.expand.names: the names are read from the source file when the items "
                "are planned, so the source must be `local` (under the data root)"
            )
        item = self.item
        both_ends = bool(item.start_datetime and item.end_datetime)
        if self.partitions.time is None and item.datetime is None and not both_ends:
            raise ValueError("item.datetime: required when there is no time partition")
        if bool(item.start_datetime) != bool(item.end_datetime):
            raise ValueError("item.start_datetime: set it with item.end_datetime, or neither")
        return self

    @model_validator(mode="after")
    def _refuse_what_would_fail_after_an_upload(self) -> Declaration:
        validation.refuse_what_would_fail_after_an_upload(self)
        return self
