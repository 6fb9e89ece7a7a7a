"""Turn a dataset declaration and one partition into item plans (what to fetch and publish).

Dagster-free: the factory passes the partition's dimension values, the settings give the base
URL of each source host and the local data root.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pystac

from bq_pipelines.datasets import rendering, validation
from bq_pipelines.datasets.rendering import RenderedSource
from bq_pipelines.datasets.schema import (
    FILES_DIMENSION,
    STATIC_KEY_SEPARATOR,
    CogOptions,
    Declaration,
    DimensionValue,
    Variant,
)
from bq_pipelines.datasets.templates import render
from bq_pipelines.lib import sources, stac
from bq_pipelines.lib.catalog import CollectionContent
from bq_pipelines.lib.cog import CogSettings
from bq_pipelines.lib.cube import CubeError, cube_entity_names
from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.lib.pipeline import ItemPlan, SourceRef


@dataclass(frozen=True)
class SourceLocations:
    """Where sources are read from: mirrors of the declared hosts and the local data root."""

    base_urls: Mapping[str, str]
    local_root: Path

    def resolve(self, rendered: RenderedSource) -> str:
        """The URL (or, for a local source, the resolved path) to read. A local path must stay
        under the data root once symlinks are followed (SourceRefused otherwise)."""
        source = rendered.source
        if source.local is not None:
            return str(self.local_path(rendered.location))
        if source.url is not None:
            return rendered.location
        base = self.base_urls.get(source.host or "", source.base_url or "")
        return f"{base.rstrip('/')}/{rendered.location.lstrip('/')}"

    def local_path(self, relative: str) -> Path:
        return sources.path_under_root(self.local_root, relative, "BQ_LOCAL_DATA_ROOT")


def split_partition_key(
    declaration: Declaration, keys_by_dimension: Mapping[str, str]
) -> dict[str, Any]:
    """Template variables of one partition: dimension values, their extra vars, time parts."""
    partitions = declaration.partitions
    if partitions.files is not None:
        file_name = keys_by_dimension[FILES_DIMENSION]
        return {"collection": declaration.id, "file_name": file_name, "file": Path(file_name).stem}
    period = None
    if partitions.time is not None:
        key = keys_by_dimension[partitions.time.name]
        period = datetime.strptime(key, partitions.time.key_format).date()
    return rendering.partition_variables(
        declaration, _chosen_values(declaration, keys_by_dimension), period
    )


def file_metadata(declaration: Declaration, file_name: str, local_root: Path) -> dict[str, str]:
    """The metadata CSV's row for `file_name` (its declared columns), if the dataset has one.
    Columns that name items or objects (instead of {file}) must differ from row to row."""
    files = declaration.partitions.files
    if files is None or files.metadata is None:
        return {}
    metadata = files.metadata
    path = local_root / metadata.csv
    try:
        path = SourceLocations({}, local_root).local_path(metadata.csv)
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise ConfigError(f"{declaration.id}: metadata CSV {path}: {error.strerror}") from None
    missing = [c for c in [metadata.key, *metadata.columns] if rows and c not in rows[0]]
    if missing:
        raise ConfigError(f"{declaration.id}: metadata CSV {path}: no column(s) {missing}")
    rows = [{**row, **metadata.overrides.get(row[metadata.key], {})} for row in rows]
    for row in rows:
        if row[metadata.key] == file_name:
            _check_unique_columns(declaration, path, rows, row)
            return {column: row[column] for column in metadata.columns}
    raise ConfigError(f"{declaration.id}: metadata CSV {path} has no row for {file_name!r}")


def _check_unique_columns(
    declaration: Declaration, path: Path, rows: Sequence[Mapping[str, str]], row: Mapping[str, str]
) -> None:
    key = declaration.partitions.files.metadata.key  # type: ignore[union-attr]
    for field, columns in validation.unique_metadata_columns(declaration):
        mine = [row[c] for c in columns]
        others = [r[key] for r in rows if r[key] != row[key] and [r[c] for c in columns] == mine]
        if others:
            raise ConfigError(
                f"{declaration.id}: metadata CSV {path}: the rows of {row[key]!r} and "
                f"{others[0]!r} have the same {', '.join(columns)} ({', '.join(mine)}), which "
                f"{field} uses: their items would share an id or an object"
            )


def _dimension_value(values: list[DimensionValue], key: str, name: str) -> DimensionValue:
    for value in values:
        if value.value == key:
            return value
    raise ConfigError(f"partition {name}={key!r}: not a declared value")


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
    declaration: Declaration, variables: Mapping[str, Any], locations: SourceLocations
) -> list[SourceRef]:
    return [
        SourceRef(
            url=locations.resolve(rendered),
            subdataset=rendered.subdataset,
            bands=tuple(rendered.source.bands) if rendered.source.bands else None,
        )
        for rendered in rendering.rendered_sources(declaration, variables)
    ]


def _expansions(
    declaration: Declaration, variables: Mapping[str, Any], refs: Sequence[SourceRef]
) -> Iterator[tuple[dict[str, Any], int | None]]:
    """(variables, band) of each item of the partition; band None when not expanded."""
    expand = declaration.item.expand
    if expand is None:
        yield dict(variables), None
        return
    first = rendering.first_band(declaration, variables)
    names = entity_names(declaration, refs[0].url) if expand.names is not None else None
    for item_variables in rendering.item_variables(declaration, variables, names):
        index = item_variables[expand.variable]
        yield item_variables, first + (index - expand.start) * expand.stride


def entity_names(declaration: Declaration, path: str) -> list[str]:
    """The names of the expanded entities, as the source file holds them (`item.expand.names`):
    read once per file, checked (enough of them, distinct once `replace` is applied)."""
    expand = declaration.item.expand
    assert expand is not None and expand.names is not None
    spec = expand.names
    field = "item.expand.names"
    try:
        raw = cube_entity_names(Path(path), spec.netcdf_variable)
    except CubeError as error:
        raise ConfigError(f"{field}: {error}") from None
    names = [_replace_all(name, spec.replace) for name in raw]
    if len(names) < expand.count:
        raise ConfigError(
            f"{field}: {path} names {len(names)} entities in {spec.netcdf_variable!r}, "
            f"item.expand.count is {expand.count}"
        )
    names = names[: expand.count]
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ConfigError(f"{field}: {path}: names given to several entities: {duplicates[:5]}")
    return names


def _replace_all(text: str, replacements: Mapping[str, str]) -> str:
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


def plan_partition(
    declaration: Declaration, keys_by_dimension: Mapping[str, str], locations: SourceLocations
) -> list[ItemPlan]:
    """Item plans of one partition: one, or `item.expand.count` reading one band each.

    Every rendered value is checked as at load (ids, file names, paths, dates): the values of
    files partitions are only known now, and nothing is fetched before this succeeds.
    """
    variables = split_partition_key(declaration, keys_by_dimension)
    if declaration.partitions.files is not None:
        variables |= file_metadata(declaration, variables["file_name"], locations.local_root)
    variant = rendering.variant_for(declaration, variables)
    refs = _source_refs(declaration, variables, locations)
    settings = _cog_settings(declaration, _chosen_values(declaration, keys_by_dimension), variant)
    item = declaration.item
    plans = []
    for item_variables, band in _expansions(declaration, variables, refs):
        item_refs = refs if band is None else [replace(refs[0], bands=(band,)), *refs[1:]]
        item_id, file_name = rendering.item_names(declaration, item_variables)
        when = rendering.item_datetimes(declaration, item_variables)
        rendering.check_in_extent(declaration, when)  # files partitions: only known now
        plans.append(
            ItemPlan(
                collection_id=declaration.id,
                item_id=item_id,
                folder=declaration.folder,
                file_name=file_name,
                sources=tuple(item_refs),
                cog=settings,
                datetime=when[0],
                start_datetime=when[1],
                end_datetime=when[2],
                properties=rendering.item_properties(declaration, item_variables),
                title=render(item.title, item_variables, "item.title") if item.title else None,
                thumbnail=declaration.thumbnails,
            )
        )
    return plans


def collection_for(
    declaration: Declaration, items: list[Any], content: CollectionContent | None = None
) -> pystac.Collection:
    """The declared collection, its extent and summaries computed from `items`, or taken from
    `content` (what the catalog aggregated of its items) when given."""
    computed = (
        content.summaries
        if content is not None
        else stac.summarize_properties(items, declaration.summarize)
    )
    summaries = {**computed, **declaration.summaries}
    collection = stac.build_collection(
        collection_id=declaration.id,
        title=declaration.title,
        description=declaration.description,
        license_=declaration.license,
        items=items,
        extent=content.extent if content is not None else None,
        providers=[p.model_dump(exclude_none=True) for p in declaration.providers],
        keywords=declaration.keywords,
        summaries=summaries or None,
        item_assets=declaration.item_assets or None,
        extra_fields=declaration.extra_fields or None,
    )
    if declaration.temporal_extent is not None:
        # What the declaration states (checked at load to hold every item): the legacy
        # catalog's intervals, which end at midnight of their last day.
        first, last = declaration.temporal_extent
        collection.extent.temporal = pystac.TemporalExtent([[_midnight(first), _midnight(last)]])
    for link in declaration.links:
        collection.add_link(pystac.Link.from_dict(link))
    return collection


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
