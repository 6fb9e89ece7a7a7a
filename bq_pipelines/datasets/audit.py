"""Drift audit of one dataset: does the catalog match the object store?

Dagster-free (the `catalog_matches_store` asset check and `bq-pipelines audit` share it). It
reports:
- items whose object is missing, or differs from what the item says (size, sha256), or belongs
  to another item, or that point elsewhere than their partition's key (`drifted`);
- objects under the dataset's folders that no item references: orphans of a crash between
  upload and publication (`orphans`);
- items the dataset's partitions do not plan (`outside_partitions`), but those the ingestion
  API published (their objects record it as their writer: `api_items`), reported apart and
  never counted as drift;
- items listed more than once, and objects referenced by several items (`duplicates`);
- apart from drift, gaps: declared partitions with an item not in the catalog (never
  published, or a backfill cut short: `missing_partitions`). A dataset with gaps is never
  said to have "no drift", but gaps are not drift: a backfill fills them, not `--fix`.

Repairs: re-publishing the partitions of drifted items (`affected_partitions`, done by the
caller through Dagster runs), and deleting orphans (`delete_orphans`), each under its
partition's lock and only if it is still an orphan.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bq_pipelines.datasets.plans import SourceLocations, plan_partition
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.integrity import Drift, ObjectDrift, item_drift, plan_key
from bq_pipelines.lib.locks import Locks, partition_lock_name
from bq_pipelines.lib.pipeline import ItemPlan, Services
from bq_pipelines.lib.storage import API_WRITER, OWNER_SUFFIX, SHA256_SUFFIX, object_key
from bq_pipelines.lib.words import plural

logger = logging.getLogger(__name__)

MAX_LISTED = 100
# How the summary names each count (singular, plural).
COUNT_WORDS = {
    "items": ("item", "items"),
    "objects": ("object", "objects"),
    "missing_objects": ("missing object", "missing objects"),
    "changed_objects": ("changed object", "changed objects"),
    "orphans": ("orphan", "orphans"),
    "outside_partitions": ("item outside the partitions", "items outside the partitions"),
    "api_items": ("item of the ingestion API", "items of the ingestion API"),
    "duplicates": ("duplicate", "duplicates"),
    "partitions": ("partition", "partitions"),
    "missing_partitions": ("missing partition", "missing partitions"),
    "missing_items": ("missing item", "missing items"),
}


@dataclass(frozen=True)
class Planned:
    partition_key: str
    plan: ItemPlan


@dataclass
class AuditReport:
    dataset_id: str
    items: int = 0
    objects: int = 0
    drifted: list[ObjectDrift] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    outside_partitions: list[str] = field(default_factory=list)
    api_items: list[str] = field(default_factory=list)
    duplicate_items: list[str] = field(default_factory=list)
    shared_objects: list[str] = field(default_factory=list)
    affected_partitions: list[str] = field(default_factory=list)
    partitions: int = 0
    missing_partitions: list[str] = field(default_factory=list)
    missing_items: int = 0

    @property
    def missing(self) -> list[ObjectDrift]:
        return [d for d in self.drifted if d.drift == Drift.MISSING_OBJECT]

    @property
    def duplicates(self) -> int:
        return len(self.duplicate_items) + len(self.shared_objects)

    @property
    def clean(self) -> bool:
        return not (
            self.drifted
            or self.orphans
            or self.outside_partitions
            or self.duplicate_items
            or self.shared_objects
        )

    def counts(self) -> dict[str, int]:
        return {
            "items": self.items,
            "objects": self.objects,
            "missing_objects": len(self.missing),
            "changed_objects": len(self.drifted) - len(self.missing),
            "orphans": len(self.orphans),
            "outside_partitions": len(self.outside_partitions),
            "api_items": len(self.api_items),
            "duplicates": self.duplicates,
            "partitions": self.partitions,
            "missing_partitions": len(self.missing_partitions),
            "missing_items": self.missing_items,
        }

    def listing(self, limit: int = MAX_LISTED) -> dict[str, list[str]]:
        """Ids and keys of each finding (the first `limit` of each)."""
        return {
            "drifted_items": [str(d) for d in self.drifted[:limit]],
            "orphan_keys": self.orphans[:limit],
            "outside_partition_ids": self.outside_partitions[:limit],
            "api_item_ids": self.api_items[:limit],
            "duplicate_item_ids": self.duplicate_items[:limit],
            "shared_object_keys": self.shared_objects[:limit],
            "affected_partitions": self.affected_partitions[:limit],
            "missing_partition_keys": self.missing_partitions[:limit],
        }

    @property
    def verdict(self) -> str:
        """DRIFT, else GAPS (partitions not published), else "no drift"."""
        if not self.clean:
            return "DRIFT"
        if self.missing_partitions:
            missing = len(self.missing_partitions)
            return f"GAPS ({missing} of {self.partitions} partitions not published)"
        return "no drift"

    def summary(self) -> str:
        counts = ", ".join(
            plural(value, *COUNT_WORDS[name]) for name, value in self.counts().items()
        )
        return f"{self.dataset_id}: {self.verdict}: {counts}"


def plan_all(
    declaration: Declaration,
    partitions: Mapping[str, Mapping[str, str]],
    locations: SourceLocations,
) -> dict[str, Planned]:
    """Every item the dataset's partitions plan, by item id."""
    planned: dict[str, Planned] = {}
    for partition_key, dimension_keys in partitions.items():
        for plan in plan_partition(declaration, dimension_keys, locations):
            planned[plan.item_id] = Planned(partition_key, plan)
    return planned


def dataset_folders(
    declaration: Declaration, planned: Iterable[Planned], services: Services
) -> list[str]:
    """Key prefixes (ending in `/`) under which the dataset's objects live."""
    keys = [plan_key(p.plan, services) for p in planned]
    keys.append(object_key(services.object_prefix, declaration.folder, "_"))
    return sorted({key.rsplit("/", 1)[0] + "/" for key in keys})


def _is_object(key: str) -> bool:
    return not key.endswith((SHA256_SUFFIX, OWNER_SUFFIX))


def audit(
    declaration: Declaration,
    partitions: Mapping[str, Mapping[str, str]],
    services: Services,
    locations: SourceLocations,
) -> AuditReport:
    """Compare the dataset's collection with the objects under its folders (read-only, except
    that a matching object with no recorded owner gets its owner recorded)."""
    report = AuditReport(declaration.id, partitions=len(partitions))
    planned = plan_all(declaration, partitions, locations)
    store = services.store
    listed = [
        key
        for folder in dataset_folders(declaration, planned.values(), services)
        for key in store.list_keys(folder)
        if _is_object(key)
    ]
    report.objects = len(listed)
    key_of_href = {store.href(key): key for key in listed}
    references: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    affected: set[str] = set()
    for item in services.publisher.iter_items(declaration.id):
        item_id = str(item.get("id"))
        seen[item_id] += 1
        if seen[item_id] > 1:
            continue
        references.update(_referenced_keys(item, key_of_href))
        found = planned.get(item_id)
        if found is None:
            api = _written_by_api(item, key_of_href, store)
            (report.api_items if api else report.outside_partitions).append(item_id)
            continue
        drift = item_drift(item, found.plan, services)
        if drift is not None:
            report.drifted.append(drift)
            affected.add(found.partition_key)
    report.items = len(seen)
    report.duplicate_items = sorted(i for i, n in seen.items() if n > 1)
    report.shared_objects = sorted(k for k, n in references.items() if n > 1)
    report.orphans = sorted(k for k in listed if k not in references)
    report.outside_partitions.sort()
    report.api_items.sort()
    report.affected_partitions = sorted(affected)
    unpublished = [p for item_id, p in planned.items() if item_id not in seen]
    report.missing_items = len(unpublished)
    report.missing_partitions = sorted({p.partition_key for p in unpublished})
    logger.info("%s", report.summary())
    return report


def _written_by_api(item: Mapping[str, Any], key_of_href: Mapping[str, str], store: Any) -> bool:
    """Whether the object of `item` records the ingestion API as its writer."""
    asset = (item.get("assets") or {}).get(str(item.get("id")))
    href = asset.get("href") if isinstance(asset, Mapping) else None
    key = key_of_href.get(href) if isinstance(href, str) else None
    stored = store.stat(key) if key is not None else None
    return stored is not None and stored.owner is not None and stored.owner.writer == API_WRITER


def _referenced_keys(item: Mapping[str, Any], key_of_href: Mapping[str, str]) -> set[str]:
    assets = item.get("assets") or {}
    return {key_of_href[a["href"]] for a in assets.values() if a.get("href") in key_of_href}


def delete_orphans(
    report: AuditReport,
    declaration: Declaration,
    partitions: Mapping[str, Mapping[str, str]],
    services: Services,
    locations: SourceLocations,
    locks: Locks,
) -> list[str]:
    """Delete the report's orphans that are still orphans; the keys deleted.

    An orphan whose owner is an item of a partition is deleted under that partition's lock,
    after checking again that the catalog still lacks the item: a run publishing that partition
    right now (which uploads before it publishes) keeps its object.
    """
    planned = plan_all(declaration, partitions, locations)
    deleted = []
    for key in report.orphans:
        stored = services.store.stat(key)
        if stored is None:
            continue
        owner_plan = planned.get(stored.owner.item) if stored.owner is not None else None
        if owner_plan is None:
            services.store.delete(key)
            deleted.append(key)
            continue
        with locks.hold(partition_lock_name(declaration.id, owner_plan.partition_key)):
            item = services.publisher.get_items(declaration.id, [owner_plan.plan.item_id])
            if _still_orphan(key, item.values(), services):
                services.store.delete(key)
                deleted.append(key)
    logger.info("%s: deleted %d orphan objects", declaration.id, len(deleted))
    return deleted


def _still_orphan(key: str, items: Iterable[Mapping[str, Any]], services: Services) -> bool:
    href = services.store.href(key)
    return not any(
        a.get("href") == href for item in items for a in (item.get("assets") or {}).values()
    )
