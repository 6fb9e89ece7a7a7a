"""Sensors: new upstream partitions are requested (HEAD only, against a real local HTTP host),
and collections are rebuilt by Declarative Automation after runs that published items."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from bq_pipelines.datasets.demo import write_demo_rasters
from bq_pipelines.datasets.loading import parse_declaration
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.orchestration.factory import build_dataset
from bq_pipelines.orchestration.keys import DatasetKeys, op_name, partitions_definition
from bq_pipelines.orchestration.resources import SourcesResource, resources_for
from bq_pipelines.orchestration.sensors import (
    AUTOMATION_SENSOR_NAME,
    automation_sensor,
    collection_automation_condition,
    reads_remote_sources,
    upstream_sensor,
)
from bq_pipelines.runtime.launch import QUIET_LOGS, RANGE_END_TAG, RANGE_START_TAG
from bq_pipelines.settings import Settings
from bq_pipelines_testkit.http_host import LocalHttpHost
from bq_pipelines_testkit.rasters import RasterSpec, write_raster
from bq_pipelines_testkit.values import run_requests
from bq_pipelines_tests.fixtures.demo import demo_declaration

HOST = "upstream-host"
MONTHLY: dict[str, Any] = {
    "id": "tas-monthly",
    "title": "Monthly mean temperature (test)",
    "description": "A small monthly series served by a local HTTP host.",
    "license": "CC-BY-4.0",
    "folder": "tas-monthly",
    "source": {
        "host": HOST,
        "base_url": "https://data.example.invalid/climate",
        "path": "tas/tas_{year}_{month:02d}.tif",
    },
    "partitions": {
        "time": {"cadence": "monthly", "start": "2024-01", "end": "2024-06"},
        "batch_size": 2,
    },
    "item": {"id": "tas_{year}_{month:02d}", "properties": {"variable": "tas"}},
}
DEFAULT_AUTOMATION_SENSOR = "default_automation_condition_sensor"
MONTHS = ["2024-06", "2024-05", "2024-04", "2024-03", "2024-02", "2024-01"]  # newest first


def declaration_of(data: dict[str, Any]) -> Declaration:
    return parse_declaration(data, f"{data['id']}.yaml")


def source_path(month: str, variable: str = "tas") -> str:
    year, number = month.split("-")
    return f"{variable}/{variable}_{year}_{number}.tif"


def publish(host: LocalHttpHost, month: str, variable: str = "tas", seed: int = 0) -> None:
    """The upstream host starts serving the month's file (a real GeoTIFF)."""
    spec = RasterSpec(width=64, height=48, seed=seed)
    write_raster(host.root / source_path(month, variable), spec)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    # build_sensor_context needs a persistent instance (a temporary SQLite one).
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def settings(tmp_path: Path, http_host: LocalHttpHost) -> Settings:
    return Settings.from_env(
        {
            "BQ_HOME": str(tmp_path / "bq"),
            "BQ_SOURCE_BASE_URLS": f"{HOST}={http_host.base_url}",
        }
    )


@pytest.fixture
def sources(settings: Settings) -> SourcesResource:
    resource = resources_for(settings)["sources"]
    assert isinstance(resource, SourcesResource)
    return resource


def sensor_for(declaration: Declaration, **options) -> dg.SensorDefinition:
    partitions_def = partitions_definition(declaration.id, declaration.partitions)
    return upstream_sensor(declaration, partitions_def, op_name(declaration.id, "job"), **options)


def tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    sources: SourcesResource,
    cursor: str | None = None,
) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance, resources={"sources": sources}, cursor=cursor
    )
    result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def requested(result: dg.SensorResult) -> list[str | None]:
    return [request.partition_key for request in result.run_requests or []]


# --------------------------------------------------------------------------- upstream sensor


def test_requests_published_partitions_newest_first_with_head_requests_only(
    http_host, instance, sources
):
    for month in ("2024-01", "2024-02", "2024-03", "2024-04", "2024-06"):  # 2024-05: not yet
        publish(http_host, month)
    declaration = declaration_of(MONTHLY)
    sensor = sensor_for(declaration)
    assert sensor.name == "tas_monthly_upstream_sensor"
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED

    result = tick(sensor, instance, sources)

    assert requested(result) == ["2024-06", "2024-04", "2024-03", "2024-02", "2024-01"]
    keys = DatasetKeys(declaration.id)
    for request in run_requests(result):
        assert request.asset_selection == keys.partitioned
        assert request.run_key is not None
        assert request.run_key.startswith(f"{request.partition_key}@")
    assert http_host.count("HEAD") == 6  # one per partition, the missing one included
    assert http_host.count("GET") == 0  # nothing downloaded
    assert http_host.count("HEAD", source_path("2024-05")) == 1
    assert result.cursor is not None
    assert json.loads(result.cursor) == {"last_checked": "2024-01"}


def test_cursor_walks_through_every_candidate_a_few_per_tick(http_host, instance, sources):
    for month in MONTHS:
        if month != "2024-05":
            publish(http_host, month)
    sensor = sensor_for(declaration_of(MONTHLY), max_partitions_per_tick=2)

    cursor, seen = None, []
    for expected in (["2024-06"], ["2024-04", "2024-03"], ["2024-02", "2024-01"], ["2024-06"]):
        http_host.reset()
        result = tick(sensor, instance, sources, cursor)
        assert requested(result) == expected
        assert http_host.count("HEAD") == 2 and http_host.count("GET") == 0
        seen += [request.path for request in http_host.requests]
        cursor = result.cursor
    # Three ticks checked each partition once; the fourth starts the walk again from the newest.
    assert seen[:6] == [f"/{source_path(month)}" for month in MONTHS]
    assert seen[6:] == [f"/{source_path(month)}" for month in MONTHS[:2]]


@pytest.mark.slow
def test_materialized_partitions_are_skipped_and_late_uploads_are_picked_up(
    http_host, instance, sources, settings
):
    publish(http_host, "2024-06")
    declaration = declaration_of(MONTHLY)
    sensor = sensor_for(declaration)
    defs = dg.Definitions.merge(
        build_dataset(declaration), dg.Definitions(resources=resources_for(settings))
    )
    job = defs.resolve_job_def(op_name(declaration.id, "job"))

    [request] = run_requests(tick(sensor, instance, sources))
    assert request.partition_key == "2024-06"
    # Run what the sensor asked for: the partition is downloaded, converted and published.
    run = job.execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        asset_selection=request.asset_selection,
        run_config=QUIET_LOGS,
    )
    assert run.success
    assert instance.get_materialized_partitions(DatasetKeys(declaration.id).step("stac_item")) == {
        "2024-06"
    }

    http_host.reset()
    first = tick(sensor, instance, sources)
    assert requested(first) == [] and first.skip_reason is not None
    assert http_host.count("HEAD", source_path("2024-06")) == 0  # materialized: not even checked
    assert http_host.count("HEAD") == 5

    # The host publishes March later: the next tick requests it, and only it.
    publish(http_host, "2024-03")
    http_host.reset()
    second = tick(sensor, instance, sources, first.cursor)
    assert requested(second) == ["2024-03"]
    assert http_host.count("GET") == 0


def test_a_slow_host_spreads_the_checks_over_ticks(http_host, instance, sources):
    for month in MONTHS:
        publish(http_host, month)
    http_host.delay(source_path("2024-06"), 0.3)
    sensor = sensor_for(declaration_of(MONTHLY), tick_budget_seconds=0.2)
    result = tick(sensor, instance, sources)
    # The budget is spent after the first check: the rest waits for the next tick.
    assert requested(result) == ["2024-06"] and http_host.count("HEAD") == 1
    assert requested(tick(sensor, instance, sources, result.cursor))[0] == "2024-05"


def test_run_key_is_stable_until_the_upstream_file_changes(http_host, instance, sources):
    publish(http_host, "2024-02")
    sensor = sensor_for(declaration_of(MONTHLY))
    [first] = run_requests(tick(sensor, instance, sources))
    [again] = run_requests(tick(sensor, instance, sources))
    assert again.run_key == first.run_key  # Dagster drops a request whose run key already ran

    publish(http_host, "2024-02", seed=7)  # the host replaces the file: new ETag and size
    [replaced] = run_requests(tick(sensor, instance, sources))
    assert replaced.partition_key == "2024-02" and replaced.run_key != first.run_key


def test_host_errors_are_logged_and_skipped_without_retrying_inside_the_tick(
    http_host, instance, sources
):
    for month in MONTHS:
        publish(http_host, month)
    http_host.fail(source_path("2024-04"), status=503, times=None)
    http_host.fail(source_path("2024-02"), status=403, times=None)
    sensor = sensor_for(declaration_of(MONTHLY))

    result = tick(sensor, instance, sources)

    assert requested(result) == ["2024-06", "2024-05", "2024-03", "2024-01"]
    assert http_host.count("HEAD", source_path("2024-04")) == 1  # the next tick is the retry
    http_host.reset()
    assert "2024-04" in requested(tick(sensor, instance, sources, result.cursor))


def test_multi_dimension_partitions_newest_period_first(http_host, instance, sources):
    data = {
        **MONTHLY,
        "id": "climate-multi",
        "folder": "climate-multi",
        "source": {**MONTHLY["source"], "path": "{variable}/{variable}_{year}_{month:02d}.tif"},
        "partitions": {
            "time": {"cadence": "monthly", "start": "2024-01", "end": "2024-03"},
            "static": [{"name": "variable", "values": ["tas", "pr"]}],
        },
        "item": {"id": "{variable}_{year}_{month:02d}"},
    }
    for month in ("2024-01", "2024-02", "2024-03"):
        publish(http_host, month, "tas")
    publish(http_host, "2024-01", "pr")
    result = tick(sensor_for(declaration_of(data)), instance, sources)
    assert requested(result) == ["2024-03|tas", "2024-02|tas", "2024-01|tas", "2024-01|pr"]


def test_open_ended_series_checks_the_newest_month_first(http_host, instance, sources):
    declaration = declaration_of(
        {**MONTHLY, "partitions": {"time": {"cadence": "monthly", "start": "2023-01"}}}
    )
    partitions_def = partitions_definition(declaration.id, declaration.partitions)
    newest = partitions_def.get_partition_keys()[-1]  # the last month that has ended
    publish(http_host, newest)
    sensor = upstream_sensor(
        declaration, partitions_def, "tas_monthly_job", max_partitions_per_tick=1
    )
    result = tick(sensor, instance, sources)
    assert requested(result) == [newest]
    assert http_host.count("HEAD") == 1


def test_upstream_sensor_resolves_in_definitions_and_refuses_local_datasets(settings):
    declaration = declaration_of(MONTHLY)
    dataset = build_dataset(declaration)
    # Once factory.py wires the sensor, build_dataset already includes it.
    wired = any(s.name == "tas_monthly_upstream_sensor" for s in dataset.sensors or [])
    defs = dg.Definitions.merge(
        dataset,
        dg.Definitions(
            sensors=[] if wired else [sensor_for(declaration)], resources=resources_for(settings)
        ),
    )
    defs.validate_loadable(defs)
    assert defs.resolve_sensor_def("tas_monthly_upstream_sensor").job_name == "tas_monthly_job"

    demo = demo_declaration("demo-sensors")
    assert reads_remote_sources(declaration) and not reads_remote_sources(demo)
    demo_partitions = partitions_definition(demo.id, demo.partitions)
    with pytest.raises(ValueError, match="every source is local"):
        upstream_sensor(demo, demo_partitions, "demo_sensors_job")


# --------------------------------------------------------------------------- collections


def with_collection_condition(declaration: Declaration) -> dg.Definitions:
    """The dataset as factory.py will build it: the condition set on its collection asset."""
    collection = DatasetKeys(declaration.id).collection

    def condition_on_collection(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.key != collection:
            return spec
        return spec.replace_attributes(automation_condition=collection_automation_condition())

    return build_dataset(declaration).map_asset_specs(func=condition_on_collection)


def automated(declaration: Declaration, settings: Settings) -> dg.Definitions:
    """One dataset with its collection automated, as the code location will assemble it."""
    return dg.Definitions.merge(
        with_collection_condition(declaration),
        dg.Definitions(sensors=[automation_sensor()], resources=resources_for(settings)),
    )


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    root = tmp_path / "sources"
    write_demo_rasters(root)
    return Settings.from_env(
        {
            "BQ_HOME": str(tmp_path / "bq"),
            "BQ_LOCAL_DATA_ROOT": str(root),
        }
    )


def run_partitions(
    defs: dg.Definitions, declaration: Declaration, instance, first: str, last: str
) -> bool:
    job = defs.resolve_job_def(op_name(declaration.id, "job"))
    return job.execute_in_process(
        instance=instance,
        asset_selection=DatasetKeys(declaration.id).partitioned,
        tags={RANGE_START_TAG: first, RANGE_END_TAG: last},
        run_config=QUIET_LOGS,
        raise_on_error=False,
    ).success


def collection_requested(
    defs: dg.Definitions, instance, key: dg.AssetKey, cursor=None
) -> tuple[bool, object]:
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    return result.get_num_requested(key) == 1, result.cursor


def test_collection_is_rebuilt_after_a_partition_run_and_then_left_alone(local_settings):
    declaration = demo_declaration("demo-automation")
    keys = DatasetKeys(declaration.id)
    defs = automated(declaration, local_settings)
    instance = dg.DagsterInstance.ephemeral()

    # Nothing published yet: no empty collection is built.
    wanted, cursor = collection_requested(defs, instance, keys.collection)
    assert not wanted

    assert run_partitions(defs, declaration, instance, "landcover", "landcover")
    wanted, cursor = collection_requested(defs, instance, keys.collection, cursor)
    assert wanted
    # Requested once: the next tick does not ask again while nothing new is published.
    wanted, cursor = collection_requested(defs, instance, keys.collection, cursor)
    assert not wanted

    collection = dg.materialize(
        [defs.resolve_assets_def(keys.collection)], instance=instance, run_config=QUIET_LOGS
    )
    assert collection.success
    wanted, cursor = collection_requested(defs, instance, keys.collection, cursor)
    assert not wanted

    # Another partition published: requested again.
    assert run_partitions(defs, declaration, instance, "elevation", "temperature")
    wanted, cursor = collection_requested(defs, instance, keys.collection, cursor)
    assert wanted


def test_a_job_run_that_rebuilt_the_collection_does_not_trigger_another(local_settings):
    declaration = demo_declaration("demo-automation-job")
    defs = automated(declaration, local_settings)
    instance = dg.DagsterInstance.ephemeral()
    collection = DatasetKeys(declaration.id).collection
    _, cursor = collection_requested(defs, instance, collection)

    job = defs.resolve_job_def(op_name(declaration.id, "job"))  # partitions, then the collection
    run = job.execute_in_process(
        instance=instance, partition_key="landcover", run_config=QUIET_LOGS
    )
    assert run.success
    wanted, _ = collection_requested(defs, instance, collection, cursor)
    assert not wanted


def test_a_partly_failed_run_still_refreshes_the_collection(local_settings):
    (local_settings.local_data_root / "demo" / "elevation.tif").unlink()
    declaration = demo_declaration("demo-automation-failed")
    keys = DatasetKeys(declaration.id)
    defs = automated(declaration, local_settings)
    instance = dg.DagsterInstance.ephemeral()
    _, cursor = collection_requested(defs, instance, keys.collection)

    # landcover and temperature are published, elevation fails: the run fails.
    assert not run_partitions(defs, declaration, instance, "landcover", "temperature")
    wanted, _ = collection_requested(defs, instance, keys.collection, cursor)
    assert wanted


def test_the_automation_sensor_runs_by_default_and_targets_every_collection(local_settings):
    first, second = demo_declaration("demo-a"), demo_declaration("demo-b")
    resources = dg.Definitions(resources=resources_for(local_settings))
    conditioned = [with_collection_condition(d) for d in (first, second)]

    # Without an explicit sensor Dagster adds one, but stopped: collections would go stale.
    implicit = dg.Definitions.merge(*conditioned, resources)
    default = implicit.resolve_sensor_def(DEFAULT_AUTOMATION_SENSOR)
    assert default.default_status == dg.DefaultSensorStatus.STOPPED

    explicit = dg.Definitions.merge(
        *conditioned, resources, dg.Definitions(sensors=[automation_sensor()])
    )
    explicit.validate_loadable(explicit)
    assert not explicit.get_repository_def().has_sensor_def(DEFAULT_AUTOMATION_SENSOR)
    sensor = explicit.resolve_sensor_def(AUTOMATION_SENSOR_NAME)
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    targeted = sensor.asset_selection.resolve(explicit.resolve_asset_graph())
    assert targeted == {DatasetKeys("demo-a").collection, DatasetKeys("demo-b").collection}
