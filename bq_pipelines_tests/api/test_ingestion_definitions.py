"""The ingestion API's Dagster definitions in the code location, and its sensor evaluated against
a real request store (SQLite) and Dagster instance: one run per request and attempt, attempts
whose run ended without an outcome retried, then given up, never while the request is held.
(The same with real processes killed: test_api_exactly_once.py.)"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from bq_pipelines.definitions import defs
from bq_pipelines.ingestion.definitions import (
    ASSET_KEY,
    ATTEMPT_TAG,
    COLLECTION_TAG,
    JOB_NAME,
    OP_NAME,
    REQUEST_TAG,
    SENSOR_NAME,
    IngestionApiResource,
    run_config,
)
from bq_pipelines.ingestion.store import MAX_ATTEMPTS, RequestStore
from bq_pipelines_testkit.values import run_requests, sensor_result


@pytest.fixture(scope="module")
def definitions() -> dg.Definitions:
    return defs()


@pytest.fixture
def resource(tmp_path: Path) -> IngestionApiResource:
    return IngestionApiResource(
        database_url=f"sqlite:///{tmp_path / 'requests.sqlite'}",
        max_download_bytes=1000,
        download_timeout_seconds=10,
        max_pixels=1000,
    )


def add_request(store: RequestStore, name: str) -> str:
    body = {"collection_id": "c", "date": "2018-01-01", "name": name, "properties": {}}
    request_id, _ = store.add(body, collection_id="c", item_id=name)
    return request_id


def test_the_code_location_has_the_asset_job_and_running_sensors(definitions: dg.Definitions):
    assert ASSET_KEY in definitions.resolve_all_asset_keys()
    job = definitions.resolve_job_def(JOB_NAME)
    assert [node.name for node in job.graph.nodes] == [OP_NAME]
    assert definitions.sensors is not None and definitions.resources is not None
    sensors = {sensor.name: sensor.default_status for sensor in definitions.sensors}
    assert sensors[SENSOR_NAME] == dg.DefaultSensorStatus.RUNNING
    assert "ingestion_api" in definitions.resources


def sensor_run(instance: dg.DagsterInstance, job: dg.JobDefinition, request: dg.RunRequest):
    """The run the daemon would create for the sensor's run request."""
    return instance.create_run_for_job(
        job_def=job,
        run_config=request.run_config,
        tags={**request.tags, "dagster/run_key": str(request.run_key)},
    )


def evaluate(
    definitions: dg.Definitions, instance: dg.DagsterInstance, resource: IngestionApiResource
) -> list[dg.RunRequest]:
    sensor = definitions.resolve_sensor_def(SENSOR_NAME)
    context = dg.build_sensor_context(instance=instance, resources={"ingestion_api": resource})
    result = sensor_result(sensor, context)
    return [] if isinstance(result, dg.SkipReason) else list(run_requests(result))


def test_the_sensor_requests_one_run_per_accepted_request_keyed_by_its_id(
    definitions: dg.Definitions, resource: IngestionApiResource
):
    instance = dg.DagsterInstance.ephemeral()
    job = definitions.resolve_job_def(JOB_NAME)
    with resource.store() as store:
        first, second = add_request(store, "a"), add_request(store, "b")
        started = add_request(store, "c")
        [started_request] = [
            r for r in evaluate(definitions, instance, resource) if r.run_key == started
        ]
        run = sensor_run(instance, job, started_request)
        assert store.start(started, run.run_id, 1)

    requests = evaluate(definitions, instance, resource)

    assert [r.run_key for r in requests] == [first, second]  # oldest first
    [request] = [r for r in requests if r.run_key == first]
    assert request.tags == {
        REQUEST_TAG: first,
        ATTEMPT_TAG: "1",
        COLLECTION_TAG: "c",
        "dagster/max_retries": "0",
    }
    # Dagster leaves RunConfig.to_config_dict unannotated.
    expected = run_config(first, 1).to_config_dict()  # type: ignore[no-untyped-call]
    assert request.run_config == expected
    # Once their runs exist, nothing more is requested for them.
    for request in requests:
        sensor_run(instance, job, request)
    assert evaluate(definitions, instance, resource) == []


def test_the_sensor_skips_when_nothing_waits(definitions, resource):
    sensor = definitions.resolve_sensor_def(SENSOR_NAME)
    context = dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(), resources={"ingestion_api": resource}
    )
    assert isinstance(sensor(context), dg.SkipReason)


def test_an_idle_tick_opens_no_instance(definitions, resource):
    # Under the daemon each tick's context opens an instance of its own when asked for one:
    # with no request waiting or running, nothing asks (a context without one would raise).
    sensor = definitions.resolve_sensor_def(SENSOR_NAME)
    context = dg.build_sensor_context(resources={"ingestion_api": resource})
    assert isinstance(sensor(context), dg.SkipReason)
    with resource.store() as store:
        add_request(store, "a")
    with pytest.raises(dg.DagsterInvariantViolationError):
        sensor(dg.build_sensor_context(resources={"ingestion_api": resource}))


def test_a_run_that_ended_without_an_outcome_is_retried_then_given_up(
    definitions: dg.Definitions, resource: IngestionApiResource
):
    instance = dg.DagsterInstance.ephemeral()
    job = definitions.resolve_job_def(JOB_NAME)
    with resource.store() as store:
        request_id = add_request(store, "a")
    keys, runs = [], []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        [request] = evaluate(definitions, instance, resource)
        keys.append(request.run_key)
        run = sensor_run(instance, job, request)
        runs.append(run.run_id)
        if attempt == 2:  # this one started processing before its worker died
            with resource.store() as store:
                assert store.start(request_id, run.run_id, attempt)
        instance.report_run_failed(run, f"worker {attempt} disappeared")
        # The run's process still holds the request: nothing is decided meanwhile.
        with resource.store() as store, store.processing(request_id, lambda name: None):
            assert evaluate(definitions, instance, resource) == []
            waiting = store.get(request_id)
            assert waiting is not None and waiting.attempt == attempt

    assert keys == [request_id, f"{request_id}/attempt-2", f"{request_id}/attempt-3"]
    assert evaluate(definitions, instance, resource) == []
    with resource.store() as store:
        failed = store.get(request_id)
    assert failed is not None and failed.state == "failed" and failed.status == "error"
    assert failed.attempt == MAX_ATTEMPTS and failed.run_id == runs[-1]
    assert "worker 3 disappeared" in failed.description and "given up" in failed.description
    assert [(r["attempt"], r["run_id"]) for r in failed.retries] == list(
        zip([1, 2, 3], runs, strict=True)
    )
    assert "worker 1 disappeared" in failed.retries[0]["reason"]
    status = failed.legacy_status()
    assert status["_attempt"] == 3 and len(status["_retries"]) == 3


def test_a_run_of_an_attempt_given_up_does_nothing_and_a_canceled_run_is_not_retried(
    definitions: dg.Definitions, resource: IngestionApiResource
):
    instance = dg.DagsterInstance.ephemeral()
    job = definitions.resolve_job_def(JOB_NAME)
    with resource.store() as store:
        request_id = add_request(store, "a")
        finished_id = add_request(store, "b")
    first, finished_first = evaluate(definitions, instance, resource)
    run = sensor_run(instance, job, first)
    finished_run = sensor_run(instance, job, finished_first)
    with resource.store() as store:
        assert store.start(finished_id, finished_run.run_id, 1)
        store.finish(finished_id, finished_run.run_id, "file:///item.json", "done")
    instance.report_run_failed(finished_run, "late failure")  # of a finished request

    instance.report_run_canceled(run, "canceled by a person")
    assert evaluate(definitions, instance, resource) == []

    with resource.store() as store:
        canceled = store.get(request_id)
        assert canceled is not None and canceled.state == "failed"
        assert "canceled" in canceled.description and canceled.attempt == 1
        # A run of an attempt that is no longer the request's may not start.
        assert not store.start(request_id, "a-late-run", 1)
        finished = store.get(finished_id)
        assert finished is not None and finished.state == "finished"
        # A re-execution (no attempt) takes over whatever the state.
        assert store.start(request_id, "a-re-execution", None)
