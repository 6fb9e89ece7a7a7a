"""A partition's items, chained: fetch every source once -> produce each item -> publish them
all together. Nothing is published unless every item is produced."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pystac

from bq_pipelines.lib import cog, sources
from bq_pipelines.lib.catalog import PublishOutcome
from bq_pipelines.lib.errors import PipelineError
from bq_pipelines.lib.pipeline.band_items import one_band_of_one_source, produce_band_items
from bq_pipelines.lib.pipeline.plan import ItemPlan
from bq_pipelines.lib.pipeline.services import Services
from bq_pipelines.lib.pipeline.steps import (
    Produced,
    Step,
    StepCallback,
    fetch_sources,
    log_step,
    produce_item,
)
from bq_pipelines.lib.storage import StoredObject


@dataclass(frozen=True)
class ItemResult:
    """One item produced and published: its plan, COG, stored objects and document."""

    plan: ItemPlan
    cog: cog.CogInfo
    stored: StoredObject
    item: dict[str, Any]
    outcome: PublishOutcome
    thumbnail: StoredObject | None = None


@dataclass
class PartitionResult:
    """A partition's items, in the order of their plans, and the source files fetched."""

    items: list[ItemResult]
    fetched: list[sources.FetchedFile]


def run_items(
    plans: Sequence[ItemPlan],
    services: Services,
    staging_name: str,
    on_step: StepCallback = log_step,
    collection: pystac.Collection | None = None,
) -> PartitionResult:
    """Fetch every source once, produce each item, then publish them all together (in bulk
    when the catalog supports it). A failing item stops the partition before anything is
    published; objects already uploaded are simply overwritten by the rerun. The staging
    folder is always removed.

    `collection` is created, if the catalog lacks it, right before the items: a partition that
    fails earlier leaves no empty collection behind.
    """
    if not plans:
        raise PipelineError(f"{staging_name}: nothing to produce (no items planned)")
    staging = services.work_dir / _safe_name(staging_name)
    staging.mkdir(parents=True, exist_ok=True)
    try:
        urls = [source.url for plan in plans for source in plan.sources]
        on_step(Step.FETCH, ", ".join(dict.fromkeys(urls)))
        fetched = fetch_sources(urls, staging, services)
        produced = _produce_all(plans, fetched, staging, services, on_step)
        on_step(Step.PUBLISH, f"{len(produced)} items")
        results = _publish(plans, produced, services, collection)
        return PartitionResult(items=results, fetched=list(fetched.values()))
    finally:
        on_step(Step.CLEANUP, str(staging))
        shutil.rmtree(staging, ignore_errors=True)


def _produce_all(
    plans: Sequence[ItemPlan],
    fetched: Mapping[str, sources.FetchedFile],
    staging: Path,
    services: Services,
    on_step: StepCallback,
) -> list[Produced]:
    if one_band_of_one_source(plans):
        return produce_band_items(plans, fetched, staging, services, on_step)
    return [produce_item(plan, fetched, staging, services, on_step) for plan in plans]


def _publish(
    plans: Sequence[ItemPlan],
    produced: Sequence[Produced],
    services: Services,
    collection: pystac.Collection | None,
) -> list[ItemResult]:
    """Publish the produced items together, after their collection if the catalog lacks it."""
    if collection is not None:
        services.publisher.ensure_collection(collection)
    outcomes = services.publisher.upsert_items([p.item for p in produced])
    return [
        ItemResult(
            plan=plan,
            cog=p.info,
            stored=p.stored,
            item=p.item.to_dict(),
            outcome=outcome,
            thumbnail=p.thumbnail,
        )
        for plan, p, outcome in zip(plans, produced, outcomes, strict=True)
    ]


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:150]
