"""What a partition's run leaves in Dagster: the metadata of each of its assets, read back from
the latest materializations (to skip an unchanged partition) or built from a fresh result."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from bq_pipelines.lib import stac
from bq_pipelines.lib.pipeline import ItemPlan, ItemResult, PartitionResult, settings_digest
from bq_pipelines.orchestration.keys import SETTINGS_DIGEST, DatasetKeys

MAX_LISTED_ITEMS = 25


@dataclass
class PartitionOutcome:
    """What one partition produced, as Dagster metadata per asset."""

    metadata: dict[dg.AssetKey, dict[str, Any]] = field(default_factory=dict)
    items: int = 0
    skipped: bool = False
    # Item id -> why its raster looks constant: a warning of the item check, not a failure.
    constant: dict[str, str] = field(default_factory=dict)
    # The partition's fingerprint (sources, settings, code): its Dagster data version.
    data_version: str | None = None


@dataclass(frozen=True)
class Previous:
    """The latest materialization of a partition's asset: its metadata and run."""

    metadata: Mapping[str, dg.MetadataValue]
    run_id: str

    def value(self, name: str) -> Any:
        entry = self.metadata.get(name)
        return entry.value if entry is not None else None


def previous_materialization(
    context: dg.AssetExecutionContext, asset_key: dg.AssetKey, partition_key: str
) -> Previous | None:
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition_key]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    return Previous(records[0].asset_materialization.metadata, records[0].run_id)


def latest_recorded(
    context: dg.AssetExecutionContext, asset_key: dg.AssetKey, partition_keys: Sequence[str]
) -> dict[str, Previous]:
    """`previous_materialization` of each of `partition_keys` in two queries for the whole
    batch, not one (a connection, on dagster-postgres) per partition."""
    storage_ids = context.instance.event_log_storage.get_latest_storage_id_by_partition(
        asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION, set(partition_keys)
    )
    if not storage_ids:
        return {}
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=list(storage_ids.values())),
        limit=len(storage_ids),
    ).records
    return {
        record.partition_key: Previous(record.asset_materialization.metadata, record.run_id)
        for record in records
        if record.partition_key is not None and record.asset_materialization is not None
    }


def skipped_outcome(
    context: dg.AssetExecutionContext,
    keys: DatasetKeys,
    partition_key: str,
    previous: Previous,
    plans: Sequence[ItemPlan],
) -> PartitionOutcome:
    """The partition as its last processing left it (carried over, so the latest
    materialization still says what it is), marked skipped, with what was verified."""
    reason = (
        "source files and COG settings unchanged since the last materialization; every item "
        "is in the catalog and every object in the store with its recorded size and sha256"
    )
    processed_in = previous.value("processed_in_run") or previous.run_id
    outcome = PartitionOutcome(
        items=len(plans), skipped=True, data_version=previous.value("fingerprint")
    )
    for key in keys.partitioned:
        before = (
            previous
            if key == keys.step("stac_item")
            else previous_materialization(context, key, partition_key)
        )
        outcome.metadata[key] = {
            **(before.metadata if before is not None else {}),
            "skipped": True,
            "skip_reason": reason,
            "processed_in_run": processed_in,
        }
    outcome.metadata[keys.step("object")]["objects_verified"] = len(plans)
    outcome.metadata[keys.step("stac_item")] |= {
        "item_ids": [p.item_id for p in plans[:MAX_LISTED_ITEMS]],
        "items": len(plans),
    }
    return outcome


def _bbox_text(bbox: Sequence[float]) -> str:
    return ", ".join(f"{v:.6f}" for v in bbox)


def result_outcome(
    keys: DatasetKeys, token: str, result: PartitionResult, item_url: str
) -> PartitionOutcome:
    """The metadata of a partition just processed (`token`: its fingerprint)."""
    outcome = PartitionOutcome(items=len(result.items), data_version=token)
    for item_result in result.items:
        warning = stac.constant_values(item_result.item)
        if warning is not None:
            outcome.constant[item_result.item["id"]] = warning
    outcome.metadata[keys.step("raw")] = _raw_metadata(result)
    outcome.metadata[keys.step("cog")] = _cog_metadata(result.items)
    outcome.metadata[keys.step("object")] = _object_metadata(result.items)
    outcome.metadata[keys.step("stac_item")] = _item_metadata(
        result.items, token, item_url, outcome.constant
    )
    return outcome


def _raw_metadata(result: PartitionResult) -> dict[str, Any]:
    first = result.fetched[0]
    return {
        "source_urls": dg.MetadataValue.md("\n".join(f"- {f.url}" for f in result.fetched)),
        "bytes": sum(f.size for f in result.fetched),
        "sha256": first.sha256,
        "etag": first.fingerprint.etag or "",
        "last_modified": first.fingerprint.last_modified or "",
        "skipped": False,
    }


def _cog_metadata(items: Sequence[ItemResult]) -> dict[str, Any]:
    first = items[0].cog
    return {
        "bytes": sum(r.cog.size for r in items),
        "sha256": first.sha256,
        "crs": first.crs,
        "bbox_wgs84": _bbox_text(first.bbox_wgs84),
        "dtype": first.dtype,
        "bands": first.count,
        "size_px": f"{first.width} x {first.height}",
        "nodata": str(first.nodata),
        "overview_levels": str(first.overview_levels),
        "profile": first.profile,
        "cogs": len(items),
        "skipped": False,
    }


def _object_metadata(items: Sequence[ItemResult]) -> dict[str, Any]:
    first = items[0].stored
    return {
        "href": dg.MetadataValue.url(first.href),
        "key": first.key,
        "bytes": sum(r.stored.size for r in items),
        "uploaded": sum(1 for r in items if r.stored.uploaded),
        "unchanged": sum(1 for r in items if not r.stored.uploaded),
        "skipped": False,
    }


def _item_metadata(
    items: Sequence[ItemResult], token: str, item_url: str, constant: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "item_url": dg.MetadataValue.url(item_url),
        "fingerprint": token,
        SETTINGS_DIGEST: settings_digest([r.plan for r in items]),
        "items": len(items),
        "item_ids": [r.item["id"] for r in items[:MAX_LISTED_ITEMS]],
        "created": sum(1 for r in items if r.outcome == "created"),
        "updated": sum(1 for r in items if r.outcome == "updated"),
        "unchanged": sum(1 for r in items if r.outcome == "unchanged"),
        "item": dg.MetadataValue.json(items[0].item),
        "skipped": False,
        "constant_items": dg.MetadataValue.json(dict(list(constant.items())[:MAX_LISTED_ITEMS])),
    }
