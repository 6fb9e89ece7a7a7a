"""Adopting what a catalog already publishes, instead of ingesting it again.

Dagster-free: for one partition, are its planned items in the catalog as planned, and their
objects in the store? If so, the partition can be recorded as materialized (by the adopt job)
with what was found: each object's size and ETag (legacy objects carry no sha256 of ours) and
the sources' fingerprint (one HEAD each, nothing downloaded). Nothing is written to the catalog
or the store. A later run of the partition skips it while its sources, settings and objects
stay as recorded (`adopted_drift`), and processes it again otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bq_pipelines.datasets.comparison import item_differences, planned_document
from bq_pipelines.datasets.plans import SourceLocations, plan_partition
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.errors import PipelineError
from bq_pipelines.lib.pipeline import ItemPlan, Services, fingerprint, probe_sources
from bq_pipelines.lib.storage import object_key

# The metadata an adopted partition's materializations carry (see the module docstring).
ADOPTED = "adopted"
ADOPTED_OBJECTS = "adopted_objects"
MAX_REASONS = 5


@dataclass(frozen=True)
class AdoptedObject:
    key: str
    size: int
    etag: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "etag": self.etag}


@dataclass
class Assessment:
    """What adopting one partition found."""

    partition_key: str
    plans: list[ItemPlan]
    reasons: list[str] = field(default_factory=list)  # why it cannot be adopted
    objects: dict[str, AdoptedObject] = field(default_factory=dict)
    fingerprint: str | None = None

    @property
    def adoptable(self) -> bool:
        return not self.reasons and self.fingerprint is not None

    def objects_json(self) -> dict[str, dict[str, Any]]:
        return {key: found.to_json() for key, found in self.objects.items()}


def assess_partition(
    declaration: Declaration,
    partition_key: str,
    dimension_keys: Mapping[str, str],
    services: Services,
    locations: SourceLocations,
) -> Assessment:
    """Whether the partition's items are published as planned and their objects stored; when
    they are, the sources are probed (HEAD) for the fingerprint a run would compute."""
    plans = plan_partition(declaration, dimension_keys, locations)
    assessment = Assessment(partition_key, plans)
    _check_items(plans, services, assessment)
    _check_objects(plans, services, assessment)
    if assessment.reasons:
        return assessment
    urls = list(dict.fromkeys(s.url for p in plans for s in p.sources))
    try:
        tokens = [f.token() for f in probe_sources(urls, services)]
    except PipelineError as error:
        assessment.reasons.append(f"source not reachable: {error}")
        return assessment
    assessment.fingerprint = fingerprint(plans, tokens)
    return assessment


def _check_items(plans: Sequence[ItemPlan], services: Services, assessment: Assessment) -> None:
    collection = plans[0].collection_id
    found = services.publisher.get_items(collection, [p.item_id for p in plans], whole=True)
    for plan in plans:
        item = found.get(plan.item_id)
        if item is None:
            assessment.reasons.append(f"{plan.item_id}: not in the catalog")
            continue
        planned = planned_document(plan, services.store, services.object_prefix)
        differences = item_differences(planned, item)
        if differences:
            more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
            assessment.reasons.append(f"{differences[0]}{more}")


def _check_objects(plans: Sequence[ItemPlan], services: Services, assessment: Assessment) -> None:
    for plan in plans:
        key = object_key(services.object_prefix, plan.folder, plan.file_name)
        stored = services.store.stat(key)
        if stored is None:
            assessment.reasons.append(f"{plan.item_id}: object {key} is missing")
        elif stored.size == 0 or not stored.etag:
            assessment.reasons.append(f"{plan.item_id}: object {key} is empty or has no ETag")
        else:
            assessment.objects[key] = AdoptedObject(key, stored.size, stored.etag)


def adopted_drift(
    plans: Sequence[ItemPlan], services: Services, recorded: Mapping[str, Any]
) -> list[str]:
    """What keeps an adopted partition from being skipped: items gone from the catalog, and
    objects missing or changed (size or ETag) since they were adopted. Empty when nothing
    moved."""
    if not plans:
        return []
    found = services.publisher.get_items(plans[0].collection_id, [p.item_id for p in plans])
    drifts = [f"{p.item_id}: not in the catalog" for p in plans if p.item_id not in found]
    for plan in plans:
        key = object_key(services.object_prefix, plan.folder, plan.file_name)
        expected = recorded.get(key)
        stored = services.store.stat(key)
        if expected is None or stored is None:
            drifts.append(f"{plan.item_id}: object {key} {'missing' if stored is None else 'new'}")
        elif (stored.size, stored.etag) != (expected.get("size"), expected.get("etag")):
            drifts.append(f"{plan.item_id}: object {key} changed since it was adopted")
    return drifts
