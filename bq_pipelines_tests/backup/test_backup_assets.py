"""The Dagster side of backups: the schedule's partition for a tick, the asset's metadata, its
blocking check, and retention applied once the new backup is verified."""

from __future__ import annotations

import io
import os
import shutil
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import pystac
import pytest

from bq_pipelines.backup.assets import (
    BACKUP_ASSET,
    BACKUP_JOB,
    BACKUP_PARTITIONS,
    BACKUP_SCHEDULE,
    RESTORABLE_CHECK,
    backup_definitions,
)
from bq_pipelines.backup.dump import read_manifest
from bq_pipelines.backup.manifest import BackupKey
from bq_pipelines.lib.catalog import StaticCatalogPublisher
from bq_pipelines.lib.storage import LocalObjectStore
from bq_pipelines.orchestration.resources import resources_for
from bq_pipelines.settings import Settings
from bq_pipelines_testkit.values import metadata_value, stored_object
from bq_pipelines_tests.backup.conftest import PgstacDatabases
from bq_pipelines_tests.backup.helpers import (
    collection_document,
    database_of,
    fill_catalog,
    item_document,
    run_backup_job,
    s3_store,
    store_backup,
)
from bq_pipelines_tests.fixtures.services import services_settings

TODAY = datetime.now(UTC).date()


def schedule_of(settings: Settings) -> tuple[dg.ScheduleDefinition, dg.JobDefinition]:
    definitions = dg.Definitions.merge(
        backup_definitions(settings), dg.Definitions(resources=resources_for(settings))
    )
    return (
        definitions.resolve_schedule_def(BACKUP_SCHEDULE),
        definitions.resolve_job_def(BACKUP_JOB),
    )


@pytest.mark.parametrize(
    ("tick", "partition"),
    [
        (datetime(2026, 11, 27, 4, 0, tzinfo=UTC), "2026-11-27"),
        (datetime(2027, 1, 1, 0, 5, tzinfo=UTC), "2027-01-01"),
        # A tick given in another time zone is still a UTC day.
        (datetime(2026, 11, 27, 23, 30, tzinfo=timezone(timedelta(hours=-5))), "2026-11-28"),
    ],
)
def test_a_tick_backs_up_its_own_day(tick: datetime, partition: str) -> None:
    schedule, job = schedule_of(Settings.from_env({}))
    context = dg.build_schedule_context(scheduled_execution_time=tick)

    request = schedule(context)  # a schedule is tested by invoking it (Dagster's docs)
    assert isinstance(request, dg.RunRequest)

    assert request.partition_key == partition
    assert request.run_key == partition  # one run per day, even if the tick is retried
    assert partition in BACKUP_PARTITIONS.get_partition_keys(current_time=tick)
    assert dg.validate_run_config(job, request.run_config) is not None


def test_the_schedule_time_and_status_come_from_the_settings() -> None:
    default, _ = schedule_of(Settings.from_env({}))
    assert (default.cron_schedule, default.execution_timezone) == ("0 4 * * *", "UTC")
    # Off by default: a daemon on a laptop (`make dev`, `make api`) takes no 04:00 backups.
    assert default.default_status == dg.DefaultScheduleStatus.STOPPED

    production, _ = schedule_of(
        Settings.from_env({"BQ_BACKUP_TIME": "23:15", "BQ_BACKUP_SCHEDULE_ENABLED": "true"})
    )
    assert production.cron_schedule == "15 23 * * *"
    assert production.default_status == dg.DefaultScheduleStatus.RUNNING  # deploy/compose.yaml


# --------------------------------------------------------------------- the asset, static


@pytest.fixture
def static_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in ("BQ_PGSTAC_DSN", "BQ_OBJECT_STORE", "BQ_CATALOG"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings.from_env({"BQ_HOME": str(tmp_path / "bq")})
    publisher = StaticCatalogPublisher(settings.catalog_dir)
    publisher.upsert_collection(pystac.Collection.from_dict(collection_document("demo")))
    for i in range(3):
        publisher.upsert_item(pystac.Item.from_dict(item_document("demo", f"demo-{i}")))
    return settings


def materialization_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [materialization] = result.asset_materializations_for_node(BACKUP_ASSET.path[-1])
    return {k: v.value for k, v in materialization.metadata.items()}


def test_the_asset_backs_up_verifies_and_applies_retention(
    static_settings: Settings, tmp_path: Path
) -> None:
    store = LocalObjectStore(static_settings.objects_dir)
    old = [
        store_backup(store, TODAY - timedelta(days=d), name="catalog", kind="static")
        for d in (31, 45, 60)
    ]
    recent = store_backup(store, TODAY - timedelta(days=3), name="catalog", kind="static")
    store.put_stream(io.BytesIO(b"mine"), "backups/catalog/README.txt", content_type="text/plain")
    settings = Settings.from_env({"BQ_HOME": str(tmp_path / "bq"), "BQ_BACKUP_KEEP_LAST": "2"})

    result = run_backup_job(settings, TODAY.isoformat())

    assert result.success
    metadata = materialization_metadata(result)
    key = f"backups/catalog/{TODAY.isoformat()}.tar.gz"
    assert metadata["key"] == key
    assert (metadata["collections"], metadata["items"]) == (1, 3)
    assert metadata["size_bytes"] == stored_object(store, key).size
    assert metadata["sha256"] == stored_object(store, key).sha256
    assert metadata["duration_seconds"] > 0
    assert sorted(metadata["retention_deleted"]) == sorted(
        k for b in old for k in (b.key, b.manifest_key)
    )
    assert [b.day for b in map(BackupKey.parse, store.list_keys("backups/catalog/")) if b] == [
        recent.day,
        TODAY,
    ]
    assert store.get_bytes("backups/catalog/README.txt") == b"mine"
    [check] = result.get_asset_check_evaluations()
    assert (check.check_name, check.passed) == (RESTORABLE_CHECK, True)
    assert check.metadata["restored_items"].value == 3
    manifest = read_manifest(store, BackupKey.of("catalog", TODAY, "static"))
    assert manifest is not None and manifest.verified is True


def test_retention_dry_run_only_reports(static_settings: Settings, tmp_path: Path) -> None:
    store = LocalObjectStore(static_settings.objects_dir)
    old = store_backup(store, TODAY - timedelta(days=90), name="catalog", kind="static")
    settings = Settings.from_env(
        {
            "BQ_HOME": str(tmp_path / "bq"),
            "BQ_BACKUP_RETENTION_DRY_RUN": "true",
            "BQ_BACKUP_KEEP_LAST": "1",
        }
    )

    result = run_backup_job(settings, TODAY.isoformat())

    assert result.success
    metadata = materialization_metadata(result)
    assert metadata["retention_would_delete"] == [old.key, old.manifest_key]
    assert "retention_deleted" not in metadata
    assert store.stat(old.key) is not None


# ---------------------------------------------------------------------- the asset, pgstac


def pgstac_settings_for(
    services_env: dict[str, str],
    bucket: str,
    dsn: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    **overrides: str,
) -> Settings:
    monkeypatch.setenv("BQ_PGSTAC_DSN", dsn)  # read through EnvVar: it may hold a password
    return services_settings(
        services_env, bucket, tmp_path / "bq", tmp_path, monkeypatch, BQ_PGSTAC_DSN=dsn, **overrides
    )


def test_the_pgstac_asset_records_versions_and_passes_its_check(
    services_env: dict[str, str],
    s3_bucket: str,
    pgstac_dsn: str,
    pgstac_databases: PgstacDatabases,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = pgstac_settings_for(services_env, s3_bucket, pgstac_dsn, tmp_path, monkeypatch)
    fill_catalog(pgstac_dsn, {"demo": 3, "chelsa": 2})

    result = run_backup_job(settings, TODAY.isoformat())

    assert result.success
    metadata = materialization_metadata(result)
    database = database_of(pgstac_dsn)
    assert metadata["key"] == f"backups/{database}/{TODAY.isoformat()}.dump"
    assert metadata["catalog"] == f"127.0.0.1:5432/{database}"
    assert (metadata["collections"], metadata["items"]) == (2, 5)
    assert metadata["pg_dump_version"] == metadata["server_version"]
    assert metadata["pgstac_version"] == "0.10.0"
    [check] = result.get_asset_check_evaluations()
    assert check.passed
    assert pgstac_databases.leftovers(database) == []


def test_a_backup_that_cannot_be_verified_fails_the_run_and_keeps_old_backups(
    services_env: dict[str, str],
    s3_bucket: str,
    pgstac_dsn: str,
    pgstac_databases: PgstacDatabases,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker with pg_dump but no pg_restore: the dump is stored, the check fails, the run
    fails (the check blocks), and retention deletes nothing."""
    fill_catalog(pgstac_dsn, {"demo": 3})
    database = database_of(pgstac_dsn)
    store = s3_store(services_env, s3_bucket)
    old = store_backup(store, TODAY - timedelta(days=90), name=database)
    tools = tmp_path / "pg_dump_only"
    tools.mkdir()
    os.symlink(shutil.which("pg_dump") or "", tools / "pg_dump")
    settings = pgstac_settings_for(
        services_env, s3_bucket, pgstac_dsn, tmp_path, monkeypatch, BQ_PG_BIN_DIR=str(tools)
    )

    result = run_backup_job(settings, TODAY.isoformat())

    assert not result.success
    [check] = result.get_asset_check_evaluations()
    assert not check.passed
    assert "pg_restore not found" in metadata_value(check.metadata, "problems", list)[0]
    metadata = materialization_metadata(result)
    assert metadata["retention"] == "skipped: the backup did not verify"
    assert store.stat(old.key) is not None
    manifest = read_manifest(store, BackupKey.of(database, TODAY, "pgstac"))
    assert manifest is not None and manifest.verified is False
    assert pgstac_databases.leftovers(database) == []


def test_the_backup_partitions_start_before_today() -> None:
    assert date.fromisoformat(BACKUP_PARTITIONS.get_first_partition_key() or "") <= TODAY
    assert TODAY.isoformat() in BACKUP_PARTITIONS.get_partition_keys()
