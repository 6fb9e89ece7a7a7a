"""The ingestion API's Dagster definitions in the code location, and its two sensors evaluated
against a real request store (SQLite) and Dagster instance."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from bq_pipelines.api.store import RequestStore
from bq_pipelines.definitions import defs
from bq_pipelines.ingestion import (
    ASSET_KEY,
    COLLECTION_TAG,
    JOB_NAME,
    OP_NAME,
    REQUEST_TAG,
    SENSOR_NAME,
    IngestionApiResource,
    run_config,
)

FAILURE_SENSOR = "ingestion_api_failure_sensor"


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
    sensors = {sensor.name: sensor.default_status for sensor in definitions.sensors}
    assert sensors[SENSOR_NAME] == dg.DefaultSensorStatus.RUNNING
    assert sensors[FAILURE_SENSOR] == dg.DefaultSensorStatus.RUNNING
    assert "ingestion_api" in definitions.resources


def test_the_sensor_requests_one_run_per_accepted_request_keyed_by_its_id(
    definitions: dg.Definitions, resource: IngestionApiResource
):
    with resource.store() as store:
        first, second = add_request(store, "a"), add_request(store, "b")
        started = add_request(store, "c")
        store.start(started, "some-run")
    sensor = definitions.resolve_sensor_def(SENSOR_NAME)

    result = sensor(dg.build_sensor_context(resources={"ingestion_api": resource}))

    assert [r.run_key for r in result.run_requests] == [first, second]  # oldest first
    [request] = [r for r in result.run_requests if r.run_key == first]
    assert request.tags == {REQUEST_TAG: first, COLLECTION_TAG: "c"}
    assert request.run_config == run_config(first).to_config_dict()


def test_the_sensor_skips_when_nothing_waits(definitions, resource):
    sensor = definitions.resolve_sensor_def(SENSOR_NAME)
    result = sensor(dg.build_sensor_context(resources={"ingestion_api": resource}))
    assert isinstance(result, dg.SkipReason)


def test_a_run_that_died_without_recording_fails_its_request(
    definitions: dg.Definitions, resource: IngestionApiResource
):
    with resource.store() as store:
        request_id = add_request(store, "a")
        finished_id = add_request(store, "b")
    instance = dg.DagsterInstance.ephemeral()
    job = definitions.resolve_job_def(JOB_NAME)
    sensor = definitions.resolve_sensor_def(FAILURE_SENSOR)

    def fail_run(for_request: str) -> dg.DagsterRun:
        run = instance.create_run_for_job(
            job_def=job,
            run_config=run_config(for_request).to_config_dict(),
            tags={REQUEST_TAG: for_request},
        )
        event = instance.report_run_failed(run, "the run worker disappeared")
        context = dg.build_run_status_sensor_context(
            sensor_name=FAILURE_SENSOR,
            dagster_event=event,
            dagster_instance=instance,
            dagster_run=instance.get_run_by_id(run.run_id),
            resources={"ingestion_api": resource},
        ).for_run_failure()
        sensor(context)
        return run

    run = fail_run(request_id)
    with resource.store() as store:
        store.start(finished_id, "the-real-run")
        store.finish(finished_id, "the-real-run", "file:///item.json", "done")
    fail_run(finished_id)  # a late failure of another run must not undo a finished request

    with resource.store() as store:
        failed = store.get(request_id)
        assert failed is not None and failed.state == "failed" and failed.status == "error"
        assert failed.run_id == run.run_id
        assert "the run worker disappeared" in failed.description
        finished = store.get(finished_id)
        assert finished is not None and finished.state == "finished"
