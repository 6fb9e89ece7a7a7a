"""What a declaration refuses at validation because of its templates: variables nobody sets,
ids and object keys that two partitions would share, and anything a run would only find out
after uploading (ids the catalog refuses, paths leaving their root, dates that do not parse).

Every partition is rendered (`rendering.py`), or a sample of them when there are very many.
Raises ValueError naming the field: these run inside the schema's validators (schema/), which
import this module; the schema types are imported for type checking only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import date
from typing import TYPE_CHECKING, Any

from bq_pipelines.datasets import render_records, rendering
from bq_pipelines.datasets.rendering import FILE_VARIABLES, TIME_VARIABLES, RenderedSource
from bq_pipelines.datasets.templates import TypedTemplate, template_fields
from bq_pipelines.lib.errors import ConfigError

if TYPE_CHECKING:
    from bq_pipelines.datasets.schema import Declaration, StaticDimension, TimeDimension

MAX_STATIC_PARTITIONS = 100_000
# At load, every partition's ids, keys, paths and dates are rendered and checked when there are
# at most this many partitions; beyond, every static combination with the first and last
# periods, and every period with the first combination.
MAX_PARTITIONS_RENDERED_AT_LOAD = 100_000
# Declarations (as JSON) whose partitions were all rendered without a problem.
_RENDERED_OK: set[str] = set()


# --------------------------------------------------------------- template variables


def refuse_unknown_variables(declaration: Declaration) -> None:
    """ValueError naming the field of a template (or a variant's `when`) that uses a variable
    nobody sets, or of an expansion variable that hides another one."""
    known = template_variables(declaration)
    for field, template in declared_templates(declaration):
        for name in template_fields(template, field):
            if name not in known:
                raise ValueError(
                    f"{field}: unknown template variable {{{name}}}; "
                    f"known: {', '.join(sorted(known))}"
                )
    for index, variant in enumerate(declaration.variants):
        unknown = sorted(set(variant.when) - known)
        if unknown:
            raise ValueError(f"variants[{index}].when: unknown template variables {unknown}")
    _refuse_hidden_variables(declaration, known)


def _refuse_hidden_variables(declaration: Declaration, known: set[str]) -> None:
    expand = declaration.item.expand
    if expand is None:
        return
    if expand.variable in known - {expand.variable} or expand.variable in _dimensions(declaration):
        raise ValueError(f"item.expand.variable: {expand.variable!r} is already a variable")
    if expand.names is not None and expand.names.variable in known - {expand.names.variable}:
        raise ValueError(
            f"item.expand.names.variable: {expand.names.variable!r} is already a variable"
        )


def template_variables(declaration: Declaration) -> set[str]:
    """Every variable a template of the declaration may use."""
    partitions = declaration.partitions
    known = {"collection"}
    if partitions.files:
        known |= set(FILE_VARIABLES) | set(_metadata_columns(declaration))
    expand = declaration.item.expand
    if expand is not None:
        known.add(expand.variable)
        if expand.names is not None:
            known.add(expand.names.variable)
    for variant in declaration.variants:
        known |= set(variant.vars)
    if partitions.time:
        known |= {*TIME_VARIABLES, partitions.time.name}
    for dimension in partitions.static:
        known.add(dimension.name)
        for value in dimension.values:
            known |= set(value.vars)
    return known


def declared_templates(declaration: Declaration) -> Iterator[tuple[str, str]]:
    """(field, template) of every template the declaration holds."""
    labelled = [("source", declaration.source)]
    labelled += [(f"sources[{i}]", source) for i, source in enumerate(declaration.sources)]
    labelled += [
        (f"variants[{i}].source", variant.source)
        for i, variant in enumerate(declaration.variants)
        if variant.source is not None
    ]
    for label, source in labelled:
        yield f"{label}.{source.kind}", source.template
        if source.subdataset:
            yield f"{label}.subdataset", source.subdataset
    yield from _item_templates(declaration)


def _item_templates(declaration: Declaration) -> Iterator[tuple[str, str]]:
    item = declaration.item
    if item.expand is not None:
        yield "item.expand.first_band", item.expand.first_band
    for name in ("id", "file_name", "title", "datetime", "start_datetime", "end_datetime"):
        value = getattr(item, name)
        if value:
            yield f"item.{name}", value
    for key, value in item.properties.items():
        if isinstance(value, TypedTemplate):
            yield f"item.properties.{key}", value.template
        elif isinstance(value, str):
            yield f"item.properties.{key}", value


def _dimensions(declaration: Declaration) -> set[str]:
    time = declaration.partitions.time
    return {d.name for d in declaration.partitions.static} | ({time.name} if time else set())


def _metadata_columns(declaration: Declaration) -> list[str]:
    files = declaration.partitions.files
    return list(files.metadata.columns) if files and files.metadata else []


# --------------------------------------------------------------- ids and keys of partitions


def refuse_what_would_fail_after_an_upload(declaration: Declaration) -> None:
    """ValueError naming the field of everything a run would otherwise find out after
    uploading objects: ids and keys shared by partitions, ids the catalog refuses, paths leaving
    their root, dates that do not parse, item counts beyond reason."""
    combinations = math.prod(len(d.values) for d in declaration.partitions.static)
    if combinations > MAX_STATIC_PARTITIONS:
        raise ValueError(
            f"partitions.static: {combinations} combinations, more than "
            f"{MAX_STATIC_PARTITIONS}; split the dataset"
        )
    for field, template in key_templates(declaration):
        missing = partition_variable_missing_from(declaration, template)
        if missing is not None:
            raise ValueError(f"{field}: {missing}")
    # The slow part of a load (every partition rendered): a declaration is validated twice per
    # load (by the StacDataset component and by load_declarations' cross-dataset checks), and
    # again by every process loading the code location, so one that passed is not rendered again
    # in this process nor, when it has many partitions, under the same code (render_records).
    rendered_key = declaration.model_dump_json()
    if rendered_key in _RENDERED_OK:
        return
    recorded = partitions_rendered(declaration) >= render_records.RECORDED_FROM_PARTITIONS
    if not (recorded and render_records.rendered_before(rendered_key)):
        check_rendered_partitions(declaration)
        if recorded:
            render_records.record_rendered(rendered_key)
    if len(_RENDERED_OK) > 256:
        _RENDERED_OK.clear()
    _RENDERED_OK.add(rendered_key)


def key_templates(declaration: Declaration) -> list[tuple[str, str]]:
    """The templates naming an item and its object: the id, and the COG's file name
    (`<item id>.tif` by default, then the id names the object too)."""
    templates = [("item.id", declaration.item.id)]
    if declaration.item.file_name:
        templates.append(("item.file_name", declaration.item.file_name))
    return templates


def key_file_template(declaration: Declaration) -> str:
    """The template of the file name under the folder: what two datasets may share."""
    return declaration.item.file_name or f"{declaration.item.id}.tif"


def partition_variable_missing_from(declaration: Declaration, template: str) -> str | None:
    """Why `template` would give two partitions (or two expanded items) the same value: the
    partition variable it does not use, or None when it uses them all.

    A static dimension is used through its name, or through vars whose values tell each of its
    values apart (`file_stem` of earthenv, `variable` and `depth` together in soilgrids); a
    dimension with a single value needs nothing. A time dimension is used through its name,
    `date`, or the year (and month, and day) its cadence needs.
    """
    used = set(template_fields(template, "template"))
    shared_vars = _vars_of_several_dimensions(declaration)
    for dimension in declaration.partitions.static:
        missing = _static_dimension_missing(dimension, used, shared_vars)
        if missing is not None:
            return missing
    time = declaration.partitions.time
    if time is not None:
        missing = _time_dimension_missing(time, used)
        if missing is not None:
            return missing
    return _expansion_missing(declaration, used) or _file_missing(declaration, used)


def _static_dimension_missing(
    dimension: StaticDimension, used: set[str], shared_vars: set[str]
) -> str | None:
    if len(dimension.values) < 2 or dimension.name in used:
        return None
    own = sorted((used & {n for v in dimension.values for n in v.vars}) - shared_vars)
    keys = {tuple(str(v.vars.get(n)) for n in own) for v in dimension.values}
    if own and len(keys) == len(dimension.values):
        return None
    return (
        f"does not vary with the partition variable {{{dimension.name}}}: use it, or vars "
        "whose values differ for each of its values; otherwise its partitions would share ids "
        "and objects"
    )


def _time_dimension_missing(time: TimeDimension, used: set[str]) -> str | None:
    if time.end is not None and time.end <= time.start:
        return None  # a single period
    needed = {"yearly": ["year"], "monthly": ["year", "month"]}.get(
        time.cadence, ["year", "month", "day"]
    )
    if used & {time.name, "date"} or used >= set(needed):
        return None
    alternative = " and ".join(f"{{{n}}}" for n in needed)
    return (
        f"does not vary with the time partition {{{time.name}}} ({time.cadence}): "
        f"use it, {{date}}, or {alternative}"
    )


def _expansion_missing(declaration: Declaration, used: set[str]) -> str | None:
    expand = declaration.item.expand
    if expand is None or expand.count < 2 or expand.variable in used:
        return None
    if expand.names is not None and expand.names.variable in used:
        return None
    return (
        f"does not vary with {{{expand.variable}}} (item.expand.variable): the "
        f"{expand.count} items of a partition would share one"
    )


def _file_missing(declaration: Declaration, used: set[str]) -> str | None:
    if declaration.partitions.files is None:
        return None
    if used & (set(FILE_VARIABLES) | set(_metadata_columns(declaration))):
        return None
    return (
        "does not vary with the file of the partition: use {file}, {file_name} or a "
        "column of partitions.files.metadata"
    )


def _vars_of_several_dimensions(declaration: Declaration) -> set[str]:
    # A var that two dimensions set tells neither apart: the later one overrides it.
    counts: dict[str, int] = {}
    for dimension in declaration.partitions.static:
        for name in {n for v in dimension.values for n in v.vars}:
            counts[name] = counts.get(name, 0) + 1
    return {name for name, count in counts.items() if count > 1}


def unique_metadata_columns(declaration: Declaration) -> list[tuple[str, list[str]]]:
    """(field, metadata columns) whose values must differ between the CSV's rows: the columns
    an id or file name template uses instead of {file} or {file_name}."""
    checks = []
    for field, template in key_templates(declaration):
        used = template_fields(template, field)
        if not set(used) & set(FILE_VARIABLES):
            columns = [c for c in _metadata_columns(declaration) if c in used]
            if columns:
                checks.append((field, columns))
    return checks


# --------------------------------------------------------------- partitions rendered at load


def check_rendered_partitions(declaration: Declaration) -> None:
    """Render every partition (or a sample, see MAX_PARTITIONS_RENDERED_AT_LOAD) as a run
    would: ids and file names valid and unique, paths under their root, dates parsed.
    ValueError naming the field and the partition."""
    ids: dict[str, str] = {}
    files: dict[str, str] = {}
    file_field = "item.file_name" if declaration.item.file_name else "item.id"
    # Files partitions: their values are only known at plan time, which checks dates (and every
    # rendered value) again; placeholders would not parse as dates.
    dated = declaration.partitions.files is None
    for label, variables in partition_samples(declaration):
        try:
            for item_variables in sampled_items(declaration, variables):
                item_id, file_name = rendering.item_names(declaration, item_variables)
                _claim(ids, item_id, label, "item.id")
                _claim(files, file_name, label, file_field)
                if dated:
                    _check_item_values(declaration, item_variables)
            rendering.rendered_sources(declaration, variables)
            if dated and declaration.item.expand is not None:
                rendering.first_band(declaration, variables)
        except ConfigError as error:
            raise ValueError(f"{error} (partition {label})") from None


def _check_item_values(declaration: Declaration, variables: Mapping[str, Any]) -> None:
    rendering.check_in_extent(declaration, rendering.item_datetimes(declaration, variables))
    rendering.item_properties(declaration, variables)


def _claim(seen: dict[str, str], value: str, label: str, field: str) -> None:
    """Record that partition `label` produces `value`; two partitions may not."""
    first = seen.setdefault(value, label)
    if first != label:
        raise ConfigError(
            f"{field}: partitions {first} and {label} both give {value!r}: each partition "
            "needs its own (check how the template joins its variables)"
        )


def sampled_sources(declaration: Declaration) -> Iterator[tuple[str, RenderedSource]]:
    """(partition label, rendered source) of every partition rendered at load (the sample
    `check_rendered_partitions` checks): what a check needing the settings (the data root, the
    mirrors) runs over when the code location loads."""
    for label, variables in partition_samples(declaration):
        for rendered in rendering.rendered_sources(declaration, variables):
            yield label, rendered


def sampled_items(declaration: Declaration, variables: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The first and the last item of a partition (their ids are the shortest and the
    longest): the coverage check above already tells the others apart."""
    expand = declaration.item.expand
    if expand is None:
        return [dict(variables)]
    indexes = dict.fromkeys((expand.start, expand.start + expand.count - 1))
    return [rendering.expanded_item(declaration, variables, index) for index in indexes]


def partition_samples(declaration: Declaration) -> Iterator[tuple[str, dict[str, Any]]]:
    """(label, variables) of the partitions rendered at load."""
    partitions = declaration.partitions
    if partitions.files is not None:
        # Any file: placeholders, strings like the real values (file names, CSV cells).
        placeholders = dict.fromkeys(_metadata_columns(declaration), "x")
        variables = {"collection": declaration.id, **placeholders, "file": "x"}
        yield "file=<any>", {**variables, "file_name": "x.tif"}
        return
    combinations = list(itertools.product(*(d.values for d in partitions.static)))
    periods: list[date | None] = (
        list(partitions.time.period_starts()) if partitions.time else [None]
    )
    for c, p in _sampled_pairs(len(combinations), len(periods)):
        chosen, period = combinations[c], periods[p]
        parts = [f"{d.name}={v.value}" for d, v in zip(partitions.static, chosen, strict=True)]
        if period is not None and partitions.time is not None:
            parts.insert(0, f"{partitions.time.name}={period.strftime(partitions.time.key_format)}")
        yield ", ".join(parts), rendering.partition_variables(declaration, chosen, period)


def partitions_rendered(declaration: Declaration) -> int:
    """How many partitions `check_rendered_partitions` renders."""
    partitions = declaration.partitions
    if partitions.files is not None:
        return 1
    combinations = math.prod(len(d.values) for d in partitions.static)
    periods = len(list(partitions.time.period_starts())) if partitions.time else 1
    return len(list(_sampled_pairs(combinations, periods)))


def _sampled_pairs(combinations: int, periods: int) -> Iterable[tuple[int, int]]:
    """(combination, period) indexes rendered at load: all of them when they are few enough;
    otherwise every combination with the first and last periods, every period with the first
    combination."""
    if not periods:
        return []
    if combinations * periods <= MAX_PARTITIONS_RENDERED_AT_LOAD:
        return itertools.product(range(combinations), range(periods))
    ends = dict.fromkeys((0, periods - 1))
    return dict.fromkeys(
        [*((0, p) for p in range(periods)), *itertools.product(range(combinations), ends)]
    )
