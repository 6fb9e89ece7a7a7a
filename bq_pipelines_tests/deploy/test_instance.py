"""deploy/dagster.yaml as a real Dagster instance on the local PostgreSQL (a fresh database): it
loads with its settings from the environment and records the batched runs and materializations of
a generated dataset's partitions published to the real services. Its run queue, limits and
monitoring are exercised by the daemon in `test_celery.py`."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from bq_pipelines.orchestration.keys import DatasetKeys
from bq_pipelines.orchestration.resources import catalog_for
from bq_pipelines_testkit import backfill_location as location
from bq_pipelines_testkit.http_host import LocalHttpHost
from bq_pipelines_testkit.runs import latest_metadata, run_dataset
from bq_pipelines_tests.backfill_stack import MIRROR_PREFIX, serve_sources
from bq_pipelines_tests.deploy.stack import count_rows, sessions_of
from bq_pipelines_tests.fixtures.services import services_settings

MONTHS, BATCH_SIZE = 6, 3


def test_production_instance_on_postgres_records_batched_runs_of_a_generated_dataset(
    tmp_path: Path,
    http_host: LocalHttpHost,
    production_instance_env: dict[str, str],
    dagster_database: str,
    services_env: dict[str, str],
    s3_bucket: str,
    unique_id: str,
    monkeypatch: pytest.MonkeyPatch,
):
    for name, value in production_instance_env.items():
        monkeypatch.setenv(name, value)
    declaration = location.chelsa_like(f"chelsa-pg-{unique_id}", MONTHS, BATCH_SIZE)
    urls = serve_sources(http_host, MONTHS, location.VARIABLES)
    settings = services_settings(
        services_env,
        s3_bucket,
        tmp_path / "bq",
        tmp_path / "sources",
        monkeypatch,
        BQ_SOURCE_BASE_URLS=f"{location.CHELSA_HOST}={http_host.url(MIRROR_PREFIX)}",
    )

    instance = dg.DagsterInstance.get()  # $DAGSTER_HOME/dagster.yaml, as the stack loads it
    try:
        assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
        # No asset declares a freshness policy (test_definitions.py): no freshness daemon.
        assert "FRESHNESS_DAEMON" not in instance.get_required_daemon_types()
        assert run_dataset(declaration, settings, instance)

        # Everything went to PostgreSQL: 2 variables x ceil(6 / 3) batches, the collection
        # rebuilt by the last of them.
        runs = instance.get_runs()
        assert len(runs) == 2 * (MONTHS // BATCH_SIZE)
        assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in runs)
        assert count_rows(dagster_database, "runs") == len(runs)
        stac_item = DatasetKeys(declaration.id).step("stac_item")
        assert instance.get_materialized_partitions(stac_item) == set(urls)
        first = location.partition_key(0, "tas")
        assert latest_metadata(instance, stac_item, first)["created"] == 1

        # Pooled storage: the connections that wrote the runs are kept and serve what follows
        # (dagster-postgres as it comes opens and closes one per write: none would be left).
        storage = instance.get_ref().storage_data
        assert storage is not None and storage.class_name == "PooledPostgresStorage"
        kept = sessions_of(dagster_database)
        assert 1 <= len(kept) <= 2  # the run storage's and the event log storage's
        for n in range(20):
            instance.report_runless_asset_event(dg.AssetMaterialization(f"pool-check-{n}"))
            instance.add_run_tags(runs[0].run_id, {"bq/pool-check": str(n)})
        assert sessions_of(dagster_database) == kept
    finally:
        instance.dispose()

    # The items are in the STAC API, the COGs in the bucket.
    publisher = catalog_for(settings).publisher()
    published = {item["id"] for item in publisher.iter_items(declaration.id)}
    assert published == {location.item_id(i, v) for i in range(MONTHS) for v in location.VARIABLES}
