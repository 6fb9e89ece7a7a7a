"""Dataset declarations: the YAML schema, its validation, and partition -> item planning.

A declaration says where a dataset's files are, how it is partitioned, and how each partition
becomes COGs and STAC items. Nothing here knows Dagster; `factory.py` turns declarations into
assets. Errors name the file, the field and the reason.
"""

from __future__ import annotations

import calendar
import itertools
import math
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bq_pipelines.datasets.templates import (
    TypedTemplate,
    as_typed,
    parse_datetime,
    render,
    render_property,
)
from bq_pipelines.datasets.templates import template_fields as _template_fields
from bq_pipelines.lib import names
from bq_pipelines.lib.cog import CogSettings
from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.lib.preview import thumbnail_file_name
from bq_pipelines.lib.stac import THUMBNAIL_ASSET

STATIC_KEY_SEPARATOR = "__"
FILES_DIMENSION = "file"
FILE_VARIABLES = ("file", "file_name")
TIME_VARIABLES = ("year", "month", "day", "date")
Cadence = Literal["yearly", "monthly", "daily"]
# global-mammals needs 5,090 items per partition; a partition is one run's step, and its items
# are published together.
MAX_ITEMS_PER_PARTITION = 100_000
MAX_STATIC_PARTITIONS = 100_000
# At load, every partition's ids, keys, paths and dates are rendered and checked when there are
# at most this many partitions; beyond, every static combination with the first and last
# periods, and every period with the first combination.
MAX_PARTITIONS_RENDERED_AT_LOAD = 100_000


SHARED_FILES = "bq_pipelines/shared"
# libyaml's loader when PyYAML has it: the GFW grid makes pure-Python parsing slow.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Declarations (as JSON) whose partitions were all rendered without a problem.
_RENDERED_OK: set[str] = set()
DEFS_FILE = "defs.yaml"
DEFAULT_OWNERS = ("team:biodiversite-quebec",)


@cache
def shared_hosts() -> dict[str, str]:
    """Source hosts and their base URLs, declared once in `shared/hosts.yaml`."""
    return _shared_mapping("hosts.yaml")


@cache
def shared_grids() -> dict[str, list[str]]:
    """Value lists shared by several datasets (tile grids), in `shared/grids.yaml`."""
    return _shared_mapping("grids.yaml")


def _shared_mapping(name: str) -> dict[str, Any]:
    text = (resources.files("bq_pipelines") / "shared" / name).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{SHARED_FILES}/{name}: must be a mapping")
    return data


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Provider(_Strict):
    name: str
    roles: list[Literal["licensor", "producer", "processor", "host"]] = Field(default_factory=list)
    url: str | None = None
    description: str | None = None


class CogOptions(_Strict):
    """The COG settings a declaration may set; see lib/cog.py CogSettings."""

    profile: Literal["raw", "display"] = "raw"
    categorical: bool = False
    assign_crs: str | None = None
    nodata: float | None = None
    # DEFLATE (level 6) unless said otherwise; zstd (level 1) encodes about twice as fast to the
    # same size, for datasets of very many COGs, and needs readers whose GDAL (>= 2.3) or
    # geotiff.js decodes it.
    compression: Literal["deflate", "zstd"] = "deflate"

    def settings(self) -> CogSettings:
        return CogSettings(
            profile=self.profile,
            categorical=self.categorical,
            assign_crs=self.assign_crs,
            nodata=self.nodata,
            compression=self.compression,
        )

    def versioned(self) -> dict[str, Any]:
        """The fields a code version hashes: a declaration that keeps the default compression
        keeps the version it had before the choice existed (its assets do not turn stale)."""
        fields = self.model_dump()
        if self.compression == "deflate":
            del fields["compression"]
        return fields


class CogOverrides(_Strict):
    profile: Literal["raw", "display"] | None = None
    categorical: bool | None = None
    assign_crs: str | None = None
    nodata: float | None = None


class DimensionValue(_Strict):
    """One value of a static dimension, with extra template variables and COG overrides."""

    value: str
    vars: dict[str, str | int | float] = Field(default_factory=dict)
    cog: CogOverrides | None = None

    @field_validator("value")
    @classmethod
    def _no_separator(cls, value: str) -> str:
        if not value or STATIC_KEY_SEPARATOR in value or "|" in value or "," in value:
            raise ValueError(f"{value!r}: must be non-empty, without '|', ',' or '__'")
        return value


def _coerce_values(raw: Any) -> Any:
    if isinstance(raw, list):
        return [
            {"value": str(v)}
            if isinstance(v, str | int | float)
            else {**v, "value": str(v["value"])}
            if isinstance(v, dict) and isinstance(v.get("value"), int | float)
            else v
            for v in raw
        ]
    return raw


class TimeDimension(_Strict):
    name: str = "date"
    cadence: Cadence
    start: date
    end: date | None = None  # inclusive: the last period's first day; None: up to today

    @model_validator(mode="after")
    def _ordered(self) -> TimeDimension:
        if self.end is not None and self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self

    @field_validator("start", "end", mode="before")
    @classmethod
    def _parse_period(cls, raw: Any) -> Any:
        # Accept "1979", "1979-01" and "1979-01-01", meaning the first day of that period.
        if isinstance(raw, int):
            return date(raw, 1, 1)
        if isinstance(raw, str) and len(raw) in (4, 7):
            parts = [int(p) for p in raw.split("-")]
            return date(parts[0], parts[1] if len(parts) > 1 else 1, 1)
        return raw

    def period_starts(self) -> list[date]:
        """Every period's first day, start to end inclusive."""
        starts, current = [], self.start
        last = self.end or date.today()
        while current <= last:
            starts.append(current)
            current = next_period(current, self.cadence)
        return starts

    @property
    def key_format(self) -> str:
        return {"yearly": "%Y", "monthly": "%Y-%m", "daily": "%Y-%m-%d"}[self.cadence]


def next_period(day: date, cadence: Cadence) -> date:
    if cadence == "yearly":
        return date(day.year + 1, 1, 1)
    if cadence == "monthly":
        return date(day.year + day.month // 12, day.month % 12 + 1, 1)
    return date.fromordinal(day.toordinal() + 1)


def period_end(start: date, cadence: Cadence) -> datetime:
    """Last instant of the period starting at `start`, as an aware UTC datetime."""
    if cadence == "yearly":
        last = date(start.year, 12, 31)
    elif cadence == "monthly":
        last = date(start.year, start.month, calendar.monthrange(start.year, start.month)[1])
    else:
        last = start
    return datetime(last.year, last.month, last.day, 23, 59, 59, tzinfo=UTC)


class StaticDimension(_Strict):
    name: str
    values: Annotated[list[DimensionValue], Field(min_length=1)]

    _coerce = field_validator("values", mode="before")(
        classmethod(lambda cls, v: _coerce_values(v))
    )

    @model_validator(mode="before")
    @classmethod
    def _values_of_a_grid(cls, raw: Any) -> Any:
        # `grid: <name>`: the values declared once in shared/grids.yaml.
        if not isinstance(raw, dict) or "grid" not in raw:
            return raw
        if "values" in raw:
            raise ValueError("set either values or grid, not both")
        grids = shared_grids()
        grid = raw["grid"]
        if grid not in grids:
            raise ValueError(
                f"grid: {grid!r} is not declared in {SHARED_FILES}/grids.yaml; "
                f"known: {', '.join(sorted(grids))}"
            )
        return {**{k: v for k, v in raw.items() if k != "grid"}, "values": grids[grid]}

    @model_validator(mode="after")
    def _unique(self) -> StaticDimension:
        seen = [v.value for v in self.values]
        duplicates = sorted({v for v in seen if seen.count(v) > 1})
        if duplicates:
            raise ValueError(f"duplicate values {duplicates}")
        return self


class FilesMetadata(_Strict):
    """A CSV under the local data root with one row per file (like the legacy stressors_qc
    list): its `columns` become template variables of the file's partition. `overrides`
    replace cells of a file's row (by file name): a fix of the CSV kept in the declaration,
    e.g. the legacy stressors CSV giving two files the same id."""

    csv: str
    key: str = "filename"  # the column holding the file name
    columns: Annotated[list[str], Field(min_length=1)]
    overrides: dict[str, dict[str, str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _overrides_name_columns(self) -> FilesMetadata:
        for file_name, cells in self.overrides.items():
            unknown = sorted(set(cells) - set(self.columns))
            if unknown:
                raise ValueError(
                    f"overrides: {file_name!r}: {unknown} are not among the columns {self.columns}"
                )
        return self

    @field_validator("csv")
    @classmethod
    def _relative(cls, csv: str) -> str:
        return _relative_path(csv)


class FilesDimension(_Strict):
    """One partition per file matching `glob` under the local data root, found by a sensor
    (Dagster dynamic partitions). Template variables: `{file}` (the stem), `{file_name}`, and
    the `metadata` CSV's columns."""

    glob: str
    metadata: FilesMetadata | None = None

    @field_validator("glob")
    @classmethod
    def _relative(cls, glob: str) -> str:
        return _relative_path(glob)


def _relative_path(value: str) -> str:
    problem = names.relative_path_problem(value)
    if problem is not None:
        raise ValueError(f"{value!r}: {problem}")
    return value


class Partitions(_Strict):
    """A time dimension, static dimensions, or both; or the files of a folder. Several static
    dimensions are combined into one Dagster dimension whose keys join the values with '__'."""

    time: TimeDimension | None = None
    static: list[StaticDimension] = Field(default_factory=list)
    files: FilesDimension | None = None
    batch_size: int = Field(default=10, ge=1, le=10_000)

    @model_validator(mode="after")
    def _some_dimension(self) -> Partitions:
        if self.files is not None:
            if self.time is not None or self.static:
                raise ValueError("files partitions cannot be combined with time or static")
            return self
        if self.time is None and not self.static:
            raise ValueError("declare a time dimension, static dimensions, or both")
        names = [d.name for d in self.static] + ([self.time.name] if self.time else [])
        if len(set(names)) != len(names):
            raise ValueError(f"dimension names must be unique, got {names}")
        # year/month/day/date are only set by a time dimension.
        clash = set(names) & set(TIME_VARIABLES) - {self.time.name} if self.time else set()
        if clash:
            raise ValueError(f"dimension names {sorted(clash)} are reserved time variables")
        for dim in self.static:
            for value in dim.values:
                shadowed = sorted(set(value.vars) & set(names))
                if shadowed:
                    raise ValueError(
                        f"{dim.name}={value.value}: vars {shadowed} would hide a dimension"
                    )
        return self

    @property
    def static_dimension_name(self) -> str:
        return "__".join(d.name for d in self.static)

    def static_keys(self) -> list[str]:
        combos: list[list[str]] = [[]]
        for dim in self.static:
            combos = [[*c, v.value] for c in combos for v in dim.values]
        return [STATIC_KEY_SEPARATOR.join(c) for c in combos]


class Source(_Strict):
    """Where one partition's input files are.

    `url`: template of a remote URL; `{host}` is not a variable, `host` names the source host
    whose base URL (default `base_url`) is prefixed, so mirrors override it by configuration.
    `local`: a path template under the configured local data root.
    """

    host: str | None = None
    base_url: str | None = None
    path: str | None = None  # appended to the host's base URL
    url: str | None = None  # a full URL template (no host override)
    local: str | None = None  # path template relative to the local data root
    subdataset: str | None = None
    bands: list[Annotated[int, Field(ge=1)]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _base_url_of_a_shared_host(cls, raw: Any) -> Any:
        # A host of shared/hosts.yaml brings its base URL; a dataset may not redeclare it
        # differently (mirrors are configuration: BQ_SOURCE_BASE_URLS).
        if not isinstance(raw, dict) or raw.get("host") not in shared_hosts():
            return raw
        declared = shared_hosts()[raw["host"]]
        given = raw.get("base_url")
        if given is not None and given.rstrip("/") != declared.rstrip("/"):
            raise ValueError(
                f"base_url: host {raw['host']!r} is declared in {SHARED_FILES}/hosts.yaml "
                f"with {declared}; drop base_url (a mirror is set with BQ_SOURCE_BASE_URLS)"
            )
        return {**raw, "base_url": declared}

    @model_validator(mode="after")
    def _one_location(self) -> Source:
        given = [name for name in ("path", "url", "local") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(f"set exactly one of path (with host), url or local; got {given}")
        if self.path and not (self.host and self.base_url):
            raise ValueError(
                f"path needs a host of {SHARED_FILES}/hosts.yaml (or host and base_url)"
            )
        if self.base_url is not None:
            problem = names.url_path_problem(self.base_url)
            if problem is not None:
                raise ValueError(f"base_url: {problem}")
        return self

    @property
    def kind(self) -> Literal["path", "url", "local"]:
        return "path" if self.path else "url" if self.url else "local"

    @property
    def template(self) -> str:
        return self.path or self.url or self.local or ""

    def location_problem(self, rendered: str) -> str | None:
        """Why a rendered location cannot be read safely: a local path or a host path must stay
        under its root (no '..', absolute path, backslash or NUL); a URL must not climb."""
        if self.kind == "url":
            return names.url_path_problem(rendered)
        return names.relative_path_problem(rendered)


class ExpansionNames(_Strict):
    """The names of the expanded entities, read from the source file itself (an EBV cube's
    `entity` variable holds its species names): item `i` gets the `i - start + 1`-th name as
    the template variable `variable`, with each `replace` key replaced by its value."""

    variable: str
    netcdf_variable: str = "entity"
    replace: dict[str, str] = Field(default_factory=dict)


class ItemExpansion(_Strict):
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


class ItemTemplate(_Strict):
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


class Condition(_Strict):
    """A range of an integer template variable (inclusive bounds)."""

    min: int | None = None
    max: int | None = None


class Variant(_Strict):
    """Partitions matching `when` read another source and/or with other COG settings (e.g.
    ESA CCI land cover: GeoTIFF up to 2015, NetCDF from 2016)."""

    when: dict[str, str | int | list[str | int] | Condition]
    source: Source | None = None
    cog: CogOverrides | None = None
    # Template variables of the matching partitions (ESA CCI's file names and versions).
    vars: dict[str, str | int | float] = Field(default_factory=dict)

    def matches(self, variables: Mapping[str, Any]) -> bool:
        return all(_matches(variables.get(name), test) for name, test in self.when.items())


def _matches(value: Any, test: Any) -> bool:
    if isinstance(test, Condition):
        return (
            isinstance(value, int)
            and (test.min is None or value >= test.min)
            and (test.max is None or value <= test.max)
        )
    if isinstance(test, list):
        return str(value) in {str(t) for t in test}
    return str(value) == str(test)


class LegacyDifference(_Strict):
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


@dataclass(frozen=True)
class RenderedSource:
    """One source of a partition: which declared source applies, and its rendered location."""

    source: Source
    label: str  # the field it comes from: "source", "sources[0]", "variants[1].source"
    location: str  # the rendered template: a path under the data root or host, or a URL
    subdataset: str | None


class Declaration(_Strict):
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
        known = self.template_variables
        for field, template in self._templates():
            for name in _template_fields(template, field):
                if name not in known:
                    raise ValueError(
                        f"{field}: unknown template variable {{{name}}}; "
                        f"known: {', '.join(sorted(known))}"
                    )
        for index, variant in enumerate(self.variants):
            unknown = sorted(set(variant.when) - known)
            if unknown:
                raise ValueError(f"variants[{index}].when: unknown template variables {unknown}")
        expand = self.item.expand
        if expand is not None and (
            expand.variable in known - {expand.variable} or expand.variable in self._dims
        ):
            raise ValueError(f"item.expand.variable: {expand.variable!r} is already a variable")
        if expand is not None and expand.names is not None:
            if expand.names.variable in known - {expand.names.variable}:
                raise ValueError(
                    f"item.expand.names.variable: {expand.names.variable!r} is already a variable"
                )
            if self.source.local is None:
                raise ValueError(
                    "item.expand.names: the names are read from the source file when the items "
                    "are planned, so the source must be `local` (under the data root)"
                )
        if (
            self.partitions.time is None
            and self.item.datetime is None
            and not (self.item.start_datetime and self.item.end_datetime)
        ):
            raise ValueError("item.datetime: required when there is no time partition")
        if bool(self.item.start_datetime) != bool(self.item.end_datetime):
            raise ValueError("item.start_datetime: set it with item.end_datetime, or neither")
        return self

    @model_validator(mode="after")
    def _refuse_what_would_fail_after_an_upload(self) -> Declaration:
        """Everything a run would otherwise find out after uploading objects: ids and keys
        shared by partitions, ids the catalog refuses, paths leaving their root, dates that do
        not parse, item counts beyond reason."""
        combinations = math.prod(len(d.values) for d in self.partitions.static)
        if combinations > MAX_STATIC_PARTITIONS:
            raise ValueError(
                f"partitions.static: {combinations} combinations, more than "
                f"{MAX_STATIC_PARTITIONS}; split the dataset"
            )
        for field, template in self._key_templates():
            missing = self._partition_variable_missing_from(template)
            if missing is not None:
                raise ValueError(f"{field}: {missing}")
        # The slow part of a load (every partition rendered): a declaration is validated twice
        # per load (by the StacDataset component and by load_declarations' cross-dataset
        # checks), so one that passed is not rendered again.
        rendered_key = self.model_dump_json()
        if rendered_key not in _RENDERED_OK:
            self._check_rendered_partitions()
            if len(_RENDERED_OK) > 256:
                _RENDERED_OK.clear()
            _RENDERED_OK.add(rendered_key)
        return self

    # --------------------------------------------------------------- one partition's values

    def partition_variables(
        self, chosen: Sequence[DimensionValue], period: date | None
    ) -> dict[str, Any]:
        """Template variables of a time and/or static partition: the time parts of `period`,
        then each chosen static value and its vars."""
        variables: dict[str, Any] = {"collection": self.id}
        if self.partitions.time is not None and period is not None:
            variables |= time_variables(self.partitions.time, period)
        for dimension, value in zip(self.partitions.static, chosen, strict=True):
            variables[dimension.name] = value.value
            variables |= value.vars
        variant = self.variant_for(variables)
        if variant is not None:
            variables |= variant.vars
        return variables

    def variant_for(self, variables: Mapping[str, Any]) -> Variant | None:
        return next((v for v in self.variants if v.matches(variables)), None)

    def rendered_sources(self, variables: Mapping[str, Any]) -> list[RenderedSource]:
        """The partition's sources (its variant's first, if one applies), rendered and checked
        (ConfigError naming the field when a location could leave its root)."""
        variant = self.variant_for(variables)
        primary = ("source", self.source)
        if variant is not None and variant.source is not None:
            primary = (f"variants[{self.variants.index(variant)}].source", variant.source)
        labelled = [primary, *((f"sources[{i}]", s) for i, s in enumerate(self.sources))]
        rendered = []
        for label, source in labelled:
            field = f"{label}.{source.kind}"
            location = render(source.template, variables, field)
            problem = source.location_problem(location)
            if problem is not None:
                raise ConfigError(f"{field}: {location!r}: {problem}")
            subdataset = None
            if source.subdataset is not None:
                subdataset = render(source.subdataset, variables, f"{label}.subdataset")
                problem = names.subdataset_problem(subdataset)
                if problem is not None:
                    raise ConfigError(f"{label}.subdataset: {subdataset!r}: {problem}")
            rendered.append(RenderedSource(source, label, location, subdataset))
        return rendered

    def item_variables(
        self, variables: Mapping[str, Any], names: Sequence[str] | None = None
    ) -> Iterator[dict[str, Any]]:
        """The variables of each item of the partition: one, or one per expanded index (with
        its entity's name from `names`, as read from the source, when the expansion has
        names; placeholders otherwise)."""
        expand = self.item.expand
        if expand is None:
            yield dict(variables)
            return
        for index in range(expand.start, expand.start + expand.count):
            yield {**variables, **self._entity_name(index, names), expand.variable: index}

    def _entity_name(self, index: int, names: Sequence[str] | None) -> dict[str, str]:
        expand = self.item.expand
        if expand is None or expand.names is None:
            return {}
        if names is None:
            return {expand.names.variable: expand.placeholder_name(index)}
        return {expand.names.variable: names[index - expand.start]}

    def first_band(self, variables: Mapping[str, Any]) -> int:
        """The band the first expanded item reads."""
        assert self.item.expand is not None
        text = render(self.item.expand.first_band, variables, "item.expand.first_band")
        try:
            band = int(text)
        except ValueError:
            raise ConfigError(f"item.expand.first_band: {text!r} is not an integer") from None
        if band < 1:
            raise ConfigError(f"item.expand.first_band: {band} is not a band number (from 1)")
        return band

    def item_names(self, variables: Mapping[str, Any]) -> tuple[str, str]:
        """(item id, COG file name) of one item, checked: an id the STAC API and the static
        catalog accept, a plain file name for its object key."""
        item_id = render(self.item.id, variables, "item.id")
        problem = names.id_problem(item_id)
        if problem is None and self.thumbnails and item_id == THUMBNAIL_ASSET:
            problem = "is the key of the thumbnail asset (thumbnails: true)"
        if problem is not None:
            raise ConfigError(f"item.id: {item_id!r}: {problem}")
        field = "item.file_name" if self.item.file_name else "item.id"
        file_name = (
            render(self.item.file_name, variables, field)
            if self.item.file_name
            else f"{item_id}.tif"
        )
        problem = names.file_name_problem(file_name)
        if problem is None and self.thumbnails:
            problem = names.file_name_problem(thumbnail_file_name(file_name))
            problem = problem and f"its thumbnail's name (thumbnails: true) {problem}"
        if problem is not None:
            raise ConfigError(f"{field}: file name {file_name!r}: {problem}")
        return item_id, file_name

    def item_datetimes(
        self, variables: Mapping[str, Any]
    ) -> tuple[datetime | None, datetime | None, datetime | None]:
        """(datetime, start_datetime, end_datetime) of one item; start after end is an error."""
        item = self.item
        start = end = None
        if item.start_datetime and item.end_datetime:
            start = parse_datetime(
                render(item.start_datetime, variables, "item.start_datetime"),
                "item.start_datetime",
            )
            end = parse_datetime(
                render(item.end_datetime, variables, "item.end_datetime"), "item.end_datetime"
            )
        moment = None
        if item.datetime:
            moment = parse_datetime(
                render(item.datetime, variables, "item.datetime"), "item.datetime"
            )
        elif self.partitions.time is not None:
            first = date.fromisoformat(variables["date"])
            moment = datetime(first.year, first.month, first.day, tzinfo=UTC)
            start = start or moment
            end = end or period_end(first, self.partitions.time.cadence)
        if start is not None and end is not None and start > end:
            raise ConfigError(
                f"item.start_datetime: {start.isoformat()} is after item.end_datetime "
                f"{end.isoformat()}"
            )
        return moment, start, end

    def item_properties(self, variables: Mapping[str, Any]) -> dict[str, Any]:
        """One item's declared properties, rendered with their types (templates.py)."""
        return {
            key: render_property(value, variables, f"item.properties.{key}")
            for key, value in self.item.properties.items()
        }

    # --------------------------------------------------------------- checks at load

    def _key_templates(self) -> list[tuple[str, str]]:
        """The templates naming an item and its object: the id, and the COG's file name
        (`<item id>.tif` by default, then the id names the object too)."""
        templates = [("item.id", self.item.id)]
        if self.item.file_name:
            templates.append(("item.file_name", self.item.file_name))
        return templates

    @property
    def key_file_template(self) -> str:
        """The template of the file name under the folder: what two datasets may share."""
        return self.item.file_name or f"{self.item.id}.tif"

    @cached_property
    def every_file_name(self) -> frozenset[str] | None:
        """Every COG file name the dataset can write, when its partitions are all declared
        (static values, a bounded time series, items not named after a source's content) and
        few enough to render; None when they are not known in advance."""
        partitions = self.partitions
        expand = self.item.expand
        if (
            partitions.files is not None
            or (partitions.time is not None and partitions.time.end is None)
            or (expand is not None and (expand.names is not None or expand.count > 1))
        ):
            return None
        combinations = math.prod(len(d.values) for d in partitions.static)
        periods = len(partitions.time.period_starts()) if partitions.time else 1
        if combinations * periods > MAX_PARTITIONS_RENDERED_AT_LOAD:
            return None
        return frozenset(
            self.item_names(item_variables)[1]
            for _, variables in self._partition_samples()
            for item_variables in self._sampled_items(variables)
        )

    def _partition_variable_missing_from(self, template: str) -> str | None:
        """Why `template` would give two partitions (or two expanded items) the same value:
        the partition variable it does not use, or None when it uses them all.

        A static dimension is used through its name, or through vars whose values tell each of
        its values apart (`file_stem` of earthenv, `variable` and `depth` together in
        soilgrids); a dimension with a single value needs nothing. A time dimension is used
        through its name, `date`, or the year (and month, and day) its cadence needs.
        """
        used = set(_template_fields(template, "template"))
        shared_vars = self._vars_of_several_dimensions
        for dimension in self.partitions.static:
            if len(dimension.values) < 2 or dimension.name in used:
                continue
            own = sorted((used & {n for v in dimension.values for n in v.vars}) - shared_vars)
            keys = {tuple(str(v.vars.get(n)) for n in own) for v in dimension.values}
            if not own or len(keys) < len(dimension.values):
                return (
                    f"does not vary with the partition variable {{{dimension.name}}}: use it, "
                    "or vars whose values differ for each of its values; otherwise its "
                    "partitions would share ids and objects"
                )
        time = self.partitions.time
        if time is not None and (time.end is None or time.end > time.start):
            needed = {"yearly": ["year"], "monthly": ["year", "month"]}.get(
                time.cadence, ["year", "month", "day"]
            )
            if not used & {time.name, "date"} and not used >= set(needed):
                alternative = " and ".join(f"{{{n}}}" for n in needed)
                return (
                    f"does not vary with the time partition {{{time.name}}} ({time.cadence}): "
                    f"use it, {{date}}, or {alternative}"
                )
        expand = self.item.expand
        named = expand is not None and expand.names is not None and expand.names.variable in used
        if expand is not None and expand.count > 1 and expand.variable not in used and not named:
            return (
                f"does not vary with {{{expand.variable}}} (item.expand.variable): the "
                f"{expand.count} items of a partition would share one"
            )
        files = self.partitions.files
        if files is not None and not used & (set(FILE_VARIABLES) | set(self._metadata_columns)):
            return (
                "does not vary with the file of the partition: use {file}, {file_name} or a "
                "column of partitions.files.metadata"
            )
        return None

    @property
    def _metadata_columns(self) -> list[str]:
        files = self.partitions.files
        return list(files.metadata.columns) if files and files.metadata else []

    @cached_property
    def _vars_of_several_dimensions(self) -> set[str]:
        # A var that two dimensions set tells neither apart: the later one overrides it.
        counts: dict[str, int] = {}
        for dimension in self.partitions.static:
            for name in {n for v in dimension.values for n in v.vars}:
                counts[name] = counts.get(name, 0) + 1
        return {name for name, count in counts.items() if count > 1}

    def unique_metadata_columns(self) -> list[tuple[str, list[str]]]:
        """(field, metadata columns) whose values must differ between the CSV's rows: the
        columns an id or file name template uses instead of {file} or {file_name}."""
        checks = []
        for field, template in self._key_templates():
            used = _template_fields(template, field)
            if not set(used) & set(FILE_VARIABLES):
                columns = [c for c in self._metadata_columns if c in used]
                if columns:
                    checks.append((field, columns))
        return checks

    def _check_rendered_partitions(self) -> None:
        """Render every partition (or a sample, see MAX_PARTITIONS_RENDERED_AT_LOAD) as a run
        would: ids and file names valid and unique, paths under their root, dates parsed."""
        ids: dict[str, str] = {}
        files: dict[str, str] = {}
        file_field = "item.file_name" if self.item.file_name else "item.id"
        # Files partitions: their values are only known at plan time, which checks dates (and
        # every rendered value) again; placeholders would not parse as dates.
        dated = self.partitions.files is None
        for label, variables in self._partition_samples():
            try:
                for item_variables in self._sampled_items(variables):
                    item_id, file_name = self.item_names(item_variables)
                    _claim(ids, item_id, label, "item.id")
                    _claim(files, file_name, label, file_field)
                    if dated:
                        self.check_in_extent(self.item_datetimes(item_variables))
                        self.item_properties(item_variables)
                self.rendered_sources(variables)
                if dated and self.item.expand is not None:
                    self.first_band(variables)
            except ConfigError as error:
                raise ValueError(f"{error} (partition {label})") from None

    def check_in_extent(self, moments: Sequence[datetime | None]) -> None:
        """ConfigError naming `temporal_extent` when an item's dates fall outside it."""
        if self.temporal_extent is None:
            return
        first, last = self.temporal_extent
        for moment in (m for m in moments if m is not None):
            if not first <= moment.astimezone(UTC).date() <= last:
                raise ConfigError(
                    f"temporal_extent: [{first}, {last}] does not hold the item date "
                    f"{moment.isoformat()}"
                )

    def sampled_sources(self) -> Iterator[tuple[str, RenderedSource]]:
        """(partition label, rendered source) of every partition rendered at load (the sample
        `_check_rendered_partitions` checks): what a check needing the settings (the data root,
        the mirrors) runs over when the code location loads."""
        for label, variables in self._partition_samples():
            for rendered in self.rendered_sources(variables):
                yield label, rendered

    def _sampled_items(self, variables: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The first and the last item of a partition (their ids are the shortest and the
        longest): the coverage check above already tells the others apart."""
        expand = self.item.expand
        if expand is None:
            return [dict(variables)]
        indexes = dict.fromkeys((expand.start, expand.start + expand.count - 1))
        return [
            {**variables, **self._entity_name(index, None), expand.variable: index}
            for index in indexes
        ]

    def _partition_samples(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(label, variables) of the partitions rendered at load."""
        partitions = self.partitions
        if partitions.files is not None:
            # Any file: placeholders, strings like the real values (file names, CSV cells).
            placeholders = dict.fromkeys(self._metadata_columns, "x")
            yield (
                "file=<any>",
                {"collection": self.id, **placeholders, "file": "x", "file_name": "x.tif"},
            )
            return
        combinations = list(itertools.product(*(d.values for d in partitions.static)))
        periods: list[date | None] = (
            list(partitions.time.period_starts()) if partitions.time else [None]
        )
        if not periods:
            return
        pairs: Iterable[tuple[int, int]]
        if len(combinations) * len(periods) <= MAX_PARTITIONS_RENDERED_AT_LOAD:
            pairs = itertools.product(range(len(combinations)), range(len(periods)))
        else:
            ends = dict.fromkeys((0, len(periods) - 1))
            pairs = dict.fromkeys(
                [
                    *((0, p) for p in range(len(periods))),
                    *itertools.product(range(len(combinations)), ends),
                ]
            )
        for c, p in pairs:
            chosen, period = combinations[c], periods[p]
            parts = [f"{d.name}={v.value}" for d, v in zip(partitions.static, chosen, strict=True)]
            if period is not None and partitions.time is not None:
                parts.insert(
                    0, f"{partitions.time.name}={period.strftime(partitions.time.key_format)}"
                )
            yield ", ".join(parts), self.partition_variables(chosen, period)

    def _templates(self) -> Iterator[tuple[str, str]]:
        labelled = [("source", self.source)]
        labelled += [(f"sources[{i}]", source) for i, source in enumerate(self.sources)]
        labelled += [
            (f"variants[{i}].source", variant.source)
            for i, variant in enumerate(self.variants)
            if variant.source is not None
        ]
        for label, source in labelled:
            yield f"{label}.{source.kind}", source.template
            if source.subdataset:
                yield f"{label}.subdataset", source.subdataset
        if self.item.expand is not None:
            yield "item.expand.first_band", self.item.expand.first_band
        for name in ("id", "file_name", "title", "datetime", "start_datetime", "end_datetime"):
            value = getattr(self.item, name)
            if value:
                yield f"item.{name}", value
        for key, value in self.item.properties.items():
            if isinstance(value, TypedTemplate):
                yield f"item.properties.{key}", value.template
            elif isinstance(value, str):
                yield f"item.properties.{key}", value

    @property
    def _dims(self) -> set[str]:
        return {d.name for d in self.partitions.static} | (
            {self.partitions.time.name} if self.partitions.time else set()
        )

    @cached_property
    def template_variables(self) -> set[str]:
        names = {"collection"}
        if self.partitions.files:
            names |= set(FILE_VARIABLES)
            if self.partitions.files.metadata is not None:
                names |= set(self.partitions.files.metadata.columns)
        if self.item.expand is not None:
            names.add(self.item.expand.variable)
            if self.item.expand.names is not None:
                names.add(self.item.expand.names.variable)
        for variant in self.variants:
            names |= set(variant.vars)
        if self.partitions.time:
            names |= {*TIME_VARIABLES, self.partitions.time.name}
        for dim in self.partitions.static:
            names.add(dim.name)
            for value in dim.values:
                names |= set(value.vars)
        return names


def _claim(seen: dict[str, str], value: str, label: str, field: str) -> None:
    """Record that partition `label` produces `value`; two partitions may not."""
    first = seen.setdefault(value, label)
    if first != label:
        raise ConfigError(
            f"{field}: partitions {first} and {label} both give {value!r}: each partition "
            "needs its own (check how the template joins its variables)"
        )


def time_variables(time: TimeDimension, start: date) -> dict[str, Any]:
    """Template variables of the period starting at `start`."""
    return {
        time.name: start.strftime(time.key_format),
        "year": start.year,
        "month": start.month,
        "day": start.day,
        "date": start.isoformat(),
    }


def _format_validation_error(origin: str, error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"])
        reason = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            reason = "unknown key"
        # A whole-declaration check names its field first.
        lines.append(f"{origin}: {location}: {reason}" if location else f"{origin}: {reason}")
    return "\n".join(lines)


def parse_declaration(data: Any, origin: str) -> Declaration:
    """Validate one declaration; ConfigError lists every problem as `origin: field: reason`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a dataset declaration must be a mapping")
    try:
        return Declaration.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(origin, error)) from None


def declaration_origin(path: Path) -> str:
    """How errors name a declaration file: `<id>/defs.yaml`, or the file name."""
    return f"{path.parent.name}/{path.name}" if path.name == DEFS_FILE else path.name


def load_declaration_file(path: Path) -> Declaration:
    """A dataset file: `defs/<id>/defs.yaml` (the StacDataset component: the declaration is
    its `attributes`) or a bare `<id>.yaml` declaration. The id must match the folder (file).
    Parsed once per version of the file (a code location's load asks for each several times)."""
    version = _file_version(path)
    if version not in _LOADED:
        _LOADED[version] = _read_declaration_file(path)
    return _LOADED[version]


def remember_declaration(path: Path, declaration: Declaration) -> None:
    """`declaration`, validated from `path` elsewhere (by Dagster, for the StacDataset
    component), is what `load_declaration_file(path)` returns while the file is unchanged."""
    _LOADED[_file_version(path)] = declaration


# Declarations by (file, modification time, size): a file edited since is read again.
_LOADED: dict[tuple[Path, int, int], Declaration] = {}


def _file_version(path: Path) -> tuple[Path, int, int]:
    stat = path.stat()
    return path.resolve(), stat.st_mtime_ns, stat.st_size


def _read_declaration_file(path: Path) -> Declaration:
    origin = declaration_origin(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
    except yaml.YAMLError as error:
        raise ConfigError(f"{origin}: not valid YAML: {error}") from None
    expected_id = path.stem
    if path.name == DEFS_FILE:
        expected_id = path.parent.name
        if not isinstance(data, dict) or "attributes" not in data:
            raise ConfigError(f"{origin}: a component file needs `type` and `attributes`")
        data = data["attributes"]
    declaration = parse_declaration(data, origin)
    if declaration.id != expected_id:
        where = "folder" if path.name == DEFS_FILE else "file"
        raise ConfigError(f"{origin}: id: {declaration.id!r} must match the {where} name")
    return declaration


def builtin_declaration_files() -> list[Path]:
    """`bq_pipelines/defs/<id>/defs.yaml` of every dataset."""
    folder = resources.files("bq_pipelines") / "defs"
    return sorted(
        Path(str(p / DEFS_FILE))
        for p in folder.iterdir()
        if p.is_dir() and (p / DEFS_FILE).is_file()
    )


def builtin_declaration_path(dataset_id: str) -> Path:
    """`bq_pipelines/defs/<id>/defs.yaml`; ConfigError naming the known ids otherwise."""
    paths = {p.parent.name: p for p in builtin_declaration_files()}
    if dataset_id not in paths:
        raise ConfigError(f"no dataset {dataset_id!r}; known: {', '.join(sorted(paths))}")
    return paths[dataset_id]


def builtin_declaration_data(dataset_id: str) -> dict[str, Any]:
    """The attributes of a built-in dataset's component file, as plain data (for a variant
    of it, e.g. under another id)."""
    data = yaml.safe_load(builtin_declaration_path(dataset_id).read_text(encoding="utf-8"))
    return data["attributes"]


def load_declarations(paths: Iterable[Path] | None = None) -> list[Declaration]:
    """Every declaration (the built-in ones by default); ids must be unique, and no two
    datasets may write the same object key."""
    files = list(paths or builtin_declaration_files())
    declarations = [load_declaration_file(p) for p in files]
    ids = [d.id for d in declarations]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"dataset ids declared twice: {duplicates}")
    origins = [declaration_origin(p) for p in files]
    check_distinct_keys(list(zip(origins, declarations, strict=True)))
    return declarations


def check_distinct_keys(declarations: Sequence[tuple[str, Declaration]]) -> None:
    """ConfigError when two datasets can write the same object key `<prefix>/<folder>/<file>`.

    Two datasets in the same folder are refused unless they provably never write the same
    file: when every partition of both is declared (static values, bounded series), their file
    names are rendered and must not meet (CHELSA's climatologies and projections share the
    legacy folder); otherwise their file name templates must never render alike: their fixed
    beginnings (or endings) differ, neither being a prefix (a suffix) of the other, e.g.
    `..._gain_{tile}.tif` and `..._lossyear_{tile}.tif`. Anything weaker would have to trust
    which values a variable will take (a file dropped in a folder, a series growing), and a
    shared key loses data silently. A declared value added later is checked at that load.
    """
    by_folder: dict[str, list[tuple[str, Declaration]]] = {}
    for origin, declaration in declarations:
        folder = "/".join(p for p in declaration.folder.split("/") if p)
        by_folder.setdefault(folder, []).append((origin, declaration))
    for folder, sharing in by_folder.items():
        for (first_origin, first), (other_origin, other) in itertools.combinations(sharing, 2):
            met = _file_names_met(first, other)
            if met is not None:
                raise ConfigError(
                    f"{other_origin}: folder: {folder!r} is also the folder of {first_origin}, "
                    f"and their file names {met}: one dataset would overwrite the other's "
                    "objects; give each dataset its own folder"
                )


def _file_names_met(first: Declaration, other: Declaration) -> str | None:
    """How two datasets of one folder may write the same file, or None when they cannot: their
    file names when both are known in advance (every partition declared), their templates
    otherwise."""
    names, other_names = first.every_file_name, other.every_file_name
    if names is not None and other_names is not None:
        shared = sorted(names & other_names)
        return f"meet ({', '.join(map(repr, shared[:3]))})" if shared else None
    a, b = first.key_file_template, other.key_file_template
    return f"may be the same ({b!r} and {a!r})" if templates_may_overlap(a, b) else None


def _literal_ends(template: str) -> tuple[str, str, bool]:
    """(fixed beginning, fixed ending, whether the template is fixed text only)."""
    parsed = list(string.Formatter().parse(template))
    if all(name is None for _, name, _, _ in parsed):
        text = "".join(literal for literal, _, _, _ in parsed)
        return text, text, True
    head = parsed[0][0]
    tail = parsed[-1][0] if parsed[-1][1] is None else ""
    return head, tail, False


def templates_may_overlap(first: str, second: str) -> bool:
    """False only when no rendering of `first` can equal one of `second`."""
    ends = [_literal_ends(first), _literal_ends(second)]
    fixed = [text for text, _, is_fixed in ends if is_fixed]
    if len(fixed) == 2:
        return fixed[0] == fixed[1]
    if fixed:  # a fixed name against a template: does the template's frame fit it?
        [(head, tail, _)] = [e for e in ends if not e[2]]
        text = fixed[0]
        return text.startswith(head) and text.endswith(tail) and len(text) >= len(head + tail)
    (head_a, tail_a, _), (head_b, tail_b, _) = ends
    heads_agree = head_a.startswith(head_b) or head_b.startswith(head_a)
    tails_agree = tail_a.endswith(tail_b) or tail_b.endswith(tail_a)
    return heads_agree and tails_agree
