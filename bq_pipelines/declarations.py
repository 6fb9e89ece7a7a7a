"""Dataset declarations: the YAML schema, its validation, and partition -> item planning.

A declaration says where a dataset's files are, how it is partitioned, and how each partition
becomes COGs and STAC items. Nothing here knows Dagster; `factory.py` turns declarations into
assets. Errors name the file, the field and the reason.
"""

from __future__ import annotations

import calendar
import string
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, date, datetime
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bq_pipelines.lib.cog import CogSettings
from bq_pipelines.lib.errors import ConfigError

STATIC_KEY_SEPARATOR = "__"
FILES_DIMENSION = "file"
TIME_VARIABLES = ("year", "month", "day", "date")
Cadence = Literal["yearly", "monthly", "daily"]


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

    def settings(self) -> CogSettings:
        return CogSettings(
            profile=self.profile,
            categorical=self.categorical,
            assign_crs=self.assign_crs,
            nodata=self.nodata,
        )


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

    @model_validator(mode="after")
    def _unique(self) -> StaticDimension:
        seen = [v.value for v in self.values]
        duplicates = sorted({v for v in seen if seen.count(v) > 1})
        if duplicates:
            raise ValueError(f"duplicate values {duplicates}")
        return self


class FilesMetadata(_Strict):
    """A CSV under the local data root with one row per file (like the legacy stressors_qc
    list): its `columns` become template variables of the file's partition."""

    csv: str
    key: str = "filename"  # the column holding the file name
    columns: Annotated[list[str], Field(min_length=1)]


class FilesDimension(_Strict):
    """One partition per file matching `glob` under the local data root, found by a sensor
    (Dagster dynamic partitions). Template variables: `{file}` (the stem), `{file_name}`, and
    the `metadata` CSV's columns."""

    glob: str
    metadata: FilesMetadata | None = None

    @field_validator("glob")
    @classmethod
    def _relative(cls, glob: str) -> str:
        if glob.startswith("/") or ".." in Path(glob).parts:
            raise ValueError(f"{glob!r}: must be relative to the local data root, without '..'")
        return glob


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
    bands: list[int] | None = None

    @model_validator(mode="after")
    def _one_location(self) -> Source:
        given = [name for name in ("path", "url", "local") if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(f"set exactly one of path (with host), url or local; got {given}")
        if self.path and not (self.host and self.base_url):
            raise ValueError("path needs host and base_url (the default of that host)")
        return self

    @property
    def template(self) -> str:
        return self.path or self.url or self.local or ""


class ItemExpansion(_Strict):
    """Many items from one partition: item `i` (start..start+count-1) reads band
    `first_band + (i - start) * stride` of the source (e.g. one species of an EBV cube)."""

    variable: str
    start: int = 1
    count: int = Field(ge=1, le=1_000_000)
    first_band: str = "1"  # a template rendering to an integer, e.g. "{band_offset}"
    stride: int = Field(default=1, ge=1)


class ItemTemplate(_Strict):
    id: str
    expand: ItemExpansion | None = None
    file_name: str | None = None  # COG file name; default "<item id>.tif"
    title: str | None = None
    datetime: str | None = None  # ISO template; default: the time partition's start
    start_datetime: str | None = None
    end_datetime: str | None = None
    properties: dict[str, Any] = Field(default_factory=dict)


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


class Declaration(_Strict):
    """One dataset: the contents of one YAML file under bq_pipelines/datasets/."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$")]
    title: str
    description: str
    license: str
    providers: list[Provider] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)
    folder: str  # storage folder under the object prefix
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
        if expand is not None:
            if expand.variable in known - {expand.variable} or expand.variable in self._dims:
                raise ValueError(f"item.expand.variable: {expand.variable!r} is already a variable")
            if expand.variable not in _template_fields(self.item.id, "item.id"):
                raise ValueError(
                    f"item.id: must use {{{expand.variable}}}, or expanded items share one id"
                )
        if (
            self.partitions.time is None
            and self.item.datetime is None
            and not (self.item.start_datetime and self.item.end_datetime)
        ):
            raise ValueError("item.datetime: required when there is no time partition")
        return self

    def _templates(self) -> Iterator[tuple[str, str]]:
        labelled = [("source", self.source)]
        labelled += [(f"sources[{i}]", source) for i, source in enumerate(self.sources)]
        labelled += [
            (f"variants[{i}].source", variant.source)
            for i, variant in enumerate(self.variants)
            if variant.source is not None
        ]
        for label, source in labelled:
            yield (
                f"{label}.{'path' if source.path else 'url' if source.url else 'local'}",
                (source.template),
            )
            if source.subdataset:
                yield f"{label}.subdataset", source.subdataset
        if self.item.expand is not None:
            yield "item.expand.first_band", self.item.expand.first_band
        for name in ("id", "file_name", "title", "datetime", "start_datetime", "end_datetime"):
            value = getattr(self.item, name)
            if value:
                yield f"item.{name}", value
        for key, value in self.item.properties.items():
            if isinstance(value, str):
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
            names |= {"file", "file_name"}
            if self.partitions.files.metadata is not None:
                names |= set(self.partitions.files.metadata.columns)
        if self.item.expand is not None:
            names.add(self.item.expand.variable)
        if self.partitions.time:
            names |= {*TIME_VARIABLES, self.partitions.time.name}
        for dim in self.partitions.static:
            names.add(dim.name)
            for value in dim.values:
                names |= set(value.vars)
        return names


def _template_fields(template: str, field: str) -> list[str]:
    try:
        return [
            name.split(".")[0].split("[")[0]
            for _, name, _, _ in string.Formatter().parse(template)
            if name is not None
        ]
    except ValueError as error:
        raise ValueError(f"{field}: bad template {template!r}: {error}") from error


def render(template: str, variables: Mapping[str, Any], field: str) -> str:
    """Fill a template; errors name the field (e.g. a format spec that does not fit)."""
    try:
        return template.format(**variables)
    except (KeyError, ValueError, IndexError) as error:
        raise ConfigError(f"{field}: cannot render {template!r}: {error}") from error


def _format_validation_error(origin: str, error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        location = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        reason = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            reason = "unknown key"
        lines.append(f"{origin}: {location}: {reason}")
    return "\n".join(lines)


def parse_declaration(data: Any, origin: str) -> Declaration:
    """Validate one declaration; ConfigError lists every problem as `origin: field: reason`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a dataset declaration must be a mapping")
    try:
        return Declaration.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(origin, error)) from None


def load_declaration_file(path: Path) -> Declaration:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path.name}: not valid YAML: {error}") from None
    declaration = parse_declaration(data, path.name)
    if declaration.id != path.stem:
        raise ConfigError(f"{path.name}: id: {declaration.id!r} must match the file name")
    return declaration


def builtin_declaration_files() -> list[Path]:
    folder = resources.files("bq_pipelines") / "datasets"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_declarations(paths: Iterable[Path] | None = None) -> list[Declaration]:
    """Every declaration (the built-in ones by default); ids must be unique."""
    declarations = [load_declaration_file(p) for p in (paths or builtin_declaration_files())]
    ids = [d.id for d in declarations]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"dataset ids declared twice: {duplicates}")
    return declarations
