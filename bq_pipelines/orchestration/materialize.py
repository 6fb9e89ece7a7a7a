"""The partition step: a run's batch of partitions, each planned, then skipped if unchanged and
still published as recorded, else fetched, converted, stored and published. One failing
partition does not stop the others; the successes are recorded even when the step fails."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace

import dagster as dg

from bq_pipelines.datasets.adoption import ADOPTED, ADOPTED_OBJECTS, adopted_drift
from bq_pipelines.datasets.plans import SourceLocations, collection_for, plan_partition
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.errors import PipelineError
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
from bq_pipelines.lib.words import plural
from bq_pipelines.orchestration.checks import partition_check_results
from bq_pipelines.orchestration.keys import DatasetKeys, keys_by_dimension
from bq_pipelines.orchestration.outcomes import (
    MAX_LISTED_ITEMS,
    PartitionOutcome,
    Previous,
    latest_recorded,
    previous_materialization,
    result_outcome,
    skipped_outcome,
)
from bq_pipelines.orchestration.previews import partition_previews

logger = logging.getLogger(__name__)
# A run with this tag (`bq-pipelines materialize --force`, or the UI launchpad's tags) redoes
# every partition, unchanged or not.
FORCE_TAG = "bq/force"
TRUE_VALUES = ("1", "true", "yes", "on")


def forced(context: dg.AssetExecutionContext) -> bool:
    return context.run.tags.get(FORCE_TAG, "").strip().lower() in TRUE_VALUES


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
    outcomes, failures = _process_batch(
        context, declaration, partitions_def, services, locations, locks
    )
    yield from partition_check_results(keys, len(outcomes) + len(failures), failures, outcomes)
    if failures:
        _record_successes(context, outcomes)
        raise _batch_failure(declaration, len(context.partition_keys), outcomes, failures)
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


def _process_batch(
    context: dg.AssetExecutionContext,
    declaration: Declaration,
    partitions_def: dg.PartitionsDefinition,
    services: Services,
    locations: SourceLocations,
    locks: Locks,
) -> tuple[dict[str, PartitionOutcome], dict[str, BaseException]]:
    """(outcome of each partition processed, error of each that failed)."""
    keys = DatasetKeys(declaration.id)
    outcomes: dict[str, PartitionOutcome] = {}
    failures: dict[str, BaseException] = {}
    recorded = latest_recorded(context, keys.step("stac_item"), context.partition_keys)
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
    return outcomes, failures


def _batch_failure(
    declaration: Declaration,
    partitions: int,
    outcomes: Mapping[str, PartitionOutcome],
    failures: Mapping[str, BaseException],
) -> dg.Failure:
    return dg.Failure(
        description=(
            f"{declaration.id}: {len(failures)} of {plural(partitions, 'partition')} failed"
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


def _failure_reason(error: BaseException) -> str:
    if isinstance(error, PipelineError):
        return str(error)
    # An unexpected error: keep the last frames so the reason is actionable.
    frames = "".join(traceback.format_exception(error, limit=-3)).strip()
    return f"{type(error).__name__}: {error}\n{frames}"


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
        previous = (
            previous_materialization(context, keys.step("stac_item"), partition_key)
            if waited
            else recorded
        )
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
        skipped = _skipped_if_still_published(
            context, declaration, keys, partition_key, plans, services, previous
        )
        if skipped is not None:
            return skipped
    result = _publish(declaration, partition_key, plans, services)
    return _published_outcome(context, declaration, keys, partition_key, token, result, services)


def _skipped_if_still_published(
    context: dg.AssetExecutionContext,
    declaration: Declaration,
    keys: DatasetKeys,
    partition_key: str,
    plans: Sequence[ItemPlan],
    services: Services,
    previous: Previous,
) -> PartitionOutcome | None:
    """The skipped outcome of an unchanged partition whose items and objects are as published;
    None (with a warning saying what differs) when it must be processed again."""
    # Unchanged sources say nothing of what happened to the objects since: check each one (a
    # HEAD), so a deleted or overwritten object is put back, and a store that cannot be reached
    # fails the partition instead of letting it pass as skipped.
    drifts = (
        adopted_drift(plans, services, previous.value(ADOPTED_OBJECTS) or {})
        if previous.value(ADOPTED)
        else [str(d) for d in published_drift(plans, services)]
    )
    if not drifts:
        # The materialization says it (skipped, skip_reason); the batch's summary counts it.
        logger.info("%s [%s]: unchanged, skipped", declaration.id, partition_key)
        return skipped_outcome(context, keys, partition_key, previous, plans)
    listed = "; ".join(drifts[:MAX_LISTED_ITEMS])
    context.log.warning(
        f"{declaration.id} [{partition_key}]: sources unchanged but {len(drifts)} items "
        f"or objects are not as published ({listed}): processing it again"
    )
    return None


def _publish(
    declaration: Declaration, partition_key: str, plans: Sequence[ItemPlan], services: Services
) -> PartitionResult:
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
    return result


def _published_outcome(
    context: dg.AssetExecutionContext,
    declaration: Declaration,
    keys: DatasetKeys,
    partition_key: str,
    token: str,
    result: PartitionResult,
    services: Services,
) -> PartitionOutcome:
    first_item = result.items[0].item["id"]
    links = services.links  # http links for people when a browse server serves the files
    outcome = result_outcome(
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
