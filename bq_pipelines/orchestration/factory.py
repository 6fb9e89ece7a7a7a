"""The one factory: a dataset declaration -> partitioned assets, checks, job and collection.

Per dataset: `<id>/raw`, `<id>/cog`, `<id>/object`, `<id>/stac_item` (partitioned) and
`<id>/collection`. The four partitioned assets are one multi-asset step: download, conversion,
upload and publication of a partition happen on one worker's disk, so a multi-worker executor
never needs a shared file system between steps. A run processes a batch of partitions
(BackfillPolicy); one failing partition does not stop the others.
"""

import itertools
import logging
import os
import re
import tempfile
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg

from bq_pipelines.datasets.adoption import ADOPTED, ADOPTED_OBJECTS, adopted_drift
from bq_pipelines.datasets.audit import audit
from bq_pipelines.datasets.plans import SourceLocations, collection_for, plan_partition
from bq_pipelines.datasets.sandbox import check_local_sources
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib import cog as cog_lib
from bq_pipelines.lib import stac
from bq_pipelines.lib.catalog import Publisher
from bq_pipelines.lib.errors import CogError, PipelineError, StacValidationError
from bq_pipelines.lib.hashing import sha256_json
from bq_pipelines.lib.integrity import published_drift
from bq_pipelines.lib.locks import Locks, partition_lock_name
from bq_pipelines.lib.pipeline import (
    PIPELINE_VERSION,
    ItemPlan,
    PartitionResult,
    Services,
    Step,
    fingerprint,
    probe_sources,
    run_items,
    settings_digest,
)
from bq_pipelines.lib.staging import run_staging
from bq_pipelines.lib.words import plural
from bq_pipelines.orchestration.adopt_job import adopt_job
from bq_pipelines.orchestration.keys import (
    AUDIT_CHECK,
    COG_VALID_CHECK,
    DATASET_TAG,
    ITEM_VALID_CHECK,
    PARTITION_STEPS,
    SETTINGS_DIGEST,
    DatasetKeys,
    collection_pool,
    keys_by_dimension,
    op_name,
    partitions_definition,
)
from bq_pipelines.orchestration.previews import (
    PREVIEW_MAX_ITEMS,
    collection_previews,
    coverage_map_key,
    partition_previews,
    store_coverage_map,
)
from bq_pipelines.orchestration.resources import (
    CatalogResource,
    LocksResource,
    ObjectStoreResource,
    SourcesResource,
    links_for,
    services_for,
)
from bq_pipelines.orchestration.sensors import (
    collection_automation_condition,
    reads_remote_sources,
    upstream_sensor,
)
from bq_pipelines.orchestration.status import dataset_status
from bq_pipelines.runtime.monitoring import die_with_run_worker
from bq_pipelines.settings import Settings

logger = logging.getLogger(__name__)
MAX_LISTED_ITEMS = 25
# A run with this tag (`bq-pipelines materialize --force`, or the UI launchpad's tags) redoes
# every partition, unchanged or not.
FORCE_TAG = "bq/force"
TRUE_VALUES = ("1", "true", "yes", "on")
# Dagster writes the events of one output's partitions (our 4 assets x the run's partitions) in
# one batch when this is set; dagster-postgres (production) inserts a batch of materializations in
# one statement instead of a connection and a commit each. SQLite writes them one by one either way.
EVENT_BATCH_SIZE_ENV = "DAGSTER_EVENT_BATCH_SIZE"
EVENT_BATCH_SIZE = 1000


def batch_event_writes() -> None:
    """Turn on Dagster's batched event writes in this process (read by Dagster at every event;
    the step processes and run workers build the Definitions before running anything). An
    explicit value in the environment wins (`0` turns batching off)."""
    os.environ.setdefault(EVENT_BATCH_SIZE_ENV, str(EVENT_BATCH_SIZE))


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
    # The partition's fingerprint (sources, settings, code): its Dagster data version.
    data_version: str | None = None


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


def _latest_recorded(
    context: dg.AssetExecutionContext, asset_key: dg.AssetKey, partition_keys: Sequence[str]
) -> dict[str, Previous]:
    """`_previous` of each of `partition_keys` in two queries for the whole batch, not one (a
    connection, on dagster-postgres) per partition."""
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
    outcome = PartitionOutcome(
        items=len(plans), skipped=True, data_version=previous.value("fingerprint")
    )
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


def _result_outcome(
    keys: DatasetKeys, token: str, result: PartitionResult, item_url: str
) -> PartitionOutcome:
    first = result.items[0]
    outcome = PartitionOutcome(items=len(result.items), data_version=token)
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
        "item_url": dg.MetadataValue.url(item_url),
        "fingerprint": token,
        SETTINGS_DIGEST: settings_digest([r.plan for r in result.items]),
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
    recorded: Previous | None,
) -> PartitionOutcome:
    """Plan, then, under the partition's lock, skip if unchanged and still published as
    recorded (`recorded`: its latest stac_item materialization when the batch started), else
    fetch/convert/store/publish one partition."""
    plans = plan_partition(declaration, dimension_keys, locations)
    waited = False

    def waiting(name: str) -> None:
        nonlocal waited
        waited = True
        context.log.info(f"{declaration.id} [{partition_key}]: waiting for another run of it")

    # Held from the fingerprint comparison to the publication: a second run of the partition
    # waits, then sees what the first one did.
    with locks.hold(partition_lock_name(declaration.id, partition_key), waiting):
        # The other run may have recorded the partition while this one waited.
        previous = _previous(context, keys.step("stac_item"), partition_key) if waited else recorded
        return _process_locked(context, declaration, keys, partition_key, plans, services, previous)


def _process_locked(
    context: dg.AssetExecutionContext,
    declaration: Declaration,
    keys: DatasetKeys,
    partition_key: str,
    plans: Sequence[ItemPlan],
    services: Services,
    previous: Previous | None,
) -> PartitionOutcome:
    urls = list(dict.fromkeys(s.url for p in plans for s in p.sources))
    token = fingerprint(plans, [f.token() for f in probe_sources(urls, services)])
    if forced(context):
        # Redone from the sources, every object uploaded again: a forced run repairs whatever
        # the store holds, not only the items.
        services = replace(services, rewrite_objects=True)
    elif previous is not None and previous.value("fingerprint") == token:
        # Unchanged sources say nothing of what happened to the objects since: check each one
        # (a HEAD), so a deleted or overwritten object is put back, and a store that cannot be
        # reached fails the partition instead of letting it pass as skipped.
        drifts = (
            adopted_drift(plans, services, previous.value(ADOPTED_OBJECTS) or {})
            if previous.value(ADOPTED)
            else [str(d) for d in published_drift(plans, services)]
        )
        if not drifts:
            # The materialization says it (skipped, skip_reason); the batch's summary counts it.
            logger.info("%s [%s]: unchanged, skipped", declaration.id, partition_key)
            return _skipped_outcome(context, keys, partition_key, previous, plans)
        listed = "; ".join(drifts[:MAX_LISTED_ITEMS])
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
    # Not context.log either: an event-log row per partition, when the materializations already
    # say it (items, source_urls) and the batch's summary line counts them.
    logger.info(
        "%s [%s]: %d items published from %d source files",
        declaration.id,
        partition_key,
        len(result.items),
        len(result.fetched),
    )
    first_item = result.items[0].item["id"]
    links = services.links  # http links for people when a browse server serves the files
    outcome = _result_outcome(
        keys,
        token,
        result,
        links.browsable(services.publisher.item_url(declaration.id, first_item)),
    )
    outcome.metadata[keys.step("object")]["href"] = dg.MetadataValue.url(
        links.browsable(result.items[0].stored.href)
    )
    outcome.metadata[keys.step("stac_item")] |= partition_previews(result, services)
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
    recorded = _latest_recorded(context, keys.step("stac_item"), context.partition_keys)
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
                    recorded.get(partition_key),
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
                f"{declaration.id}: {len(failures)} of "
                f"{plural(len(context.partition_keys), 'partition')} failed"
                f"{'; the others were published' if outcomes else ''}.\n"
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
    # Dagster records one data version per asset and run: a run of one partition (the
    # sensor's, the UI's, the API's) gives it its fingerprint; a batch leaves Dagster's own.
    (only,) = outcomes.values() if len(outcomes) == 1 else (None,)
    data_version = dg.DataVersion(only.data_version) if only and only.data_version else None
    for asset_key in keys.partitioned:
        yield dg.MaterializeResult(
            asset_key=asset_key,
            data_version=data_version if asset_key == keys.step("raw") else None,
        )


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


def _collection_previews(
    collection_id: str,
    publisher: Publisher,
    total: int,
    object_store: ObjectStoreResource,
    catalog: CatalogResource,
    sources: SourcesResource,
) -> dict[str, dg.MetadataValue]:
    """The collection's previews, its coverage map stored beside the datasets' objects."""
    store = object_store.store()
    key = coverage_map_key(object_store.prefix, collection_id)
    Path(sources.work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=sources.work_dir, prefix="collection-") as staging:
        return collection_previews(
            itertools.islice(publisher.iter_items(collection_id), PREVIEW_MAX_ITEMS),
            total=total,
            store_map=lambda png: store_coverage_map(png, store, key, Path(staging)),
            links=links_for(object_store, catalog),
            collection_id=collection_id,
        )


def _extent_metadata(collection: dict[str, Any]) -> dict[str, Any]:
    extent = collection.get("extent", {})
    return {
        "spatial_extent": str(extent.get("spatial", {}).get("bbox")),
        "temporal_extent": str(extent.get("temporal", {}).get("interval")),
    }


def _status_metadata(
    context: dg.AssetExecutionContext,
    declaration: Declaration,
    partitions_def: dg.PartitionsDefinition,
    sources: SourcesResource,
    code_version: str,
) -> dict[str, Any]:
    """The partitions' status counts (status.py), shown at a glance on the collection."""
    try:
        found = dataset_status(
            declaration, partitions_def, context.instance, sources.locations(), code_version
        )
    except PipelineError as error:  # a source the plan reads is gone: say so, publish anyway
        context.log.warning(f"collection {declaration.id}: no partition status: {error}")
        return {}
    return found.metadata()


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
            "no item lies outside the dataset's partitions, nothing is listed twice (a failure). "
            "Declared partitions not published (a backfill cut short) are a warning, with "
            "their keys. Repair: `bq-pipelines audit <dataset> --fix`; gaps: a backfill."
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
        # Drift fails the check; gaps alone are a warning (a backfill fills them).
        complete = not report.missing_partitions
        return dg.AssetCheckResult(
            passed=report.clean and complete,
            severity=dg.AssetCheckSeverity.ERROR
            if not report.clean
            else dg.AssetCheckSeverity.WARN,
            description=report.summary(),
            metadata={
                **report.counts(),
                **{name: dg.MetadataValue.json(ids) for name, ids in report.listing().items()},
            },
        )

    return catalog_matches_store


# Dagster tag values: at most 63 letters, digits, `-`, `_` or `.`.
_TAG_VALUE_DISALLOWED = re.compile(r"[^A-Za-z0-9_.\-]")


def _tag_value(text: str) -> str:
    return _TAG_VALUE_DISALLOWED.sub("-", text)[:63]


def dataset_tags(declaration: Declaration) -> dict[str, str]:
    """What the UI filters assets by: the dataset, its source host(s), license and cadence."""
    partitions = declaration.partitions
    cadence = (
        partitions.time.cadence
        if partitions.time is not None
        else "files"
        if partitions.files is not None
        else "static"
    )
    return {
        "dataset": _tag_value(declaration.id),
        "host": _tag_value(".".join(declaration.hosts)),
        "license": _tag_value(declaration.license),
        "cadence": cadence,
    }


def _digest(payload: Any) -> str:
    return sha256_json(payload)[:12]


def partition_code_version(declaration: Declaration) -> str:
    """The code version of the partitioned assets: the pipeline and COG algorithm versions
    and every COG setting the declaration makes. Changing one marks the assets stale."""
    settings = {
        "cog": declaration.cog.versioned(),
        "variants": [v.cog.model_dump() if v.cog else None for v in declaration.variants],
        "values": {
            d.name: {v.value: v.cog.model_dump() for v in d.values if v.cog is not None}
            for d in declaration.partitions.static
        },
    }
    return f"pipeline-{PIPELINE_VERSION}.cog-{cog_lib.COG_ALGORITHM_VERSION}.{_digest(settings)}"


def collection_code_version(declaration: Declaration) -> str:
    """The code version of the collection: the pipeline version and the collection's fields."""
    fields = declaration.model_dump(
        include={
            "title",
            "description",
            "license",
            "providers",
            "keywords",
            "item_assets",
            "summaries",
            "summarize",
            "links",
            "extra_fields",
        }
    )
    return f"pipeline-{PIPELINE_VERSION}.{_digest(fields)}"


def _kinds(step: str, settings: Settings) -> set[str]:
    catalog = {"stac", "postgres"} if settings.catalog == "stac-api" else {"stac"}
    store = "s3" if settings.object_store == "s3" else "file"
    return {
        "raw": {"file"},
        "cog": {"cog"},
        "object": {"cog", store},
        "stac_item": catalog,
        "collection": catalog,
    }[step]


def _descriptions(declaration: Declaration, settings: Settings) -> dict[str, str]:
    where = f"`{settings.object_prefix}/{declaration.folder}/`" + (
        f" of the bucket `{settings.s3_bucket}`" if settings.object_store == "s3" else ""
    )
    steps = {
        "raw": "The source files of each partition, fetched into staging (streamed, checksummed).",
        "cog": "Cloud-Optimized GeoTIFFs converted from the sources and validated.",
        "object": f"The COGs, stored under {where}.",
        "stac_item": "The STAC items describing the COGs, validated and published; each "
        "partition links to its item (`item_url`).",
        "collection": "The STAC collection, its extent and summaries recomputed from the "
        "published items (not published while it has none).",
    }
    return {
        name: f"**{declaration.title}**: {text}\n\n{declaration.description}"
        for name, text in steps.items()
    }


CADENCE_CRON = {"yearly": "0 0 1 1 *", "monthly": "0 0 1 * *", "daily": "0 0 * * *"}


def newest_partition_keys(
    partitions_def: dg.PartitionsDefinition, current_time: datetime
) -> list[str]:
    """The newest period's partition keys at `current_time`: one, or one per static value."""
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        dimensions = partitions_def.partitions_defs
        [time_dim] = [
            d for d in dimensions if isinstance(d.partitions_def, dg.TimeWindowPartitionsDefinition)
        ]
        [other] = [d for d in dimensions if d is not time_dim]
        periods = time_dim.partitions_def.get_partition_keys(current_time=current_time)
        if not periods:
            return []
        period = periods[-1]
        return [
            str(dg.MultiPartitionKey({time_dim.name: period, other.name: value}))
            for value in other.partitions_def.get_partition_keys()
        ]
    return list(partitions_def.get_partition_keys(current_time=current_time))[-1:]


def newest_partition_schedule(
    declaration: Declaration, partitions_def: dg.PartitionsDefinition, job: Any
) -> dg.ScheduleDefinition | None:
    """A time-partitioned dataset that declares `schedule` (a cron), or whose series grows
    (at its cadence), gets a schedule requesting its newest period (a run per static value);
    off by default. A partition already processed is skipped as unchanged by the run."""
    time = declaration.partitions.time
    if time is None or not (declaration.schedule or declaration.grows):
        return None

    @dg.schedule(
        name=op_name(declaration.id, "schedule"),
        cron_schedule=declaration.schedule or CADENCE_CRON[time.cadence],
        execution_timezone="UTC",
        job=job,
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Materializes the newest period of {declaration.title}.",
    )
    def newest(context: dg.ScheduleEvaluationContext):
        now = context.scheduled_execution_time or datetime.now(UTC)
        keys = newest_partition_keys(partitions_def, now)
        if not keys:
            return dg.SkipReason(f"{declaration.id}: no period has started yet")
        tick = now.strftime("%Y-%m-%dT%H:%M")
        return [dg.RunRequest(run_key=f"{key}@{tick}", partition_key=key) for key in keys]

    return newest


def build_dataset(declaration: Declaration, settings: Settings | None = None) -> dg.Definitions:
    """Assets, checks, job, sensors and schedule of one dataset. `settings` (the embedded
    defaults when None) only says which kinds of store and catalog the assets show."""
    settings = settings or Settings()
    # Nothing outside the data root is read: a file:// URL, a mirror or a symlink leading out
    # fails the load, naming the field.
    check_local_sources(
        declaration, SourceLocations(settings.source_base_urls, settings.local_data_root)
    )
    batch_event_writes()
    keys = DatasetKeys(declaration.id)
    partitions_def = partitions_definition(declaration.id, declaration.partitions)
    # Dagster group names allow no `-`: the dataset id with `_` (op_name), as in job names.
    group = op_name(declaration.id, "dataset")
    descriptions = _descriptions(declaration, settings)
    tags = dataset_tags(declaration)
    metadata = {
        "dataset": declaration.id,
        "collection_id": declaration.id,
        "dataset_description": dg.MetadataValue.md(declaration.description),
    }
    code_version = partition_code_version(declaration)
    specs = []
    previous: dg.AssetKey | None = None
    for name in PARTITION_STEPS:
        specs.append(
            dg.AssetSpec(
                key=keys.step(name),
                deps=[previous] if previous else [],
                group_name=group,
                description=descriptions[name],
                kinds=_kinds(name, settings),
                owners=declaration.owners,
                tags=tags,
                code_version=code_version,
                metadata=metadata,
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
        die_with_run_worker(context)  # never publish for a run already marked failed
        services = services_for(object_store, catalog, sources)
        yield from materialize_partitions(
            context, declaration, partitions_def, services, sources.locations(), locks.locks()
        )

    @dg.asset(
        key=keys.collection,
        deps=[keys.step("stac_item")],
        group_name=group,
        kinds=_kinds("collection", settings),
        owners=declaration.owners,
        tags=tags,
        code_version=collection_code_version(declaration),
        metadata=metadata,
        automation_condition=collection_automation_condition(),
        description=descriptions["collection"],
        output_required=False,
        pool=collection_pool(declaration.id),
    )
    def collection(
        context: dg.AssetExecutionContext,
        catalog: CatalogResource,
        sources: SourcesResource,
        object_store: ObjectStoreResource,
    ) -> Iterator[dg.MaterializeResult]:
        die_with_run_worker(context)
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
                **_collection_previews(
                    declaration.id, publisher, content.items, object_store, catalog, sources
                ),
                **_status_metadata(context, declaration, partitions_def, sources, code_version),
            }
        )

    audit_def = audit_check(declaration, partitions_def)
    job = dg.define_asset_job(
        op_name(declaration.id, "job"),
        selection=dg.AssetSelection.assets(*keys.partitioned, keys.collection)
        - dg.AssetSelection.checks(audit_def),
        partitions_def=partitions_def,
        description=f"Materialize {declaration.title}: partitions, then the collection.",
        tags={DATASET_TAG: declaration.id},
    )
    sensors = []
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        sensors.append(files_discovery_sensor(declaration, partitions_def))
    elif reads_remote_sources(declaration):
        sensors.append(upstream_sensor(declaration, partitions_def, job))
    schedule = newest_partition_schedule(declaration, partitions_def, job)
    return dg.Definitions(
        assets=[partition_assets, collection],
        asset_checks=[audit_def],
        jobs=[job, adopt_job(declaration, partitions_def, code_version)],
        sensors=sensors,
        schedules=[schedule] if schedule is not None else [],
    )
