"""What a dataset would publish, compared with what a catalog publishes: `bq-pipelines plan` and
`bq-pipelines compare`, and the per-item check adoption relies on.

Dagster-free. A planned item is the STAC item as far as it is known before any data is read:
id, collection, properties and datetimes, and its assets (href, type, roles). What only the data
says (geometry, projection, raster statistics, checksums) is not planned and not compared.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bq_pipelines.datasets.plans import SourceLocations, collection_for, plan_partition
from bq_pipelines.datasets.schema import Declaration, LegacyDifference
from bq_pipelines.datasets.templates import parse_datetime
from bq_pipelines.lib import stac
from bq_pipelines.lib.pipeline import ItemPlan, item_fields
from bq_pipelines.lib.preview import thumbnail_file_name
from bq_pipelines.lib.storage import ObjectStore, object_key

# Fields computed from the data: a plan cannot know them, so they are never compared.
COMPUTED_PREFIXES = ("proj:", "raster:", "file:", "eo:", "classification:")
# Fields a STAC API adds or rewrites on its own.
SERVER_FIELDS = frozenset({"created", "updated"})
TEMPORAL_FIELDS = ("datetime", "start_datetime", "end_datetime")
EXAMPLES = 5


@dataclass(frozen=True)
class PlannedItem:
    partition_key: str
    plan: ItemPlan
    document: dict[str, Any]


def planned_document(plan: ItemPlan, store: ObjectStore, object_prefix: str) -> dict[str, Any]:
    """The STAC item `plan` publishes, as far as it is known before its data is read."""
    key = object_key(object_prefix, plan.folder, plan.file_name)
    thumbnail = None
    if plan.thumbnail:
        thumbnail_key = object_key(object_prefix, plan.folder, thumbnail_file_name(plan.file_name))
        thumbnail = store.href(thumbnail_key)
    return stac.planned_item(**item_fields(plan, store.href(key)), thumbnail_href=thumbnail)


def planned_items(
    declaration: Declaration,
    partitions: Mapping[str, Mapping[str, str]],
    store: ObjectStore,
    object_prefix: str,
    locations: SourceLocations,
) -> list[PlannedItem]:
    """Every item the partitions plan, in partition order (nothing fetched or converted)."""
    return [
        PlannedItem(partition_key, plan, planned_document(plan, store, object_prefix))
        for partition_key, dimension_keys in partitions.items()
        for plan in plan_partition(declaration, dimension_keys, locations)
    ]


def planned_collection(declaration: Declaration) -> dict[str, Any]:
    """The collection as declared: id, title, description, license, keywords, and the
    temporal extent when the declaration states one."""
    collection = collection_for(declaration, [])
    document: dict[str, Any] = collection.to_dict(include_self_link=False)
    return document


# ------------------------------------------------------------------------------ comparison


@dataclass(frozen=True)
class Difference:
    """One field of one item (None: the collection) that is not what the plan says."""

    item_id: str | None
    field: str
    planned: Any
    published: Any
    deliberate: LegacyDifference | None = None

    def __str__(self) -> str:
        where = self.item_id if self.item_id is not None else "collection"
        planned, published = _shown(self.planned), _shown(self.published)
        return f"{where}: {self.field}: planned {planned}, published {published}"


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


@dataclass
class Comparison:
    dataset_id: str
    catalog: str
    planned: int = 0
    published: int = 0
    compared: int = 0
    missing: list[str] = field(default_factory=list)  # published, planned by no partition
    extra: list[str] = field(default_factory=list)  # planned, not published
    differences: list[Difference] = field(default_factory=list)
    deliberately_missing: list[str] = field(default_factory=list)
    outside_selection: int = 0  # published items the selected partitions do not plan

    @property
    def undeclared(self) -> list[Difference]:
        return [d for d in self.differences if d.deliberate is None]

    @property
    def deliberate(self) -> list[Difference]:
        return [d for d in self.differences if d.deliberate is not None]

    @property
    def same(self) -> bool:
        """Nothing differs but what the declaration lists as deliberate."""
        return not (self.missing or self.extra or self.undeclared)

    def counts(self) -> dict[str, int]:
        by_field: dict[str, int] = {}
        for difference in self.undeclared:
            by_field[difference.field] = by_field.get(difference.field, 0) + 1
        return {
            "planned": self.planned,
            "published": self.published,
            "compared": self.compared,
            "missing": len(self.missing),
            "extra": len(self.extra),
            "different": len(self.undeclared),
            "deliberate": len(self.deliberate) + len(self.deliberately_missing),
            **{f"different {name}": count for name, count in sorted(by_field.items())},
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset_id,
            "catalog": self.catalog,
            "same": self.same,
            "counts": self.counts(),
            "missing": self.missing,
            "extra": self.extra,
            "differences": [_difference_json(d) for d in self.undeclared],
            "deliberate": [_difference_json(d) for d in self.deliberate]
            + [{"item": i, "field": "id", "reason": "declared"} for i in self.deliberately_missing],
        }


def _difference_json(difference: Difference) -> dict[str, Any]:
    entry = {
        "item": difference.item_id,
        "field": difference.field,
        "planned": difference.planned,
        "published": difference.published,
    }
    if difference.deliberate is not None:
        entry["reason"] = difference.deliberate.reason
    return entry


def compare(
    declaration: Declaration,
    planned: Sequence[PlannedItem],
    published_items: Iterable[Mapping[str, Any]],
    published_collection: Mapping[str, Any] | None,
    catalog: str,
    *,
    whole_dataset: bool = True,
) -> Comparison:
    """The planned items against the published ones. With `whole_dataset` False (a selection
    of partitions), published items the selection does not plan are only counted."""
    result = Comparison(declaration.id, catalog, planned=len(planned))
    by_id = {p.plan.item_id: p for p in planned}
    seen: set[str] = set()
    for item in published_items:
        item_id = str(item.get("id"))
        result.published += 1
        seen.add(item_id)
        found = by_id.get(item_id)
        if found is None:
            _unplanned(declaration, item_id, result, whole_dataset)
            continue
        result.compared += 1
        result.differences += _marked(declaration, item_differences(found.document, item))
    result.extra = [p.plan.item_id for p in planned if p.plan.item_id not in seen]
    if published_collection is not None:
        differences = collection_differences(planned_collection(declaration), published_collection)
        result.differences += _marked(declaration, differences)
    return result


def _unplanned(
    declaration: Declaration, item_id: str, result: Comparison, whole_dataset: bool
) -> None:
    if not whole_dataset:
        result.outside_selection += 1
    elif declaration.legacy_difference("id", item_id) is not None:
        result.deliberately_missing.append(item_id)
    else:
        result.missing.append(item_id)


def _marked(declaration: Declaration, differences: Iterable[Difference]) -> list[Difference]:
    return [
        Difference(
            d.item_id,
            d.field,
            d.planned,
            d.published,
            declaration.legacy_difference(d.field, d.item_id),
        )
        for d in differences
    ]


def item_differences(planned: Mapping[str, Any], published: Mapping[str, Any]) -> list[Difference]:
    """Where the published item is not what is planned: its assets (keys, hrefs, media types)
    and every property it has that a plan can know (values and JSON types; datetimes as
    instants). What the plan adds (new properties, a thumbnail) is not a difference."""
    item_id = str(published.get("id"))
    return [
        *_asset_differences(item_id, planned.get("assets") or {}, published.get("assets") or {}),
        *_property_differences(
            item_id, planned.get("properties") or {}, published.get("properties") or {}
        ),
    ]


def _asset_differences(
    item_id: str, planned: Mapping[str, Any], published: Mapping[str, Any]
) -> list[Difference]:
    differences = []
    for key, asset in published.items():
        # The COG asset is keyed by the item id: its fields are named without the key.
        name = "assets" if key == item_id else f"assets.{key}"
        mine = planned.get(key)
        if mine is None:
            differences.append(Difference(item_id, f"{name}.key", sorted(planned), key))
            continue
        for part in ("href", "type"):
            if part in asset and asset.get(part) != mine.get(part):
                differences.append(
                    Difference(item_id, f"{name}.{part}", mine.get(part), asset.get(part))
                )
    return differences


def _property_differences(
    item_id: str, planned: Mapping[str, Any], published: Mapping[str, Any]
) -> list[Difference]:
    differences = []
    for name, value in published.items():
        if name.startswith(COMPUTED_PREFIXES) or name in SERVER_FIELDS:
            continue
        field_name = name if name in TEMPORAL_FIELDS else f"properties.{name}"
        if name not in planned:
            if value is not None:  # a published null is an absent field (pgstac drops them)
                differences.append(Difference(item_id, field_name, None, value))
        elif not same_value(name, planned[name], value):
            differences.append(Difference(item_id, field_name, planned[name], value))
    return differences


def same_value(name: str, planned: Any, published: Any) -> bool:
    """Equal as published JSON (2.1 is not "2.1", 2015 is not 2015.0); datetimes as instants."""
    if name in TEMPORAL_FIELDS and isinstance(planned, str) and isinstance(published, str):
        return parse_datetime(planned, name) == parse_datetime(published, name)
    return _canonical(planned) == _canonical(published)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def collection_differences(
    planned: Mapping[str, Any], published: Mapping[str, Any]
) -> list[Difference]:
    """Title, description, license, keywords (every published one planned) and, when the
    declaration states it, the temporal extent."""
    differences = [
        Difference(None, name, planned.get(name), published.get(name))
        for name in ("id", "title", "description", "license")
        if published.get(name) != planned.get(name)
    ]
    keywords = set(published.get("keywords") or [])
    if not keywords <= set(planned.get("keywords") or []):
        differences.append(
            Difference(None, "keywords", planned.get("keywords"), published.get("keywords"))
        )
    ours, theirs = _first_interval(planned), _first_interval(published)
    if ours is not None and None not in ours and not _same_interval(ours, theirs):
        differences.append(Difference(None, "extent.temporal", ours, theirs))
    return differences


def _first_interval(collection: Mapping[str, Any]) -> list[Any] | None:
    intervals = ((collection.get("extent") or {}).get("temporal") or {}).get("interval") or []
    return list(intervals[0]) if intervals else None


def _same_interval(ours: Sequence[Any], theirs: Sequence[Any] | None) -> bool:
    if theirs is None or len(theirs) != 2 or None in theirs:
        return False
    return all(
        parse_datetime(a, "extent") == parse_datetime(b, "extent")
        for a, b in zip(ours, theirs, strict=True)
    )


# ------------------------------------------------------------------------------ reports


def report_lines(result: Comparison) -> list[str]:
    """A readable report: a summary, then each kind of difference with a few examples."""
    verdict = "same" if result.same else "DIFFERENT"
    counts = ", ".join(f"{n} {name}" for name, n in result.counts().items())
    lines = [f"{result.dataset_id} against {result.catalog}: {verdict}: {counts}"]
    if result.outside_selection:
        lines.append(
            f"  {result.outside_selection} published items lie outside the selected partitions "
            "(not compared)"
        )
    for title, ids in (
        ("published, planned by no partition", result.missing),
        ("planned, not published", result.extra),
    ):
        if ids:
            lines.append(f"  {title} ({len(ids)}): {', '.join(ids[:EXAMPLES])}")
    by_field: dict[str, list[Difference]] = {}
    for difference in result.undeclared:
        by_field.setdefault(difference.field, []).append(difference)
    for name, found in sorted(by_field.items()):
        lines.append(f"  {name} differs ({len(found)}):")
        lines += [f"    {d}" for d in found[:EXAMPLES]]
    deliberate = len(result.deliberate) + len(result.deliberately_missing)
    if deliberate:
        lines.append(f"  deliberate differences, declared in the dataset's file: {deliberate}")
        reasons = {d.deliberate.reason for d in result.deliberate if d.deliberate is not None}
        lines += [f"    - {reason}" for reason in sorted(reasons)[:EXAMPLES]]
    return lines
