"""The ingestion API's requests as Dagster runs (the API itself is `bq_pipelines/api/`).

- `ingestion_api/stac_item`: an asset whose run processes one stored request (its id in the
  run config) through the dataset pipeline's library steps; re-execute a run from the UI to
  process its request again.
- `ingestion_api_sensor`: one run per accepted request, the request id as the run key, so a
  request is run once however often the API, the daemon or the machine restart (Dagster skips a
  run key it already has a run for; the store keeps the requests).
- `ingestion_api_failure_sensor`: a run that died without recording its outcome (killed,
  failed to start) fails its request, so no status stays "running" forever.
"""

# No `from __future__ import annotations`: Dagster reads the asset's and sensors' parameter
# annotations (config, resources) at definition time.
import contextlib
import dataclasses
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
from pydantic import Field

from bq_pipelines.api.models import NewItem
from bq_pipelines.api.processing import geotiff_check, process_request
from bq_pipelines.api.store import RequestStore
from bq_pipelines.api.url_policy import SourcePolicy
from bq_pipelines.declarations import Declaration
from bq_pipelines.keys import COG_VALID_CHECK, ITEM_VALID_CHECK
from bq_pipelines.lib.errors import CogError, PipelineError, StacValidationError
from bq_pipelines.lib.sources import FetchLimits
from bq_pipelines.resources import (
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
COLLECTION_TAG = "bq/collection"
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


def run_config(request_id: str) -> dg.RunConfig:
    return dg.RunConfig(ops={OP_NAME: IngestionRequest(request_id=request_id)})


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
    declared = {declaration.id: declaration for declaration in declarations}

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
        request_id, run_id = config.request_id, context.run_id
        with ingestion_api.store() as store:
            stored = store.start(request_id, run_id)
            if stored is None:
                raise dg.Failure(f"request {request_id}: not in the ingestion API's store")
            body = NewItem.model_validate(stored.request)
            services = dataclasses.replace(
                services_for(object_store, catalog, sources),
                fetch_limits=ingestion_api.fetch_limits(),
            )

            def report(operation: str, step: str, detail: str) -> None:
                store.progress(request_id, run_id, operation, step, detail)
                context.log.info(f"{operation}: {detail}")

            try:
                outcome = process_request(
                    request_id, body, services, declared, report, store.exclusive
                )
            except BaseException as error:  # interrupts too: the status must not stay running
                reason = _reason(error)
                store.fail(request_id, run_id, reason)
                if not isinstance(error, Exception):
                    raise
                failure: Exception | None = error
            else:
                failure = None
                store.finish(request_id, run_id, outcome.item_url, outcome.history)
        yield from _checks(failure)
        if failure is not None:
            raise dg.Failure(
                description=f"request {request_id} ({body.collection_id}/{body.name}): "
                f"{_reason(failure, frames=True)}",
                metadata={"request_id": request_id, "source": body.source_url},
            ) from failure
        result = outcome.item
        yield dg.MaterializeResult(
            metadata={
                "request_id": request_id,
                "collection_id": body.collection_id,
                "item_id": body.name,
                "item_url": dg.MetadataValue.url(outcome.item_url),
                "href": dg.MetadataValue.url(result.stored.href),
                "source": body.source_url,
                "bytes": result.cog.size,
                "crs": result.cog.crs,
                "profile": result.cog.profile,
                "outcome": result.outcome,
                "extent_updated": outcome.extent_updated,
                "item": dg.MetadataValue.json(result.item),
            }
        )

    job = dg.define_asset_job(
        JOB_NAME,
        selection=dg.AssetSelection.assets(ASSET_KEY),
        description="Process one ingestion API request (its id in the run config).",
        # One step: a step subprocess would only load the code location a second time (~2 s
        # of CPU per request).
        executor_def=dg.in_process_executor,
    )

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
        with ingestion_api.store() as store:
            waiting = store.pending(MAX_RUNS_PER_TICK)
        if not waiting:
            return dg.SkipReason("no accepted request waits for a run")
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=request.id,
                    run_config=run_config(request.id),
                    tags={REQUEST_TAG: request.id, COLLECTION_TAG: request.collection_id},
                )
                for request in waiting
            ]
        )

    @dg.run_failure_sensor(
        name="ingestion_api_failure_sensor",
        monitored_jobs=[job],
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        description="Fails the request of a run that ended without recording its outcome.",
    )
    def record_failed_runs(
        context: dg.RunFailureSensorContext, ingestion_api: IngestionApiResource
    ) -> None:
        run = context.dagster_run
        request_id = run.tags.get(REQUEST_TAG) or _config_request_id(run.run_config)
        if not request_id:
            return
        message = context.failure_event.message or "the run failed"
        with ingestion_api.store() as store:
            if store.fail_unfinished(request_id, run.run_id, f"run {run.run_id}: {message}"):
                context.log.info(f"request {request_id}: failed with its run {run.run_id}")

    return dg.Definitions(
        assets=[ingestion_item],
        jobs=[job],
        sensors=[pick_up_requests, record_failed_runs],
        resources={"ingestion_api": ingestion_resource(settings)},
    )


def _config_request_id(config: Mapping[str, Any]) -> str | None:
    """The request id of a run launched by hand (no tag): from its run config."""
    op = (config.get("ops") or {}).get(OP_NAME) or {}
    value = (op.get("config") or {}).get("request_id")
    return value if isinstance(value, str) else None
