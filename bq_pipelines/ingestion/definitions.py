"""The ingestion API's requests as Dagster runs (the API itself is `bq_pipelines/ingestion/`).

- `ingestion_api/stac_item`: an asset whose run processes one stored request (its id in the
  run config) through the dataset pipeline's library steps; re-execute a run from the UI to
  process its request again.
- `ingestion_api_sensor`: one run per accepted request and attempt (run key: the request id,
  then `<id>/attempt-<n>`), so a request is run once however often the API, the daemon or the
  machine restart (Dagster skips a run key it already has a run for; the store keeps the
  requests). On each tick it also settles the attempts whose run ended without recording an
  outcome (it never started, its worker was killed, monitoring failed it): the request gets a
  new attempt, or fails once MAX_ATTEMPTS are spent. A run still holding the request's lock is
  never given up, and a run of an attempt that is no longer the request's does nothing.
"""

# No `from __future__ import annotations`: Dagster reads the asset's and sensors' parameter
# annotations (config, resources) at definition time.
import contextlib
import dataclasses
import traceback
from collections.abc import Callable, Iterator, Mapping

import dagster as dg
from pydantic import Field

from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.ingestion.models import NewItem
from bq_pipelines.ingestion.processing import ProcessedRequest, geotiff_check, process_request
from bq_pipelines.ingestion.store import RequestStore, StoredRequest
from bq_pipelines.lib.errors import CogError, PipelineError, StacValidationError
from bq_pipelines.lib.pipeline import Services
from bq_pipelines.lib.sources import FetchLimits
from bq_pipelines.lib.url_policy import SourcePolicy
from bq_pipelines.orchestration.keys import COG_VALID_CHECK, ITEM_VALID_CHECK
from bq_pipelines.orchestration.resources import (
    CatalogResource,
    ObjectStoreResource,
    SourcesResource,
    services_for,
)
from bq_pipelines.settings import API_DATABASE_ENV, ApiSettings

ASSET_KEY = dg.AssetKey(["ingestion_api", "stac_item"])
OP_NAME = "ingestion_api__stac_item"
JOB_NAME = "ingestion_api_job"
SENSOR_NAME = "ingestion_api_sensor"
REQUEST_TAG = "bq/ingestion_request"
ATTEMPT_TAG = "bq/ingestion_attempt"
COLLECTION_TAG = "bq/collection"
# Retries are ours (a new attempt, under the request's lock), never Dagster's run retries, which
# would start a second run of the same attempt.
NO_RUN_RETRIES = {"dagster/max_retries": "0"}
MAX_REASON_LENGTH = 1000
# Dagster checks each requested run key against its runs, one query per key: a bounded window
# of the oldest waiting requests per tick keeps a tick short however long the queue.
MAX_RUNS_PER_TICK = 100
SENSOR_INTERVAL_SECONDS = 5


class IngestionApiResource(dg.ConfigurableResource):
    """The request store and the limits on fetching what requests name."""

    database_url: str  # EnvVar(BQ_API_DATABASE_URL) when set: it may carry a password
    allowed_sources: list[str] = []
    max_download_bytes: int
    download_timeout_seconds: float
    max_pixels: int

    @contextlib.contextmanager
    def store(self) -> Iterator[RequestStore]:
        with RequestStore(self.database_url) as store:
            yield store

    def fetch_limits(self) -> FetchLimits:
        return FetchLimits(
            guard=SourcePolicy(self.allowed_sources),
            max_bytes=self.max_download_bytes,
            max_seconds=self.download_timeout_seconds,
            check_file=geotiff_check,
            max_pixels=self.max_pixels,
            settings_prefix="BQ_API_",
        )


def ingestion_resource(settings: ApiSettings) -> IngestionApiResource:
    database_url = settings.database_url
    return IngestionApiResource(
        database_url=dg.EnvVar(API_DATABASE_ENV) if settings.database_from_env else database_url,
        allowed_sources=list(settings.allowed_sources),
        max_download_bytes=settings.max_download_bytes,
        download_timeout_seconds=settings.download_timeout_seconds,
        max_pixels=settings.max_pixels,
    )


class IngestionRequest(dg.Config):
    request_id: str = Field(description="the id POST /newitem answered")
    attempt: int | None = Field(
        default=None,
        description="the attempt this run is for (the sensor's runs); a run without one, or a "
        "re-execution, processes the request again whatever its state",
    )


def run_config(request_id: str, attempt: int | None = None) -> dg.RunConfig:
    return dg.RunConfig(ops={OP_NAME: IngestionRequest(request_id=request_id, attempt=attempt)})


def run_key(request_id: str, attempt: int) -> str:
    """The first attempt's run key is the request id, as before attempts existed."""
    return request_id if attempt == 1 else f"{request_id}/attempt-{attempt}"


def run_request(request: StoredRequest) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=run_key(request.id, request.attempt),
        run_config=run_config(request.id, request.attempt),
        tags={
            REQUEST_TAG: request.id,
            ATTEMPT_TAG: str(request.attempt),
            COLLECTION_TAG: request.collection_id,
            **NO_RUN_RETRIES,
        },
    )


def attempt_of(run: dg.DagsterRun) -> int | None:
    """The attempt a run of the sensor is for (runs from before attempts: the first); None for
    a re-execution or a run launched by hand."""
    if run.parent_run_id is not None or REQUEST_TAG not in run.tags:
        return None
    return int(run.tags.get(ATTEMPT_TAG, "1"))


def _run_end(instance: dg.DagsterInstance, run: dg.DagsterRun | None, run_id: str) -> str:
    """Why a run ended without an outcome, in its own words when it left some."""
    if run is None:
        return f"run {run_id} is no longer in Dagster"
    records = instance.get_records_for_run(
        run_id=run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE
    ).records
    event = records[-1].event_log_entry.dagster_event if records else None
    message = (event.message if event else None) or f"ended {run.status.value}"
    return f"run {run.run_id}: {message}"[:MAX_REASON_LENGTH]


def _ended_attempts(
    instance: dg.DagsterInstance, waiting: list[StoredRequest], started: list[StoredRequest]
) -> list[tuple[StoredRequest, dg.DagsterRun | None, str]]:
    """Requests whose current run is over although they are not: (request, run, run id)."""
    ended: list[tuple[StoredRequest, dg.DagsterRun | None, str]] = []
    current = _runs_by_id(instance, [str(r.run_id) for r in started])
    for request in started:
        run = current.get(str(request.run_id))
        if run is None or run.is_finished:
            ended.append((request, run, str(request.run_id)))
    launched = _attempt_runs(instance, waiting)
    for request in waiting:
        run = launched.get(request.id)
        if run is not None and run.is_finished:
            ended.append((request, run, run.run_id))
    return ended


def _runs_by_id(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, dg.DagsterRun]:
    if not run_ids:
        return {}
    return {run.run_id: run for run in instance.get_runs(filters=dg.RunsFilter(run_ids=run_ids))}


def _attempt_runs(
    instance: dg.DagsterInstance, waiting: list[StoredRequest]
) -> dict[str, dg.DagsterRun]:
    """The sensor's run of each waiting request's current attempt, by request id."""
    if not waiting:
        return {}
    attempts = {r.id: r.attempt for r in waiting}
    runs = instance.get_runs(filters=dg.RunsFilter(tags={REQUEST_TAG: list(attempts)}))
    return {
        run.tags[REQUEST_TAG]: run
        for run in runs
        if attempt_of(run) is not None and attempt_of(run) == attempts[run.tags[REQUEST_TAG]]
    }


def _reason(error: BaseException, frames: bool = False) -> str:
    """What went wrong; the last frames too (for the run's log) when it was unexpected."""
    if isinstance(error, PipelineError):
        return str(error)
    text = f"{type(error).__name__}: {error}"
    if frames:
        text += "\n" + "".join(traceback.format_exception(error, limit=-3)).strip()
    return text


def _checks(error: BaseException | None) -> Iterator[dg.AssetCheckResult]:
    for name, kind in ((COG_VALID_CHECK, CogError), (ITEM_VALID_CHECK, StacValidationError)):
        failed = isinstance(error, kind)
        yield dg.AssetCheckResult(
            check_name=name,
            passed=not failed,
            metadata={"error": str(error) if failed else ""},
        )


def ingestion_definitions(declarations: list[Declaration], settings: ApiSettings) -> dg.Definitions:
    """The asset, its job and sensors, and the `ingestion_api` resource."""
    job = ingestion_job()
    return dg.Definitions(
        assets=[ingestion_asset({declaration.id: declaration for declaration in declarations})],
        jobs=[job],
        sensors=[requests_sensor(job)],
        resources={"ingestion_api": ingestion_resource(settings)},
    )


def ingestion_asset(declared: Mapping[str, Declaration]) -> dg.AssetsDefinition:
    """`ingestion_api/stac_item`: a run processes the request named in its config."""

    @dg.asset(
        key=ASSET_KEY,
        group_name="ingestion_api",
        kinds={"stac", "cog"},
        description=(
            "One raster sent to the ingestion API (POST /newitem): fetched within the API's "
            "limits, converted to a validated COG (the collection's declared profile, else raw), "
            "stored, described by a validated item, published; the collection's extent grown."
        ),
        check_specs=[
            dg.AssetCheckSpec(COG_VALID_CHECK, asset=ASSET_KEY, blocking=True),
            dg.AssetCheckSpec(ITEM_VALID_CHECK, asset=ASSET_KEY, blocking=True),
        ],
    )
    def ingestion_item(
        context: dg.AssetExecutionContext,
        config: IngestionRequest,
        ingestion_api: IngestionApiResource,
        object_store: ObjectStoreResource,
        catalog: CatalogResource,
        sources: SourcesResource,
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        def services() -> Services:
            return dataclasses.replace(
                services_for(object_store, catalog, sources),
                fetch_limits=ingestion_api.fetch_limits(),
            )

        request_id = config.request_id
        # A re-execution processes the request again, whatever its state (the UI's way).
        attempt = None if context.run.parent_run_id else config.attempt
        body, processed, failure = _process(
            context, request_id, attempt, ingestion_api, services, declared
        )
        yield from _checks(failure)
        if failure is not None:
            raise dg.Failure(
                description=f"request {request_id} ({body.collection_id}/{body.name}): "
                f"{_reason(failure, frames=True)}",
                metadata={"request_id": request_id, "source": body.source_url},
            ) from failure
        assert processed is not None  # no failure
        yield _materialization(request_id, body, processed)

    return ingestion_item


def _process(
    context: dg.AssetExecutionContext,
    request_id: str,
    attempt: int | None,
    ingestion_api: IngestionApiResource,
    services: Callable[[], Services],
    declared: Mapping[str, Declaration],
) -> tuple[NewItem, ProcessedRequest | None, Exception | None]:
    """Start the request's attempt in the store, process it, record its outcome: (the request,
    what was published, or the error that failed it)."""
    run_id = context.run_id

    def waiting(name: str) -> None:
        context.log.info(f"request {request_id}: waiting for another run processing it")

    # An interrupt (the run canceled, or the machine shutting down) records nothing: the
    # sensor then fails the request of a canceled run and retries the others.
    with ingestion_api.store() as store, store.processing(request_id, waiting):
        if not store.start(request_id, run_id, attempt):
            raise dg.Failure(_not_started(store.get(request_id), request_id, attempt))
        stored = store.get(request_id)
        assert stored is not None  # started just now
        body = NewItem.model_validate(stored.request)
        built = services()

        def report(operation: str, step: str, detail: str) -> None:
            store.progress(request_id, run_id, operation, step, detail)
            context.log.info(f"{operation}: {detail}")

        try:
            processed = process_request(request_id, body, built, declared, report, store.exclusive)
        except Exception as error:
            store.fail(request_id, run_id, _reason(error))
            return body, None, error
        store.finish(request_id, run_id, processed.item_url, processed.history)
        return body, processed, None


def _materialization(
    request_id: str, body: NewItem, processed: ProcessedRequest
) -> dg.MaterializeResult:
    result = processed.item
    return dg.MaterializeResult(
        metadata={
            "request_id": request_id,
            "collection_id": body.collection_id,
            "item_id": body.name,
            "item_url": dg.MetadataValue.url(processed.item_url),
            "href": dg.MetadataValue.url(result.stored.href),
            "source": body.source_url,
            "bytes": result.cog.size,
            "crs": result.cog.crs,
            "profile": result.cog.profile,
            "outcome": result.outcome,
            "extent_updated": processed.extent_updated,
            "item": dg.MetadataValue.json(result.item),
        }
    )


def ingestion_job() -> "dg.UnresolvedAssetJobDefinition":  # quoted: for type checkers only
    return dg.define_asset_job(
        JOB_NAME,
        selection=dg.AssetSelection.assets(ASSET_KEY),
        description="Process one ingestion API request (its id in the run config).",
        # One step: a step subprocess would only load the code location a second time (~2 s
        # of CPU per request).
        executor_def=dg.in_process_executor,
    )


def requests_sensor(job: "dg.UnresolvedAssetJobDefinition") -> dg.SensorDefinition:
    """One run per request waiting for one; settles the attempts whose run ended silently."""

    @dg.sensor(
        name=SENSOR_NAME,
        job=job,
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Starts one run per request the ingestion API accepted (run key: its id).",
    )
    def pick_up_requests(
        context: dg.SensorEvaluationContext, ingestion_api: IngestionApiResource
    ) -> dg.SensorResult | dg.SkipReason:
        # The instance only when a request waits or runs: a tick's context opens a new one (its
        # storages, checked against their migrations), ~0.03 s of the code server's CPU every
        # 5 s while the API is idle.
        with ingestion_api.store() as store:
            _settle_ended_attempts(context, store)
            waiting = store.pending(MAX_RUNS_PER_TICK)
        launched = _attempt_runs(context.instance, waiting) if waiting else {}
        new = [run_request(request) for request in waiting if request.id not in launched]
        if not new:
            return dg.SkipReason(f"no request waits for a run ({len(waiting)} runs requested)")
        return dg.SensorResult(run_requests=new)

    return pick_up_requests


def _settle_ended_attempts(context: dg.SensorEvaluationContext, store: RequestStore) -> None:
    waiting, running = store.pending(MAX_RUNS_PER_TICK), store.running(MAX_RUNS_PER_TICK)
    if not waiting and not running:
        return
    instance = context.instance
    ended = _ended_attempts(instance, waiting, running)
    for request, run, run_id in ended:
        outcome = settle(store, request, run, run_id, _run_end(instance, run, run_id))
        if outcome:
            context.log.info(f"request {request.id}: {outcome}")


def settle(
    store: RequestStore,
    request: StoredRequest,
    run: dg.DagsterRun | None,
    run_id: str,
    reason: str,
) -> str | None:
    """A request's current run ended without an outcome: a new attempt, or the request fails
    (a canceled run, or the last attempt). Nothing while a process still holds the request
    (its run is not over, whatever Dagster says). What was done, if anything."""
    with store.try_processing(request.id) as free:
        if not free:
            return None
        if run is not None and run.status == dg.DagsterRunStatus.CANCELED:
            changed = store.give_up(request, run_id, f"{reason} (canceled: not retried)")
            return f"failed: its run {run_id} was canceled" if changed else None
        if not store.retry(request, run_id, reason):
            return None
    return f"attempt {request.attempt} ended without an outcome ({reason})"


def _not_started(stored: StoredRequest | None, request_id: str, attempt: int | None) -> str:
    if stored is None:
        return f"request {request_id}: not in the ingestion API's store"
    return (
        f"request {request_id}: not processed by this run of attempt {attempt}: the request is "
        f"{stored.state} at attempt {stored.attempt} (run {stored.run_id}); nothing was done"
    )
