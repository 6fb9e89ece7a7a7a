"""Faults of the network, through a TCP fault proxy on loopback (fixtures/tcp_proxy.py) in front
of the real services: S3 (moto) refusing connections for 40 s in the middle of a run, and a
source host answering 30 % of its requests with a 5xx and leaving some hanging. Every partition
ends published, none twice, within the retry budgets the README states."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg

from bq_pipelines.datasets.demo import DEMO_LAYERS
from bq_pipelines.datasets.loading import parse_declaration
from bq_pipelines.lib.waiting import wait_until
from bq_pipelines.orchestration.keys import DatasetKeys
from bq_pipelines.orchestration.resources import SourcesResource
from bq_pipelines_testkit.http_host import LocalHttpHost
from bq_pipelines_testkit.rasters import RasterSpec, write_raster
from bq_pipelines_testkit.runs import audit_dataset, materialize_dataset
from bq_pipelines_tests.fixtures.demo import demo_declaration
from bq_pipelines_tests.fixtures.services import services_settings
from bq_pipelines_tests.fixtures.tcp_proxy import HttpFaults

RUN_TIMEOUT = 600.0
# README "Failure modes": each S3 operation is retried until 150 s have passed; a source's
# request is tried 4 times (waits of 2, 4, 8 s at most between), 30 s of silence at most
# for a probe, 60 s while downloading.
S3_BUDGET_SECONDS = 150.0
SOURCE_ATTEMPTS = SourcesResource.model_fields["retry_attempts"].default
SOURCE_REQUEST_BUDGET_SECONDS = SOURCE_ATTEMPTS * 60 + 2 + 4 + 8
TILES = [f"t{n}" for n in range(6)]


def moto_port(services_env: dict[str, str]) -> int:
    return int(services_env["BQ_S3_ENDPOINT_URL"].rsplit(":", 1)[1])


def wait_for(condition, what: str, timeout: float = RUN_TIMEOUT) -> None:
    wait_until(condition, timeout=timeout, what=what, poll=0.05)


def run_in_thread(target, *args) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []
    thread = threading.Thread(target=lambda: outcome.append(target(*args)))
    thread.start()
    return thread, outcome


def materializations(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> int:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=100
    ).records
    return len(records)


def assert_published_once(declaration, settings, instance, partitions=DEMO_LAYERS) -> None:
    """Each partition materialized once, each item once in the catalog, each object once."""
    keys = DatasetKeys(declaration.id)
    for partition in partitions:
        assert materializations(instance, keys.step("stac_item"), partition) == 1, partition
    report = audit_dataset(declaration, settings, instance)
    assert report.clean and not report.missing_partitions, report.listing()
    # A COG and its thumbnail per item.
    assert (report.items, report.objects, report.duplicates) == (
        len(partitions),
        2 * len(partitions),
        0,
    )


def test_s3_refusing_connections_for_40_s_mid_run(
    services_env,
    s3_client,
    s3_bucket,
    tmp_path: Path,
    demo_sources,
    monkeypatch,
    unique_id,
    tcp_proxy_factory,
) -> None:
    proxy = tcp_proxy_factory(moto_port(services_env))
    settings = services_settings(
        services_env,
        s3_bucket,
        tmp_path / "bq",
        demo_sources,
        monkeypatch,
        BQ_S3_ENDPOINT_URL=proxy.url,
    )
    declaration = demo_declaration(f"demo-{unique_id}")
    instance = dg.DagsterInstance.ephemeral()
    started = time.monotonic()
    thread, outcome = run_in_thread(materialize_dataset, declaration, settings, instance)
    # The first partition's object is in the bucket: take S3 down before the next one's.
    wait_for(lambda: s3_client.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) > 0, "upload")
    proxy.down()
    down_at = time.monotonic()
    time.sleep(40)
    proxy.up()
    outage = time.monotonic() - down_at
    thread.join(RUN_TIMEOUT)
    [done] = outcome
    elapsed = time.monotonic() - started
    print(
        f"S3 down {outage:.1f} s mid-run ({proxy.refused} connections turned away): run "
        f"{elapsed:.1f} s, {done.published} published, {done.failed} failed"
    )
    assert proxy.refused > 0  # the run did meet the outage
    assert done.ok and (done.published, done.failed) == (3, 0)
    # No operation waited past its budget: the run ends within one budget of the outage's end.
    assert elapsed < outage + S3_BUDGET_SECONDS
    assert_published_once(declaration, settings, instance)


def test_a_source_host_answering_30_percent_5xx_and_sometimes_hanging(
    services_env,
    s3_bucket,
    http_host: LocalHttpHost,
    tmp_path: Path,
    monkeypatch,
    unique_id,
    tcp_proxy_factory,
) -> None:
    for n, tile in enumerate(TILES):
        write_raster(http_host.root / f"{tile}.tif", RasterSpec(dtype="int16", seed=n + 1))
    proxy = tcp_proxy_factory(int(http_host.base_url.rsplit(":", 1)[1]))
    faults = HttpFaults()  # requests 1, 4, 7, 11... answered 503, request 9 (29...) hangs
    proxy.http_faults(faults)
    declaration = parse_declaration(
        {
            "id": f"flaky-{unique_id}",
            "title": "A flaky host",
            "description": "Tiles from a host that fails",
            "license": "CC-BY-4.0",
            "folder": f"flaky-{unique_id}",
            "source": {"url": f"{proxy.url}/{{tile}}.tif"},
            "partitions": {"static": [{"name": "tile", "values": TILES}], "batch_size": 6},
            "item": {"id": "{tile}", "datetime": "2020-01-01T00:00:00Z"},
        },
        "flaky.yaml",
    )
    settings = services_settings(
        services_env, s3_bucket, tmp_path / "bq", tmp_path / "sources", monkeypatch
    )
    instance = dg.DagsterInstance.ephemeral()
    started = time.monotonic()

    done = materialize_dataset(declaration, settings, instance)

    elapsed = time.monotonic() - started
    actions = Counter(action for _, _, action in proxy.requests)
    print(f"source faults: {dict(actions)} in {len(proxy.requests)} requests, {elapsed:.1f} s")
    assert done.ok and (done.published, done.failed) == (len(TILES), 0)
    # The host did misbehave as declared: 30 % errors, and at least one hang.
    assert actions["503"] >= 3 * len(proxy.requests) // 10 - 1 and actions["hang"] >= 1
    # Within the retry budget: no request was tried more often than the policy allows, and no
    # partition waited longer than one request's budget.
    tries = Counter((method, path) for method, path, _ in proxy.requests)
    assert max(tries.values()) <= SOURCE_ATTEMPTS, tries
    assert elapsed < SOURCE_REQUEST_BUDGET_SECONDS * actions["hang"] + 60
    assert_published_once(declaration, settings, instance, TILES)
