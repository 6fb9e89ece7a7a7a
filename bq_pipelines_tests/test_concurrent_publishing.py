"""Concurrency safety of bulk publishing into one pgstac database (issue 11, part 7).

Two backfills of different datasets (chelsa-monthly-like, batched in-process Dagster runs on the
real services: moto S3, stac-fastapi-pgstac, items bulk-loaded with pypgstac's Loader since
`BQ_PGSTAC_DSN` is set) and two more writers of the first dataset's collection from outside
Dagster (overlapping ids), all in separate processes at the same time: no error reaches any of
them, and every item is in the catalog exactly once.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from bq_pipelines.lib.catalog import PgstacPublisher
from bq_pipelines.lib.waiting import WaitTimeout, wait_until
from bq_pipelines.settings import Settings
from bq_pipelines_testkit import backfill_location as location
from bq_pipelines_testkit.http_host import LocalHttpHost
from bq_pipelines_testkit.runs import materialize_dataset
from bq_pipelines_tests.backfill_stack import MIRROR_PREFIX, serve_sources
from bq_pipelines_tests.fixtures.services import services_settings
from bq_pipelines_tests.fixtures.stac_items import clone

MONTHS, BATCH = 4, 4
EXTRA = 600  # items of each outside writer; the second one overlaps the first by half
TIMEOUT_S = 600


def _backfill(env: dict[str, str], dataset_id: str, results: Any) -> None:
    declaration = location.chelsa_like(dataset_id, MONTHS, BATCH)
    done = materialize_dataset(declaration, Settings.from_env(env), dg.DagsterInstance.ephemeral())
    results.put((dataset_id, done.ok, done.published))


def _outside_writer(
    env: dict[str, str], collection_id: str, template: dict[str, Any], first: int, results: Any
) -> None:
    items = [
        clone(template, collection_id, f"outside_{n:05d}", species=n)
        for n in range(first, first + EXTRA)
    ]
    with PgstacPublisher(env["BQ_STAC_API_URL"], env["BQ_PGSTAC_DSN"], chunk_size=100) as pub:
        outcomes = pub.upsert_items(items)
    results.put((f"outside-{first}", len(outcomes) == EXTRA, len(outcomes)))


def test_two_backfills_and_two_outside_writers_at_once(
    tmp_path: Path,
    http_host: LocalHttpHost,
    services_env: dict[str, str],
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    unique_id: str,
    item_template: dict[str, Any],
) -> None:
    ids = [f"conc-{name}-{unique_id}" for name in ("a", "b")]
    serve_sources(http_host, MONTHS, location.VARIABLES)
    settings = services_settings(
        services_env,
        s3_bucket,
        tmp_path / "bq",
        tmp_path / "sources",
        monkeypatch,
        BQ_SOURCE_BASE_URLS=f"{location.CHELSA_HOST}={http_host.url(MIRROR_PREFIX)}",
    )
    assert settings.pgstac_dsn and settings.catalog == "stac-api"
    env = {
        **services_env,
        "BQ_HOME": str(tmp_path / "bq"),
        "BQ_S3_BUCKET": s3_bucket,
        "BQ_PUBLIC_BASE_URL": f"{services_env['BQ_S3_ENDPOINT_URL']}/{s3_bucket}",
        "BQ_LOCAL_DATA_ROOT": str(tmp_path / "sources"),
        "BQ_SOURCE_BASE_URLS": f"{location.CHELSA_HOST}={http_host.url(MIRROR_PREFIX)}",
    }
    assert Settings.from_env(env) == settings
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [
        context.Process(target=_backfill, args=(env, ids[0], results)),
        context.Process(target=_backfill, args=(env, ids[1], results)),
        # The outside writers start with the backfills and publish as soon as the first
        # backfill has created the collection (with its first partition's items).
        context.Process(target=_wait_then_write, args=(env, ids[0], item_template, 0, results)),
        context.Process(
            target=_wait_then_write, args=(env, ids[0], item_template, EXTRA // 2, results)
        ),
    ]
    try:
        for process in processes:
            process.start()
        reported = [results.get(timeout=TIMEOUT_S) for _ in processes]
        for process in processes:
            process.join(timeout=60)
        assert all(process.exitcode == 0 for process in processes), reported
        assert all(ok for _, ok, _ in reported), reported
        partitions = MONTHS * len(location.VARIABLES)
        published = {name: count for name, _, count in reported}
        assert published[ids[0]] == published[ids[1]] == partitions, reported

        expected = {ids[0]: partitions + EXTRA + EXTRA // 2, ids[1]: partitions}
        with psycopg.connect(env["BQ_PGSTAC_DSN"]) as conn:
            for collection_id, count in expected.items():
                counted = conn.execute(
                    "SELECT count(*), count(DISTINCT id) FROM pgstac.items WHERE collection = %s",
                    (collection_id,),
                ).fetchone()
                assert counted is not None
                total, distinct = counted
                assert (total, distinct) == (count, count), collection_id
                collection = conn.execute(
                    "SELECT content FROM pgstac.collections WHERE id = %s", (collection_id,)
                ).fetchone()
                assert collection is not None, f"{collection_id}: no collection"
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        with PgstacPublisher(env["BQ_STAC_API_URL"], env["BQ_PGSTAC_DSN"]) as publisher:
            for collection_id in ids:
                publisher.delete_collection(collection_id)


def _wait_then_write(
    env: dict[str, str], collection_id: str, template: dict[str, Any], first: int, results: Any
) -> None:
    with psycopg.connect(env["BQ_PGSTAC_DSN"]) as conn:
        query = "SELECT 1 FROM pgstac.collections WHERE id = %s"
        try:
            wait_until(
                lambda: conn.execute(query, (collection_id,)).fetchone(),
                timeout=TIMEOUT_S / 2,
                what=f"collection {collection_id} created",
                poll=0.1,
            )
        except WaitTimeout:
            results.put((f"outside-{first}", False, 0))  # the test reports the writer that failed
            return
    _outside_writer(env, collection_id, template, first, results)
