"""The one factory: a dataset declaration -> partitioned assets, checks, job and collection.

Per dataset: `<id>/raw`, `<id>/cog`, `<id>/object`, `<id>/stac_item` (partitioned) and
`<id>/collection`. The four partitioned assets are one multi-asset step: download, conversion,
upload and publication of a partition happen on one worker's disk, so a multi-worker executor
never needs a shared file system between steps. A run processes a batch of partitions
(BackfillPolicy); one failing partition does not stop the others.
"""

import logging
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg

from bq_pipelines.audit import audit
from bq_pipelines.declarations import FILES_DIMENSION, Declaration, Partitions, next_period
from bq_pipelines.lib import stac
from bq_pipelines.lib.errors import CogError, PipelineError, StacValidationError
from bq_pipelines.lib.integrity import published_drift
from bq_pipelines.lib.locks import Locks, partition_lock_name
from bq_pipelines.lib.pipeline import (
    ItemPlan,
    PartitionResult,
    Services,
    Step,
    fingerprint,
    probe_sources,
    run_items,
)
from bq_pipelines.lib.staging import run_staging
from bq_pipelines.plans import SourceLocations, collection_for, plan_partition
from bq_pipelines.resources import (
    CatalogResource,
    LocksResource,
    ObjectStoreResource,
    SourcesResource,
    services_for,
)
from bq_pipelines.sensors import (
    collection_automation_condition,
    reads_remote_sources,
    upstream_sensor,
)

logger = logging.getLogger(__name__)
PARTITION_STEPS = ("raw", "cog", "object", "stac_item")
COG_VALID_CHECK = "cog_valid"
ITEM_VALID_CHECK = "stac_item_valid"
AUDIT_CHECK = "catalog_matches_store"
MAX_LISTED_ITEMS = 25
# A run with this tag (`bq-pipelines materialize --force`, or the UI launchpad's tags) redoes
# every partition, unchanged or not.
FORCE_TAG = "bq/force"
TRUE_VALUES = ("1", "true", "yes", "on")


def collection_pool(dataset_id: str) -> str:
    """The Dagster pool of a collection's writers (limit 1 in production: deploy/README.md)."""
    return f"bq/collection/{dataset_id}"


def op_name(dataset_id: str, suffix: str) -> str:
    return f"{dataset_id.replace('-', '_')}_{suffix}"


@dataclass(frozen=True)
class DatasetKeys:
    dataset_id: str

    def step(self, name: str) -> dg.AssetKey:
        return dg.AssetKey([self.dataset_id, name])

    @property
    def partitioned(self) -> list[dg.AssetKey]:
        return [self.step(name) for name in PARTITION_STEPS]

    @property
    def collection(self) -> dg.AssetKey:
        return self.step("collection")


def partitions_definition(dataset_id: str, partitions: Partitions) -> dg.PartitionsDefinition:
    """Time and/or static partitions (static dimensions combined into one), or dynamic
    partitions filled with the files found by the dataset's discovery sensor."""
    if partitions.files is not None:
        return dg.DynamicPartitionsDefinition(name=op_name(dataset_id, "files"))
    static = dg.StaticPartitionsDefinition(partitions.static_keys()) if partitions.static else None
    time = partitions.time
    if time is None:
        assert static is not None
        return static
    cron = {"yearly": "0 0 1 1 *", "monthly": "0 0 1 * *", "daily": "0 0 * * *"}[time.cadence]
    time_def = dg.TimeWindowPartitionsDefinition(
        cron_schedule=cron,
        fmt=time.key_format,
        timezone="UTC",
        start=time.start.strftime(time.key_format),
        end=next_period(time.end, time.cadence).strftime(time.key_format) if time.end else None,
    )
    if static is None:
        return time_def
    return dg.MultiPartitionsDefinition(
        {time.name: time_def, partitions.static_dimension_name: static}
    )


def keys_by_dimension(
    declaration: Declaration, partitions_def: dg.PartitionsDefinition, partition_key: str
) -> dict[str, str]:
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return dict(partitions_def.get_partition_key_from_str(partition_key).keys_by_dimension)
    if declaration.partitions.files is not None:
        return {FILES_DIMENSION: partition_key}
    if declaration.partitions.time is not None:
        return {declaration.partitions.time.name: partition_key}
    return {declaration.partitions.static_dimension_name: partition_key}


def all_partition_dimensions(
    declaration: Declaration,
    partitions_def: dg.PartitionsDefinition,
    instance: dg.DagsterInstance,
) -> dict[str, dict[str, str]]:
    """Every partition of the dataset (file partitions: those the instance knows), with its
    dimension values."""
    keys = partitions_def.get_partition_keys(dynamic_partitions_store=instance)
    return {key: keys_by_dimension(declaration, partitions_def, key) for key in keys}


@dataclass
class PartitionOutcome:
    """What one partition produced, as Dagster metadata per asset."""

    metadata: dict[dg.AssetKey, dict[str, Any]] = field(default_factory=dict)
    items: int = 0
    skipped: bool = False
    # Item id -> why its raster looks constant: a warning of the item check, not a failure.
    constant: dict[str, str] = field(default_factory=dict)


def forced(context: dg.AssetExecutionContext) -> bool:
    return context.run.tags.get(FORCE_TAG, "").strip().lower() in TRUE_VALUES


@dataclass(frozen=True)
class Previous:
    """The latest materialization of a partition's asset: its metadata and run."""

    metadata: Mapping[str, dg.MetadataValue]
    run_id: str

    def value(self, name: str) -> Any:
        entry = self.metadata.get(name)
        return entry.value if entry is not None else None


def _previous(
    context: dg.AssetExecutionContext, asset_key: dg.AssetKey, partition_key: str
) -> Previous | None:
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition_key]), limit=1
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    return Previous(records[0].asset_materialization.metadata, records[0].run_id)


def _skipped_outcome(
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
    outcome = PartitionOutcome(items=len(plans), skipped=True)
    for key in keys.partitioned:
        before = (
            previous if key == keys.step("stac_item") else _previous(context, key, partition_key)
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


def _result_outcome(keys: DatasetKeys, token: str, result: PartitionResult) -> PartitionOutcome:
    first = result.items[0]
    outcome = PartitionOutcome(items=len(result.items))
    for item_result in result.items:
        warning = stac.constant_values(item_result.item)
        if warning is not None:
            outcome.constant[item_result.item["id"]] = warning
    outcome.metadata[keys.step("raw")] = {
        "source_urls": dg.MetadataValue.md("\n".join(f"- {f.url}" for f in result.fetched)),
        "bytes": sum(f.size for f in result.fetched),
        "sha256": result.fetched[0].sha256,
        "etag": result.fetched[0].fingerprint.etag or "",
        "last_modified": result.fetched[0].fingerprint.last_modified or "",
        "skipped": False,
    }
    outcome.metadata[keys.step("cog")] = {
        "bytes": sum(r.cog.size for r in result.items),
        "sha256": first.cog.sha256,
        "crs": first.cog.crs,
        "bbox_wgs84": _bbox_text(first.cog.bbox_wgs84),
        "dtype": first.cog.dtype,
        "bands": first.cog.count,
        "size_px": f"{first.cog.width} x {first.cog.height}",
        "nodata": str(first.cog.nodata),
        "overview_levels": str(first.cog.overview_levels),
        "profile": first.cog.profile,
        "cogs": len(result.items),
        "skipped": False,
    }
    outcome.metadata[keys.step("object")] = {
        "href": dg.MetadataValue.url(first.stored.href),
        "key": first.stored.key,
        "bytes": sum(r.stored.size for r in result.items),
        "uploaded": sum(1 for r in result.items if r.stored.uploaded),
        "unchanged": sum(1 for r in result.items if not r.stored.uploaded),
        "skipped": False,
    }
    outcome.metadata[keys.step("stac_item")] = {
        "fingerprint": token,
        "items": len(result.items),
        "item_ids": [r.item["id"] for r in result.items[:MAX_LISTED_ITEMS]],
        "created": sum(1 for r in result.items if r.outcome == "created"),
        "updated": sum(1 for r in result.items if r.outcome == "updated"),
        "unchanged": sum(1 for r in result.items if r.outcome == "unchanged"),
        "item": dg.MetadataValue.json(first.item),
        "skipped": False,
        "constant_items": dg.MetadataValue.json(
            dict(list(outcome.constant.items())[:MAX_LISTED_ITEMS])
        ),
    }
    return outcome


def process_partition(
    context: dg.AssetExecutionContext,
    declaration: Declaration,
    keys: DatasetKeys,
    partition_key: str,
    dimension_keys: Mapping[str, str],
    services: Services,
    locations: SourceLocations,
    locks: Locks,
) -> PartitionOutcome:
    """Plan, then, under the partition's lock, skip if unchanged and still published as
    recorded, else fetch/convert/store/publish one partition."""
    plans = plan_partition(declaration, dimension_keys, locations)

    def waiting(name: str) -> None:
        context.log.info(f"{declaration.id} [{partition_key}]: waiting for another run of it")

    # Held from the fingerprint comparison to the publication: a second run of the partition
    # waits, then sees what the first one did.
    with locks.hold(partition_lock_name(declaration.id, partition_key), waiting):
        return _process_locked(context, declaration, keys, partition_key, plans, services)


def _process_locked(
    context: dg.AssetExecutionContext,
    declaration: Declaration,
    keys: DatasetKeys,
    partition_key: str,
    plans: Sequence[ItemPlan],
    services: Services,
) -> PartitionOutcome:
    urls = list(dict.fromkeys(s.url for p in plans for s in p.sources))
    token = fingerprint(plans, [f.token() for f in probe_sources(urls, services)])
    previous = _previous(context, keys.step("stac_item"), partition_key)
    if previous is not None and previous.value("fingerprint") == token and not forced(context):
        # Unchanged sources say nothing of what happened to the objects since: check each one
        # (a HEAD), so a deleted or overwritten object is put back, and a store that cannot be
        # reached fails the partition instead of letting it pass as skipped.
        drifts = published_drift(plans, services)
        if not drifts:
            context.log.info(f"{declaration.id} [{partition_key}]: unchanged, skipped")
            return _skipped_outcome(context, keys, partition_key, previous, plans)
        listed = "; ".join(str(d) for d in drifts[:MAX_LISTED_ITEMS])
        context.log.warning(
            f"{declaration.id} [{partition_key}]: sources unchanged but {len(drifts)} items "
            f"or objects are not as published ({listed}): processing it again"
        )

    def log_step(step: Step, detail: str) -> None:
        # Not context.log: every call is an event-log row, five per item, 25,000 for one
        # global-mammals partition. The partition's summary below goes to the event log.
        logger.debug("%s [%s] %s: %s", declaration.id, partition_key, step, detail)

    result = run_items(
        plans, services, partition_key, log_step, collection=collection_for(declaration, [])
    )
    context.log.info(
        f"{declaration.id} [{partition_key}]: {len(result.items)} items published "
        f"from {len(result.fetched)} source files"
    )
    outcome = _result_outcome(keys, token, result)
    for item_id, warning in list(outcome.constant.items())[:MAX_LISTED_ITEMS]:
        context.log.warning(f"{declaration.id} [{partition_key}] item {item_id}: {warning}")
    return outcome


def _failure_reason(error: BaseException) -> str:
    if isinstance(error, PipelineError):
        return str(error)
    # An unexpected error: keep the last frames so the reason is actionable.
    frames = "".join(traceback.format_exception(error, limit=-3)).strip()
    return f"{type(error).__name__}: {error}\n{frames}"


def _check_results(
    keys: DatasetKeys,
    processed: int,
    failures: Mapping[str, BaseException],
    outcomes: Mapping[str, PartitionOutcome],
) -> Iterator[dg.AssetCheckResult]:
    invalid_cogs = {k: str(e) for k, e in failures.items() if isinstance(e, CogError)}
    invalid_items = {k: str(e) for k, e in failures.items() if isinstance(e, StacValidationError)}
    # All-nodata items fail the item check (StacValidationError, never published); constant
    # ones are only reported: a mask of ones is constant and legitimate.
    constant = {k: list(o.constant)[:MAX_LISTED_ITEMS] for k, o in outcomes.items() if o.constant}
    for check, asset, invalid in (
        (COG_VALID_CHECK, keys.step("cog"), invalid_cogs),
        (ITEM_VALID_CHECK, keys.step("stac_item"), invalid_items),
    ):
        metadata: dict[str, Any] = {
            "partitions_checked": processed,
            "invalid": dg.MetadataValue.json(invalid),
        }
        if check == ITEM_VALID_CHECK:
            metadata["constant_items"] = dg.MetadataValue.json(constant)
        yield dg.AssetCheckResult(
            asset_key=asset, check_name=check, passed=not invalid, metadata=metadata
        )


def materialize_partitions(
    context: dg.AssetExecutionContext,
    declaration: Declaration,
    partitions_def: dg.PartitionsDefinition,
    services: Services,
    locations: SourceLocations,
    locks: Locks,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Process every partition of the run; report successes even when some fail.

    Partitions are staged in `<work dir>/run-<run id>/<partition>/`, removed when the step
    ends, however it ends: two runs never share a staging folder.
    """
    keys = DatasetKeys(declaration.id)
    outcomes: dict[str, PartitionOutcome] = {}
    failures: dict[str, BaseException] = {}
    with run_staging(services.work_dir, context.run.run_id) as staging:
        run_services = replace(services, work_dir=staging)
        for partition_key in context.partition_keys:
            dimension_keys = keys_by_dimension(declaration, partitions_def, partition_key)
            try:
                outcomes[partition_key] = process_partition(
                    context,
                    declaration,
                    keys,
                    partition_key,
                    dimension_keys,
                    run_services,
                    locations,
                    locks,
                )
            except Exception as error:
                failures[partition_key] = error
                context.log.error(
                    f"{declaration.id} [{partition_key}] failed: {_failure_reason(error)}"
                )
    yield from _check_results(keys, len(outcomes) + len(failures), failures, outcomes)
    if failures:
        _record_successes(context, outcomes)
        raise dg.Failure(
            description=(
                f"{declaration.id}: {len(failures)} of {len(context.partition_keys)} partitions "
                f"failed{'; the others were published' if outcomes else ''}.\n"
                + "\n".join(f"- {k}: {_failure_reason(e)}" for k, e in failures.items())
            ),
            metadata={
                "failed_partitions": dg.MetadataValue.json(
                    {k: _failure_reason(e) for k, e in failures.items()}
                ),
                "succeeded_partitions": len(outcomes),
            },
        )
    for partition_key, outcome in outcomes.items():
        for asset_key, metadata in outcome.metadata.items():
            context.add_asset_metadata(metadata, asset_key=asset_key, partition_key=partition_key)
    # Batch totals belong to the run, not to each partition's materialization.
    skipped = sum(1 for o in outcomes.values() if o.skipped)
    context.log.info(
        f"{declaration.id}: {len(outcomes) - skipped} partitions published, {skipped} skipped, "
        f"{sum(o.items for o in outcomes.values())} items"
    )
    for asset_key in keys.partitioned:
        yield dg.MaterializeResult(asset_key=asset_key)


def _record_successes(
    context: dg.AssetExecutionContext, outcomes: Mapping[str, PartitionOutcome]
) -> None:
    # The step is about to fail, so Dagster would record none of the run's partitions: record
    # the ones that succeeded, so that "re-execute failed" only retries the failed ones.
    for partition_key, outcome in outcomes.items():
        for asset_key, metadata in outcome.metadata.items():
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=asset_key, partition=partition_key, metadata=metadata
                )
            )


def _extent_metadata(collection: dict[str, Any]) -> dict[str, Any]:
    extent = collection.get("extent", {})
    return {
        "spatial_extent": str(extent.get("spatial", {}).get("bbox")),
        "temporal_extent": str(extent.get("temporal", {}).get("interval")),
    }


def discover_files(declaration: Declaration, local_root: Path) -> list[str]:
    """Partition keys (file names) of a files-partitioned dataset, sorted; names must be unique."""
    assert declaration.partitions.files is not None
    paths = sorted(p for p in local_root.glob(declaration.partitions.files.glob) if p.is_file())
    names = [p.name for p in paths]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise PipelineError(
            f"{declaration.id}: files with the same name under {local_root}: {duplicates}"
        )
    return names


def files_discovery_sensor(
    declaration: Declaration, partitions_def: dg.DynamicPartitionsDefinition
) -> dg.SensorDefinition:
    """Adds a partition for each new file matching the dataset's glob (runs are not started:
    materialize them from the UI or with a backfill)."""

    @dg.sensor(
        name=op_name(declaration.id, "files_sensor"),
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Finds the files of {declaration.id} under the local data root.",
    )
    def discover(context: dg.SensorEvaluationContext, sources: SourcesResource):
        found = discover_files(declaration, Path(sources.local_data_root))
        known = set(context.instance.get_dynamic_partitions(partitions_def.name or ""))
        new = [name for name in found if name not in known]
        if not new:
            return dg.SkipReason(f"no new files among {len(found)}")
        return dg.SensorResult(dynamic_partitions_requests=[partitions_def.build_add_request(new)])

    return discover


def audit_check(
    declaration: Declaration, partitions_def: dg.PartitionsDefinition
) -> dg.AssetChecksDefinition:
    """The drift audit (audit.py) as a non-blocking check of the collection. Not part of the
    dataset's job: it reads every item and HEADs every object, so it runs on request (the
    asset's Checks tab, or `bq-pipelines audit <dataset>`), not after every batch."""
    keys = DatasetKeys(declaration.id)

    @dg.asset_check(
        asset=keys.collection,
        name=AUDIT_CHECK,
        blocking=False,
        description=(
            "The catalog matches the object store: every item's object exists with the size "
            "and sha256 the item says, no object under the dataset's folders lacks its item, "
            "no item lies outside the dataset's partitions, nothing is listed twice. Repair: "
            "`bq-pipelines audit <dataset> --fix`."
        ),
    )
    def catalog_matches_store(
        context: dg.AssetCheckExecutionContext,
        object_store: ObjectStoreResource,
        catalog: CatalogResource,
        sources: SourcesResource,
    ) -> dg.AssetCheckResult:
        report = audit(
            declaration,
            all_partition_dimensions(declaration, partitions_def, context.instance),
            services_for(object_store, catalog, sources),
            sources.locations(),
        )
        context.log.info(report.summary())
        return dg.AssetCheckResult(
            passed=report.clean,
            description=report.summary(),
            metadata={
                **report.counts(),
                **{name: dg.MetadataValue.json(ids) for name, ids in report.listing().items()},
            },
        )

    return catalog_matches_store


def build_dataset(declaration: Declaration) -> dg.Definitions:
    """Assets, checks and job of one dataset."""
    keys = DatasetKeys(declaration.id)
    partitions_def = partitions_definition(declaration.id, declaration.partitions)
    group = op_name(declaration.id, "dataset")
    descriptions = {
        "raw": "Source files of the partition, fetched into staging (streamed, checksummed).",
        "cog": "Cloud-Optimized GeoTIFFs converted from the sources and validated.",
        "object": "The COGs in the object store under <prefix>/<folder>/<file>.",
        "stac_item": "STAC items describing the COGs, validated and published.",
    }
    specs = []
    previous: dg.AssetKey | None = None
    for name in PARTITION_STEPS:
        specs.append(
            dg.AssetSpec(
                key=keys.step(name),
                deps=[previous] if previous else [],
                group_name=group,
                description=f"{declaration.title}: {descriptions[name]}",
                kinds={"stac"} if name == "stac_item" else {"cog"} if name == "cog" else None,
                metadata={"dataset": declaration.id, "collection_id": declaration.id},
                partitions_def=partitions_def,
            )
        )
        previous = keys.step(name)

    @dg.multi_asset(
        name=op_name(declaration.id, "partitions"),
        specs=specs,
        check_specs=[
            dg.AssetCheckSpec(
                COG_VALID_CHECK,
                asset=keys.step("cog"),
                blocking=True,
                description="Every COG passes rio-cogeo's cog_validate.",
            ),
            dg.AssetCheckSpec(
                ITEM_VALID_CHECK,
                asset=keys.step("stac_item"),
                blocking=True,
                description="Every item validates against the STAC schemas and has data: an "
                "all-nodata raster fails (not published); a constant one is listed in the "
                "metadata (constant_items) as a warning.",
            ),
        ],
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.multi_run(declaration.partitions.batch_size),
        can_subset=False,
    )
    def partition_assets(
        context: dg.AssetExecutionContext,
        object_store: ObjectStoreResource,
        catalog: CatalogResource,
        sources: SourcesResource,
        locks: LocksResource,
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        services = services_for(object_store, catalog, sources)
        yield from materialize_partitions(
            context, declaration, partitions_def, services, sources.locations(), locks.locks()
        )

    @dg.asset(
        key=keys.collection,
        deps=[keys.step("stac_item")],
        group_name=group,
        kinds={"stac"},
        automation_condition=collection_automation_condition(),
        description=f"{declaration.title}: the STAC collection, its extent and summaries "
        "recomputed from the published items (not published while it has none).",
        output_required=False,
        pool=collection_pool(declaration.id),
    )
    def collection(
        context: dg.AssetExecutionContext, catalog: CatalogResource, sources: SourcesResource
    ) -> Iterator[dg.MaterializeResult]:
        publisher = catalog.publisher()
        content = publisher.collection_content(declaration.id, declaration.summarize)
        if not content.items:
            # An empty collection would advertise a dataset with nothing in it (a failed first
            # run): the collection appears with its first published items.
            context.log.warning(f"collection {declaration.id}: no published items, not published")
            return
        built = collection_for(declaration, [], content)
        schemas = sources.stac_schemas_dir
        stac.validate(built, Path(schemas) if schemas else None)
        outcome = publisher.upsert_collection(built)
        as_dict = built.to_dict(include_self_link=False)
        context.log.info(f"collection {declaration.id}: {outcome}, {content.items} items")
        yield dg.MaterializeResult(
            metadata={
                "items": content.items,
                "outcome": outcome,
                **_extent_metadata(as_dict),
                "collection": dg.MetadataValue.json(as_dict),
                "updated_at": datetime.now().isoformat(timespec="seconds"),
            }
        )

    audit_def = audit_check(declaration, partitions_def)
    job = dg.define_asset_job(
        op_name(declaration.id, "job"),
        selection=dg.AssetSelection.assets(*keys.partitioned, keys.collection)
        - dg.AssetSelection.checks(audit_def),
        partitions_def=partitions_def,
        description=f"Materialize {declaration.title}: partitions, then the collection.",
    )
    sensors = []
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        sensors.append(files_discovery_sensor(declaration, partitions_def))
    elif reads_remote_sources(declaration):
        sensors.append(upstream_sensor(declaration, partitions_def, job))
    return dg.Definitions(
        assets=[partition_assets, collection],
        asset_checks=[audit_def],
        jobs=[job],
        sensors=sensors,
    )
