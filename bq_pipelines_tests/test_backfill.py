"""Backfills of a chelsa-monthly-like dataset (`bq_pipelines_testkit/backfill_location.py`).

Done when: "a backfill of 120 partitions of one variable of chelsa-monthly runs in at most
ceil(120 / batch size) runs; a corrupt file fails only its partition, with its URL in the error".

- `test_daemon_backfill_...`: a real asset backfill, launched through the webserver's GraphQL API
  and executed by `dagster-daemon` (queued run coordinator, one run subprocess per batch),
  on a SQLite instance in a temporary DAGSTER_HOME.
- `test_in_process_...`: the same declaration through our batched in-process runs, then the
  retry of the failed partition and the skip of an unchanged one (HEAD only, no GET).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pystac
import pytest

from bq_pipelines.orchestration.keys import DatasetKeys
from bq_pipelines.orchestration.resources import catalog_for
from bq_pipelines.runtime.launch import RANGE_START_TAG
from bq_pipelines.settings import Settings
from bq_pipelines_testkit import backfill_location as location
from bq_pipelines_testkit.dagster_processes import (
    LAUNCH_BACKFILL,
    Deployment,
)
from bq_pipelines_testkit.http_host import LocalHttpHost
from bq_pipelines_testkit.runs import failure_messages, latest_metadata, run_dataset
from bq_pipelines_testkit.values import step_failure_message
from bq_pipelines_tests.backfill_stack import (
    LOCATION_NAME,
    bq_env,
    serve_sources,
    sqlite_deployment,
)

CORRUPT = b"II*\x00" + bytes(range(256)) * 8  # a TIFF signature, then garbage
BACKFILL_TIMEOUT = 300.0  # generous: the daemon cycles every 30 s and CI machines are shared


@pytest.fixture
def deployment(tmp_path: Path, http_host: LocalHttpHost) -> Iterator[Deployment]:
    with sqlite_deployment(tmp_path, http_host) as started:
        yield started


@pytest.mark.slow
def test_daemon_backfill_of_120_months_runs_in_batches_and_fails_only_the_corrupt_partition(
    tmp_path: Path, http_host: LocalHttpHost, deployment: Deployment
):
    variable, months, batch_size = "tas", location.DEFAULT_MONTHS, location.DEFAULT_BATCH_SIZE
    dataset_id = location.DEFAULT_ID
    urls = serve_sources(http_host, months, (variable,))  # the other variable is not served
    corrupt_key = location.partition_key(months // 2, variable)
    (http_host.root / urls[corrupt_key].removeprefix(http_host.base_url).lstrip("/")).write_bytes(
        CORRUPT
    )
    keys = [location.partition_key(i, variable) for i in range(months)]
    dataset = DatasetKeys(dataset_id)
    started = time.monotonic()

    deployment.serve_from_code_server(location.__name__, LOCATION_NAME)
    deployment.start_webserver()
    deployment.wait_until_loaded()
    launched = deployment.graphql(
        LAUNCH_BACKFILL,
        params={
            "partitionNames": keys,
            "assetSelection": [{"path": key.path} for key in dataset.partitioned],
            "title": "chelsa tas 1979-1988",
        },
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]
    # Started after the launch: the daemon's first backfill iteration picks the backfill up at
    # once instead of 30 s later (its fixed interval).
    deployment.start_daemon()

    backfill = deployment.wait_for_backfill(backfill_id, BACKFILL_TIMEOUT)
    elapsed = time.monotonic() - started
    print(f"backfill {backfill_id}: {backfill['status']} in {elapsed:.1f} s")
    assert backfill["status"] in ("COMPLETED_FAILED", "FAILED"), backfill

    # Dagster's own accounting of the backfill: 119 materialized, 1 failed, for each asset.
    counts = {
        "/".join(s["assetKey"]["path"]): s
        for s in backfill["assetBackfillData"]["assetBackfillStatuses"]
    }
    assert set(counts) == {key.to_user_string() for key in dataset.partitioned}
    for status in counts.values():
        assert status["numPartitionsTargeted"] == months
        assert status["numPartitionsMaterialized"] == months - 1, status
        assert status["numPartitionsFailed"] == 1, status
        assert status["numPartitionsInProgress"] == 0, status

    instance = dg.DagsterInstance.from_config(deployment.env["DAGSTER_HOME"])
    try:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        assert len(runs) == math.ceil(months / batch_size), [r.tags for r in runs]
        statuses = sorted(run.status.value for run in runs)
        assert statuses == ["FAILURE"] + ["SUCCESS"] * (len(runs) - 1)

        stac_item = dataset.step("stac_item")
        materialized = instance.get_materialized_partitions(stac_item)
        assert materialized == set(keys) - {corrupt_key}
        for key in (keys[0], keys[-1]):
            metadata = latest_metadata(instance, stac_item, key)
            assert metadata["skipped"] is False and metadata["created"] == 1

        [failed_run] = [run for run in runs if run.status == dg.DagsterRunStatus.FAILURE]
        failures = instance.get_records_for_run(
            run_id=failed_run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE
        ).records
        [message] = [step_failure_message(r) for r in failures]
        assert f"1 of {batch_size} partitions failed" in message
        assert corrupt_key in message and urls[corrupt_key] in message, message
    finally:
        instance.dispose()

    # The published items are in the static catalog; the corrupt partition's is not.
    settings = Settings.from_env(bq_env(tmp_path, http_host))
    catalog = pystac.Catalog.from_file(str(settings.catalog_dir / "catalog.json"))
    collection = catalog.get_child(dataset_id)
    assert collection is not None
    published = {item.id for item in collection.get_items()}
    expected = {location.item_id(i, variable) for i in range(months)}
    corrupt_item = location.item_id(months // 2, variable)
    assert published == expected - {corrupt_item}
    assert not (settings.objects_dir / "io" / dataset_id / f"{corrupt_item}.tif").exists()


# --- in-process: batched runs, retry of the failed partition, skip of unchanged ones ----------


@pytest.mark.slow
def test_in_process_batches_fail_only_the_corrupt_partition_then_retry_and_skip(
    tmp_path: Path, http_host: LocalHttpHost
):
    months, batch_size = 15, 10
    declaration = location.chelsa_like("chelsa-monthly-inproc", months, batch_size)
    urls = serve_sources(http_host, months, location.VARIABLES)
    assert len(urls) == 30
    broken_key = location.partition_key(7, "tas")
    broken_path = urls[broken_key].removeprefix(http_host.base_url).lstrip("/")
    good_bytes = (http_host.root / broken_path).read_bytes()
    (http_host.root / broken_path).write_bytes(CORRUPT)
    settings = Settings.from_env(bq_env(tmp_path, http_host))
    publisher = catalog_for(settings).publisher()
    stac_item = DatasetKeys(declaration.id).step("stac_item")
    instance = dg.DagsterInstance.ephemeral()

    assert not run_dataset(declaration, settings, instance)

    # 30 partitions in runs of at most 10 along the time dimension, per variable: 2 x 2 runs,
    # plus the collection run.
    partition_runs = [r for r in instance.get_runs() if RANGE_START_TAG in r.tags]
    assert len(partition_runs) == 2 * math.ceil(months / batch_size)
    message = failure_messages(instance)
    assert f"1 of {batch_size} partitions failed" in message
    assert broken_key in message and urls[broken_key] in message, message
    published = {item["id"] for item in publisher.iter_items(declaration.id)}
    broken_item = location.item_id(7, "tas")
    assert published == {
        location.item_id(i, v) for i in range(months) for v in location.VARIABLES
    } - {broken_item}
    assert instance.get_materialized_partitions(stac_item) == set(urls) - {broken_key}

    # Fixed at the source: re-running only the failed partition publishes it.
    (http_host.root / broken_path).write_bytes(good_bytes)
    http_host.reset()
    assert run_dataset(declaration, settings, instance, [broken_key])
    assert publisher.get_item(declaration.id, broken_item) is not None
    assert latest_metadata(instance, stac_item, broken_key)["created"] == 1
    assert http_host.count("GET", broken_path) == 1

    # An unchanged partition is skipped: its source is probed (HEAD), never downloaded.
    good_key = location.partition_key(3, "pr")
    http_host.reset()
    assert run_dataset(declaration, settings, instance, [good_key])
    metadata = latest_metadata(instance, stac_item, good_key)
    assert metadata["skipped"] is True, metadata
    assert http_host.count("HEAD") >= 1
    assert http_host.count("GET") == 0, [r for r in http_host.requests if r.method == "GET"]
