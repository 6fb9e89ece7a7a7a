"""One partition of a declaration rendered: its template variables, sources, item ids, file
names, dates and properties, each checked as a run would (ConfigError naming the field).

Functions of a `Declaration` (schema/); nothing here knows Dagster. The schema imports this
module to refuse at validation what rendering would refuse, so the schema types are imported
for type checking only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from bq_pipelines.datasets.templates import parse_datetime, render, render_property
from bq_pipelines.lib import names
from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.lib.preview import thumbnail_file_name
from bq_pipelines.lib.stac import THUMBNAIL_ASSET

if TYPE_CHECKING:
    from bq_pipelines.datasets.schema import Declaration, DimensionValue, Source, Variant

# Set by a files partition (the file's stem, its name) and by a time partition.
FILE_VARIABLES = ("file", "file_name")
TIME_VARIABLES = ("year", "month", "day", "date")
Moments = tuple[datetime | None, datetime | None, datetime | None]


@dataclass(frozen=True)
class RenderedSource:
    """One source of a partition: which declared source applies, and its rendered location."""

    source: Source
    label: str  # the field it comes from: "source", "sources[0]", "variants[1].source"
    location: str  # the rendered template: a path under the data root or host, or a URL
    subdataset: str | None


def partition_variables(
    declaration: Declaration, chosen: Sequence[DimensionValue], period: date | None
) -> dict[str, Any]:
    """Template variables of a time and/or static partition: the time parts of `period`, then
    each chosen static value and its vars, then the vars of the variant that applies."""
    variables: dict[str, Any] = {"collection": declaration.id}
    time = declaration.partitions.time
    if time is not None and period is not None:
        variables |= time.variables(period)
    for dimension, value in zip(declaration.partitions.static, chosen, strict=True):
        variables[dimension.name] = value.value
        variables |= value.vars
    variant = variant_for(declaration, variables)
    if variant is not None:
        variables |= variant.vars
    return variables


def variant_for(declaration: Declaration, variables: Mapping[str, Any]) -> Variant | None:
    """The first variant whose `when` the partition's variables match."""
    return next((v for v in declaration.variants if v.matches(variables)), None)


def rendered_sources(
    declaration: Declaration, variables: Mapping[str, Any]
) -> list[RenderedSource]:
    """The partition's sources (its variant's first, if one applies), rendered and checked
    (ConfigError naming the field when a location could leave its root)."""
    variant = variant_for(declaration, variables)
    primary = ("source", declaration.source)
    if variant is not None and variant.source is not None:
        primary = (f"variants[{declaration.variants.index(variant)}].source", variant.source)
    labelled = [primary, *((f"sources[{i}]", s) for i, s in enumerate(declaration.sources))]
    return [_rendered_source(label, source, variables) for label, source in labelled]


def _rendered_source(label: str, source: Source, variables: Mapping[str, Any]) -> RenderedSource:
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
    return RenderedSource(source, label, location, subdataset)


def item_variables(
    declaration: Declaration,
    variables: Mapping[str, Any],
    entity_names: Sequence[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """The variables of each item of the partition: one, or one per expanded index (with its
    entity's name from `entity_names`, as read from the source, when the expansion has names;
    placeholders otherwise)."""
    expand = declaration.item.expand
    if expand is None:
        yield dict(variables)
        return
    for index in range(expand.start, expand.start + expand.count):
        yield expanded_item(declaration, variables, index, entity_names)


def expanded_item(
    declaration: Declaration,
    variables: Mapping[str, Any],
    index: int,
    entity_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The variables of the expanded item `index` (its entity's name as in item_variables)."""
    expand = declaration.item.expand
    assert expand is not None
    named: dict[str, str] = {}
    if expand.names is not None and entity_names is None:
        named = {expand.names.variable: expand.placeholder_name(index)}
    elif expand.names is not None and entity_names is not None:
        named = {expand.names.variable: entity_names[index - expand.start]}
    return {**variables, **named, expand.variable: index}


def first_band(declaration: Declaration, variables: Mapping[str, Any]) -> int:
    """The band the first expanded item reads."""
    assert declaration.item.expand is not None
    text = render(declaration.item.expand.first_band, variables, "item.expand.first_band")
    try:
        band = int(text)
    except ValueError:
        raise ConfigError(f"item.expand.first_band: {text!r} is not an integer") from None
    if band < 1:
        raise ConfigError(f"item.expand.first_band: {band} is not a band number (from 1)")
    return band


def item_names(declaration: Declaration, variables: Mapping[str, Any]) -> tuple[str, str]:
    """(item id, COG file name) of one item, checked: an id the STAC API and the static catalog
    accept, a plain file name for its object key."""
    item_id = render(declaration.item.id, variables, "item.id")
    problem = names.id_problem(item_id)
    if problem is None and declaration.thumbnails and item_id == THUMBNAIL_ASSET:
        problem = "is the key of the thumbnail asset (thumbnails: true)"
    if problem is not None:
        raise ConfigError(f"item.id: {item_id!r}: {problem}")
    return item_id, _file_name(declaration, variables, item_id)


def _file_name(declaration: Declaration, variables: Mapping[str, Any], item_id: str) -> str:
    template = declaration.item.file_name
    field = "item.file_name" if template else "item.id"
    file_name = render(template, variables, field) if template else f"{item_id}.tif"
    problem = names.file_name_problem(file_name)
    if problem is None and declaration.thumbnails:
        problem = names.file_name_problem(thumbnail_file_name(file_name))
        problem = problem and f"its thumbnail's name (thumbnails: true) {problem}"
    if problem is not None:
        raise ConfigError(f"{field}: file name {file_name!r}: {problem}")
    return file_name


def item_datetimes(declaration: Declaration, variables: Mapping[str, Any]) -> Moments:
    """(datetime, start_datetime, end_datetime) of one item; start after end is an error."""
    item = declaration.item
    start = end = None
    if item.start_datetime and item.end_datetime:
        start = _rendered_moment(item.start_datetime, variables, "item.start_datetime")
        end = _rendered_moment(item.end_datetime, variables, "item.end_datetime")
    moment = None
    time = declaration.partitions.time
    if item.datetime:
        moment = _rendered_moment(item.datetime, variables, "item.datetime")
    elif time is not None:
        first = date.fromisoformat(variables["date"])
        moment = datetime(first.year, first.month, first.day, tzinfo=UTC)
        start = start or moment
        end = end or time.period_end(first)
    if start is not None and end is not None and start > end:
        raise ConfigError(
            f"item.start_datetime: {start.isoformat()} is after item.end_datetime {end.isoformat()}"
        )
    return moment, start, end


def _rendered_moment(template: str, variables: Mapping[str, Any], field: str) -> datetime:
    return parse_datetime(render(template, variables, field), field)


def item_properties(declaration: Declaration, variables: Mapping[str, Any]) -> dict[str, Any]:
    """One item's declared properties, rendered with their types (templates.py)."""
    return {
        key: render_property(value, variables, f"item.properties.{key}")
        for key, value in declaration.item.properties.items()
    }


def check_in_extent(declaration: Declaration, moments: Sequence[datetime | None]) -> None:
    """ConfigError naming `temporal_extent` when an item's dates fall outside it."""
    if declaration.temporal_extent is None:
        return
    first, last = declaration.temporal_extent
    for moment in (m for m in moments if m is not None):
        if not first <= moment.astimezone(UTC).date() <= last:
            raise ConfigError(
                f"temporal_extent: [{first}, {last}] does not hold the item date "
                f"{moment.isoformat()}"
            )
