"""Where a dataset stands, partition by partition: published, missing, failed, stale, adopted.

Read from the Dagster instance (each partition's latest stac_item materialization and Dagster's
partition status) and the declaration (the code version and settings it would publish with):
`bq-pipelines status <dataset>`, and the collection asset's metadata after each run. A
partition is
- `published` when materialized (skipped runs and adoptions included), `adopted` among them
  when its latest materialization recorded what the catalog already published;
- `stale` when published with another code version, or other settings (items, properties, COG
  settings: the recorded settings digest), or, when the sources are checked, other sources;
- `failed` when its latest attempt failed, `missing` when never materialized.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from bq_pipelines.datasets.plans import SourceLocations, plan_partition
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.pipeline import ItemPlan, settings_digest
from bq_pipelines.lib.words import plural
from bq_pipelines.orchestration.keys import (
    CODE_VERSION_TAG,
    SETTINGS_DIGEST,
    DatasetKeys,
    keys_by_dimension,
)

SHOWN = 5
KINDS = ("published", "missing", "failed", "stale", "adopted")
# What tells, for one partition's plans, the fingerprint its sources have now (HEADs them).
SourcesCheck = Callable[[Sequence[ItemPlan]], str]


@dataclass
class DatasetStatus:
    dataset_id: str
    partitions: int = 0
    keys: dict[str, list[str]] = field(default_factory=lambda: {kind: [] for kind in KINDS})
    stale_reasons: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {"partitions": self.partitions, **{k: len(v) for k, v in self.keys.items()}}

    def lines(self, shown: int = SHOWN) -> list[str]:
        counts = ", ".join(f"{len(self.keys[kind])} {kind}" for kind in KINDS)
        lines = [f"{self.dataset_id}: {plural(self.partitions, 'partition')}: {counts}"]
        for kind in KINDS:
            keys = self.keys[kind]
            if keys and kind != "published":
                more = f" (and {len(keys) - shown} more)" if len(keys) > shown else ""
                lines.append(f"  {kind}: {', '.join(self._shown(kind, keys[:shown]))}{more}")
        return lines

    def _shown(self, kind: str, keys: Sequence[str]) -> list[str]:
        if kind != "stale":
            return list(keys)
        return [f"{key} ({self.stale_reasons[key]})" for key in keys]

    def metadata(self) -> dict[str, Any]:
        """The counts and the first keys of each kind, as the collection asset shows them."""
        return {
            **{f"partitions_{kind}": len(keys) for kind, keys in self.keys.items()},
            "partition_status": dg.MetadataValue.md("\n".join(self.lines())),
        }


@dataclass(frozen=True)
class _Latest:
    metadata: Mapping[str, Any]
    code_version: str | None


def dataset_status(
    declaration: Declaration,
    partitions_def: dg.PartitionsDefinition,
    instance: dg.DagsterInstance,
    locations: SourceLocations,
    code_version: str,
    check_sources: SourcesCheck | None = None,
) -> DatasetStatus:
    """The dataset's partitions by status (see the module docstring)."""
    keys = list(partitions_def.get_partition_keys(dynamic_partitions_store=instance))
    stac_item = DatasetKeys(declaration.id).step("stac_item")
    latest = _latest_materializations(instance, stac_item, keys)
    statuses = instance.get_status_by_partition(stac_item, keys, partitions_def) or {}
    status = DatasetStatus(declaration.id, partitions=len(keys))
    for key in keys:
        failed = statuses.get(key) == dg.AssetPartitionStatus.FAILED
        record = latest.get(key)
        if failed:
            status.keys["failed"].append(key)
        elif record is None:
            status.keys["missing"].append(key)
            continue
        if record is None:
            continue
        status.keys["published"].append(key)
        if record.metadata.get("adopted") is True:
            status.keys["adopted"].append(key)
        reason = _stale_reason(
            declaration, partitions_def, key, record, locations, code_version, check_sources
        )
        if reason is not None:
            status.keys["stale"].append(key)
            status.stale_reasons[key] = reason
    return status


def _latest_materializations(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, keys: Sequence[str]
) -> dict[str, _Latest]:
    """The latest materialization of each partition of `asset_key`, in two queries."""
    storage_ids = instance.event_log_storage.get_latest_storage_id_by_partition(
        asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION, set(keys)
    )
    if not storage_ids:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=list(storage_ids.values())),
        limit=len(storage_ids),
    ).records
    found = {}
    for record in records:
        materialization = record.asset_materialization
        if record.partition_key is None or materialization is None:
            continue
        metadata = {name: value.value for name, value in materialization.metadata.items()}
        tags = materialization.tags or {}
        found[record.partition_key] = _Latest(metadata, tags.get(CODE_VERSION_TAG))
    return found


def _stale_reason(
    declaration: Declaration,
    partitions_def: dg.PartitionsDefinition,
    key: str,
    record: _Latest,
    locations: SourceLocations,
    code_version: str,
    check_sources: SourcesCheck | None,
) -> str | None:
    if record.code_version is not None and record.code_version != code_version:
        return "code version changed"
    recorded = record.metadata.get(SETTINGS_DIGEST)
    if recorded is None and check_sources is None:
        return None  # published before the digest was recorded: nothing to compare
    plans = plan_partition(
        declaration, keys_by_dimension(declaration, partitions_def, key), locations
    )
    if recorded is not None and recorded != settings_digest(plans):
        return "settings changed"
    if check_sources is not None and check_sources(plans) != record.metadata.get("fingerprint"):
        return "sources changed"
    return None
