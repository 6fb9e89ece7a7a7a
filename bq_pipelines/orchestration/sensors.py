"""Automation of the dataset assets: new upstream partitions are run, collections kept current.

- `upstream_sensor`: for a dataset read from remote hosts, requests a run for each partition never
  materialized whose source files the host now serves (checked with HEAD, nothing downloaded).
- `collection_automation_condition` + `automation_sensor`: a dataset's collection is rebuilt
  after any run that materialized partitions of its items.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence

import dagster as dg

from bq_pipelines.datasets.plans import plan_partition
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib import sources as source_files
from bq_pipelines.lib.errors import PipelineError, SourceError
from bq_pipelines.lib.pipeline import ItemPlan, fingerprint
from bq_pipelines.lib.retry import RetryPolicy
from bq_pipelines.orchestration.keys import DATASET_TAG, DatasetKeys, keys_by_dimension, op_name
from bq_pipelines.orchestration.resources import SourcesResource

UPSTREAM_SENSOR_INTERVAL_SECONDS = 3600
MAX_PARTITIONS_PER_TICK = 20
PROBE_TIMEOUT_SECONDS = 10.0
# Dagster abandons a sensor evaluation after 60 s: stop probing well before, the cursor resumes.
TICK_BUDGET_SECONDS = 40.0
# One attempt per tick: the next tick is the retry, sleeping inside a tick only eats its budget.
SINGLE_ATTEMPT = RetryPolicy(attempts=1)
# SourceError reasons meaning "the host does not serve this file (yet)", per scheme
# (HTTP, S3/FTP, local file); see lib/sources.
AUTOMATION_SENSOR_NAME = "collections_automation_sensor"
# DatasetKeys names every collection `<dataset id>/collection`.
COLLECTION_SELECTION = 'key:"*/collection"'


# --------------------------------------------------------------------------- upstream partitions


def reads_remote_sources(declaration: Declaration) -> bool:
    """Whether any partition of the dataset reads a file from a remote host (not `local`)."""
    declared = [declaration.source, *declaration.sources]
    declared += [v.source for v in declaration.variants if v.source is not None]
    return any(source.local is None for source in declared)


def is_not_published(error: SourceError) -> bool:
    return error.not_found


def upstream_fingerprint(
    plans: Sequence[ItemPlan],
    *,
    timeout: float = PROBE_TIMEOUT_SECONDS,
    s3_endpoint_url: str | None = None,
) -> str | None:
    """The partition's fingerprint (as its materialization records it) when the host serves
    every source file, None when one is not published yet. Only HEAD/stat: nothing is fetched.

    Other failures (5xx, timeouts, permissions) raise SourceError.
    """
    urls = list(dict.fromkeys(s.url for p in plans for s in p.sources))
    found = []
    for url in urls:
        try:
            found.append(
                source_files.probe(
                    url, retry=SINGLE_ATTEMPT, timeout=timeout, s3_endpoint_url=s3_endpoint_url
                )
            )
        except SourceError as error:
            if is_not_published(error):
                return None
            raise
    return fingerprint(plans, [f.token() for f in found])


def _plan(
    declaration: Declaration,
    partitions_def: dg.PartitionsDefinition,
    partition_key: str,
    sources: SourcesResource,
) -> list[ItemPlan]:
    return plan_partition(
        declaration,
        keys_by_dimension(declaration, partitions_def, partition_key),
        sources.locations(),
    )


def newest_first(partitions_def: dg.PartitionsDefinition) -> list[str]:
    """Every partition key, the newest period first; static values in declared order."""
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):
        return list(partitions_def.get_partition_keys())[::-1]
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        dimensions = partitions_def.partitions_defs
        time_dims = [
            d for d in dimensions if isinstance(d.partitions_def, dg.TimeWindowPartitionsDefinition)
        ]
        if time_dims:
            [time_dim] = time_dims
            [other] = [d for d in dimensions if d is not time_dim]
            return [
                str(dg.MultiPartitionKey({time_dim.name: period, other.name: value}))
                for period in time_dim.partitions_def.get_partition_keys()[::-1]
                for value in other.partitions_def.get_partition_keys()
            ]
    return list(partitions_def.get_partition_keys())


def walk_from(candidates: Sequence[str], order: Sequence[str], after: str | None) -> list[str]:
    """`candidates` (a subsequence of `order`) as a ring starting just after the key `after`."""
    position = {key: index for index, key in enumerate(order)}
    if after is None or after not in position:
        return list(candidates)
    start = position[after]
    later = [key for key in candidates if position[key] > start]
    return later + [key for key in candidates if position[key] <= start]


def _read_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        last_checked = json.loads(cursor).get("last_checked")
        return None if last_checked is None else str(last_checked)
    except (ValueError, AttributeError):
        return None  # an unreadable cursor restarts the walk from the newest partition


def upstream_sensor(
    declaration: Declaration,
    partitions_def: dg.PartitionsDefinition,
    job_def_or_name: dg.UnresolvedAssetJobDefinition | dg.JobDefinition | str,
    *,
    max_partitions_per_tick: int = MAX_PARTITIONS_PER_TICK,
    minimum_interval_seconds: int = UPSTREAM_SENSOR_INTERVAL_SECONDS,
    tick_budget_seconds: float = TICK_BUDGET_SECONDS,
) -> dg.SensorDefinition:
    """Requests a run of each partition of `<id>/stac_item` never materialized whose source files
    are now published upstream. Off by default.

    Each tick checks at most `max_partitions_per_tick` such partitions, newest first, and the
    cursor resumes after the last one checked: successive ticks walk through every candidate.
    A 404 means "not published yet" and is retried on a later tick; other errors are logged.
    The run key carries the partition's fingerprint (sources + settings), so Dagster requests a
    partition once per upstream version: one whose run failed is requested again only when the
    host replaces its files (else re-execute it from the UI).
    """
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        raise ValueError(
            f"{declaration.id}: files partitions are found by the files sensor, not upstream"
        )
    if not reads_remote_sources(declaration):
        raise ValueError(f"{declaration.id}: every source is local; there is no upstream to watch")
    keys = DatasetKeys(declaration.id)
    job_name = job_def_or_name if isinstance(job_def_or_name, str) else None
    job = None if isinstance(job_def_or_name, str) else job_def_or_name

    @dg.sensor(
        name=op_name(declaration.id, "upstream_sensor"),
        job_name=job_name,
        job=job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=(
            f"Runs new partitions of {declaration.title} once the source host publishes their "
            f"files (HEAD requests, at most {max_partitions_per_tick} partitions a tick)."
        ),
    )
    def upstream(context: dg.SensorEvaluationContext, sources: SourcesResource) -> dg.SensorResult:
        order = newest_first(partitions_def)
        done = context.instance.get_materialized_partitions(keys.step("stac_item"))
        candidates = [key for key in order if key not in done]
        if not candidates:
            return dg.SensorResult(skip_reason=f"all {len(order)} partitions are materialized")
        walk = walk_from(candidates, order, _read_cursor(context.cursor))
        checked, requests = _check_walk(
            context,
            declaration,
            walk[:max_partitions_per_tick],
            functools.partial(_plan, declaration, partitions_def, sources=sources),
            sources.s3_endpoint_url,
            tick_budget_seconds,
        )
        cursor = json.dumps({"last_checked": checked[-1]}) if checked else context.cursor
        summary = (
            f"{declaration.id}: {len(requests)} of {len(checked)} partitions checked are "
            f"published upstream ({len(candidates)} not materialized)"
        )
        context.log.info(summary)
        if not requests:
            return dg.SensorResult(skip_reason=summary, cursor=cursor)
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return upstream


def _check_walk(
    context: dg.SensorEvaluationContext,
    declaration: Declaration,
    walk: Sequence[str],
    plan_of: Callable[[str], list[ItemPlan]],
    s3_endpoint_url: str | None,
    budget_seconds: float,
) -> tuple[list[str], list[dg.RunRequest]]:
    """The partitions of `walk` checked within the tick's budget (at least one), and a run
    request for each one its host now publishes."""
    keys = DatasetKeys(declaration.id)
    deadline = time.monotonic() + budget_seconds
    checked: list[str] = []
    requests: list[dg.RunRequest] = []
    for partition_key in walk:
        if checked and time.monotonic() > deadline:
            context.log.info(f"{declaration.id}: tick budget spent, next tick resumes here")
            break
        checked.append(partition_key)
        token = _check_partition(
            context,
            f"{declaration.id} [{partition_key}]",
            functools.partial(plan_of, partition_key),
            s3_endpoint_url,
        )
        if token is not None:
            requests.append(
                dg.RunRequest(
                    run_key=f"{partition_key}@{token[:16]}",
                    partition_key=partition_key,
                    asset_selection=keys.partitioned,
                    tags={DATASET_TAG: declaration.id},
                )
            )
    return checked, requests


def _check_partition(
    context: dg.SensorEvaluationContext,
    label: str,
    plans: Callable[[], list[ItemPlan]],
    s3_endpoint_url: str | None,
) -> str | None:
    """The partition's fingerprint if published upstream; None (and why, in the log) if not."""
    try:
        token = upstream_fingerprint(plans(), s3_endpoint_url=s3_endpoint_url)
    except PipelineError as error:
        context.log.warning(f"{label}: cannot check upstream, skipped until a later tick: {error}")
        return None
    if token is None:
        context.log.debug(f"{label}: not published upstream yet")
    return token


# --------------------------------------------------------------------------- collections


def collection_automation_condition() -> dg.AutomationCondition:
    """Rebuild the collection once after runs that materialized item partitions.

    `eager()` without its missing-dependency guards: a growing or partly published series always
    has missing item partitions, and with them `eager()` never refreshes the collection; nor is an
    empty collection built before the first item. It waits while item partitions are in progress
    (a backfill counts until its last run ends), so a backfill is followed by one refresh, not one
    per run; a run that rebuilt the collection itself (the dataset's job) does not trigger another.
    """
    return (
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("items published since the last refresh")


def automation_sensor() -> dg.AutomationConditionSensorDefinition:
    """Evaluates the collections' automation conditions; one per code location, on by default.

    Dagster adds a `default_automation_condition_sensor` for assets with a condition that no
    sensor targets, but it starts stopped: an explicit sensor makes the behaviour visible in code.
    """
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR_NAME,
        target=dg.AssetSelection.from_string(COLLECTION_SELECTION),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Rebuilds each dataset's STAC collection after runs that published items.",
    )
