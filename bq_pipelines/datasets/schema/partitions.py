"""How a declaration partitions its dataset: a time series, static dimensions, or both; or the
files of a folder. Several static dimensions are one Dagster dimension whose keys join their
values with `__`."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from bq_pipelines.datasets.rendering import TIME_VARIABLES
from bq_pipelines.datasets.schema.base import SHARED_FILES, Strict, relative_path, shared_grids
from bq_pipelines.datasets.schema.cog import CogOverrides

STATIC_KEY_SEPARATOR = "__"
FILES_DIMENSION = "file"
Cadence = Literal["yearly", "monthly", "daily"]


class DimensionValue(Strict):
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


class TimeDimension(Strict):
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

    def variables(self, start: date) -> dict[str, Any]:
        """Template variables of the period starting at `start`."""
        return {
            self.name: start.strftime(self.key_format),
            "year": start.year,
            "month": start.month,
            "day": start.day,
            "date": start.isoformat(),
        }

    def period_end(self, start: date) -> datetime:
        """Last instant of the period starting at `start`, as an aware UTC datetime."""
        return period_end(start, self.cadence)


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


class StaticDimension(Strict):
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


class FilesMetadata(Strict):
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
        return relative_path(csv)


class FilesDimension(Strict):
    """One partition per file matching `glob` under the local data root, found by a sensor
    (Dagster dynamic partitions). Template variables: `{file}` (the stem), `{file_name}`, and
    the `metadata` CSV's columns."""

    glob: str
    metadata: FilesMetadata | None = None

    @field_validator("glob")
    @classmethod
    def _relative(cls, glob: str) -> str:
        return relative_path(glob)


class Partitions(Strict):
    """A time dimension, static dimensions, or both; or the files of a folder."""

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
