"""Turn a dataset declaration and one partition into item plans (what to fetch and publish).

Dagster-free: the factory passes the partition's dimension values, the settings give the base
URL of each source host and the local data root.
"""

from __future__ import annotations

import csv
import string
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pystac

from bq_pipelines.declarations import (
    FILES_DIMENSION,
    STATIC_KEY_SEPARATOR,
    CogOptions,
    Declaration,
    DimensionValue,
    Source,
    Variant,
    period_end,
    render,
)
from bq_pipelines.lib import stac
from bq_pipelines.lib.cog import CogSettings
from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.lib.pipeline import ItemPlan, SourceRef


@dataclass(frozen=True)
class SourceLocations:
    """Where sources are read from: mirrors of the declared hosts and the local data root."""

    base_urls: Mapping[str, str]
    local_root: Path

    def resolve(self, source: Source, rendered: str) -> str:
        if source.local is not None:
            return str((self.local_root / rendered).absolute())
        if source.url is not None:
            return rendered
        base = self.base_urls.get(source.host or "", source.base_url or "")
        return f"{base.rstrip('/')}/{rendered.lstrip('/')}"


def split_partition_key(declaration: Declaration, keys_by_dimension: Mapping[str, str]) -> dict:
    """Template variables of one partition: dimension values, their extra vars, time parts."""
    partitions = declaration.partitions
    variables: dict[str, Any] = {"collection": declaration.id}
    if partitions.files is not None:
        file_name = keys_by_dimension[FILES_DIMENSION]
        return variables | {"file_name": file_name, "file": Path(file_name).stem}
    if partitions.time is not None:
        key = keys_by_dimension[partitions.time.name]
        start = datetime.strptime(key, partitions.time.key_format).date()
        variables |= {
            partitions.time.name: key,
            "year": start.year,
            "month": start.month,
            "day": start.day,
            "date": start.isoformat(),
        }
    if partitions.static:
        values = keys_by_dimension[partitions.static_dimension_name].split(STATIC_KEY_SEPARATOR)
        for dimension, value in zip(partitions.static, values, strict=True):
            chosen = _dimension_value(dimension.values, value, dimension.name)
            variables[dimension.name] = chosen.value
            variables |= chosen.vars
    return variables


def file_metadata(declaration: Declaration, file_name: str, local_root: Path) -> dict[str, str]:
    """The metadata CSV's row for `file_name` (its declared columns), if the dataset has one."""
    files = declaration.partitions.files
    if files is None or files.metadata is None:
        return {}
    metadata = files.metadata
    path = local_root / metadata.csv
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise ConfigError(f"{declaration.id}: metadata CSV {path}: {error.strerror}") from None
    missing = [c for c in [metadata.key, *metadata.columns] if rows and c not in rows[0]]
    if missing:
        raise ConfigError(f"{declaration.id}: metadata CSV {path}: no column(s) {missing}")
    for row in rows:
        if row[metadata.key] == file_name:
            return {column: row[column] for column in metadata.columns}
    raise ConfigError(f"{declaration.id}: metadata CSV {path} has no row for {file_name!r}")


def _dimension_value(values: list[DimensionValue], key: str, name: str) -> DimensionValue:
    for value in values:
        if value.value == key:
            return value
    raise ConfigError(f"partition {name}={key!r}: not a declared value")


def _render_value(template: Any, variables: Mapping[str, Any], field: str) -> Any:
    """Render strings; a template that is exactly one `{var}` keeps the variable's type."""
    if not isinstance(template, str):
        return template
    parsed = list(string.Formatter().parse(template))
    if len(parsed) == 1 and parsed[0][0] == "" and parsed[0][1] and not parsed[0][2]:
        name = parsed[0][1]
        if name in variables:
            return variables[name]
    return render(template, variables, field)


def _parse_datetime(text: str, field: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as error:
        raise ConfigError(f"{field}: {text!r} is not an ISO date/time: {error}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _chosen_values(
    declaration: Declaration, keys_by_dimension: Mapping[str, str]
) -> list[DimensionValue]:
    if not declaration.partitions.static:
        return []
    values = keys_by_dimension[declaration.partitions.static_dimension_name]
    return [
        _dimension_value(dimension.values, value, dimension.name)
        for dimension, value in zip(
            declaration.partitions.static, values.split(STATIC_KEY_SEPARATOR), strict=True
        )
    ]


def _cog_settings(
    declaration: Declaration, chosen: list[DimensionValue], variant: Variant | None
) -> CogSettings:
    """Dataset settings, then each chosen dimension value's overrides, then the variant's."""
    options = declaration.cog.model_dump()
    for value in chosen:
        if value.cog is not None:
            options |= value.cog.model_dump(exclude_none=True)
    if variant is not None and variant.cog is not None:
        options |= variant.cog.model_dump(exclude_none=True)
    return CogOptions(**options).settings()


def _source_refs(
    declaration: Declaration,
    variables: Mapping[str, Any],
    variant: Variant | None,
    locations: SourceLocations,
) -> list[SourceRef]:
    primary = variant.source if variant is not None and variant.source else declaration.source
    refs = []
    for index, source in enumerate([primary, *declaration.sources]):
        label = "source" if index == 0 else f"sources[{index - 1}]"
        rendered = render(source.template, variables, f"{label} of {declaration.id}")
        subdataset = render(source.subdataset, variables, label) if source.subdataset else None
        refs.append(
            SourceRef(
                url=locations.resolve(source, rendered),
                subdataset=subdataset,
                bands=tuple(source.bands) if source.bands else None,
            )
        )
    return refs


def _expansions(declaration: Declaration, variables: Mapping[str, Any]):
    """(variables, band) of each item of the partition; band None when not expanded."""
    expand = declaration.item.expand
    if expand is None:
        yield variables, None
        return
    first_band = render(expand.first_band, variables, "item.expand.first_band")
    try:
        first = int(first_band)
    except ValueError:
        raise ConfigError(f"item.expand.first_band: {first_band!r} is not an integer") from None
    for index in range(expand.start, expand.start + expand.count):
        yield {**variables, expand.variable: index}, first + (index - expand.start) * expand.stride


def plan_partition(
    declaration: Declaration, keys_by_dimension: Mapping[str, str], locations: SourceLocations
) -> list[ItemPlan]:
    """Item plans of one partition: one, or `item.expand.count` reading one band each."""
    variables = split_partition_key(declaration, keys_by_dimension)
    if declaration.partitions.files is not None:
        variables |= file_metadata(declaration, variables["file_name"], locations.local_root)
    variant = next((v for v in declaration.variants if v.matches(variables)), None)
    refs = _source_refs(declaration, variables, variant, locations)
    settings = _cog_settings(declaration, _chosen_values(declaration, keys_by_dimension), variant)
    item = declaration.item
    plans = []
    for item_variables, band in _expansions(declaration, variables):
        item_refs = refs if band is None else [replace(refs[0], bands=(band,)), *refs[1:]]
        item_id = render(item.id, item_variables, "item.id")
        when = _item_datetimes(declaration, item_variables)
        plans.append(
            ItemPlan(
                collection_id=declaration.id,
                item_id=item_id,
                folder=declaration.folder,
                file_name=render(item.file_name, item_variables, "item.file_name")
                if item.file_name
                else f"{item_id}.tif",
                sources=tuple(item_refs),
                cog=settings,
                datetime=when[0],
                start_datetime=when[1],
                end_datetime=when[2],
                properties={
                    key: _render_value(value, item_variables, f"item.properties.{key}")
                    for key, value in item.properties.items()
                },
                title=render(item.title, item_variables, "item.title") if item.title else None,
            )
        )
    return plans


def _item_datetimes(
    declaration: Declaration, variables: Mapping[str, Any]
) -> tuple[datetime | None, datetime | None, datetime | None]:
    item = declaration.item
    start = end = None
    if item.start_datetime and item.end_datetime:
        start = _parse_datetime(
            render(item.start_datetime, variables, "item.start_datetime"), "item.start_datetime"
        )
        end = _parse_datetime(
            render(item.end_datetime, variables, "item.end_datetime"), "item.end_datetime"
        )
    if item.datetime:
        moment = _parse_datetime(render(item.datetime, variables, "item.datetime"), "item.datetime")
        return moment, start, end
    time = declaration.partitions.time
    if time is not None:
        first = date.fromisoformat(variables["date"])
        moment = datetime(first.year, first.month, first.day, tzinfo=UTC)
        return moment, start or moment, end or period_end(first, time.cadence)
    return None, start, end


def collection_for(declaration: Declaration, items: list[Any]) -> pystac.Collection:
    """The declared collection, its extent and summaries computed from `items`."""
    summaries = {
        **stac.summarize_properties(items, declaration.summarize),
        **declaration.summaries,
    }
    collection = stac.build_collection(
        collection_id=declaration.id,
        title=declaration.title,
        description=declaration.description,
        license_=declaration.license,
        items=items,
        providers=[p.model_dump(exclude_none=True) for p in declaration.providers],
        keywords=declaration.keywords,
        summaries=summaries or None,
        item_assets=declaration.item_assets or None,
        extra_fields=declaration.extra_fields or None,
    )
    for link in declaration.links:
        collection.add_link(pystac.Link.from_dict(link))
    return collection
