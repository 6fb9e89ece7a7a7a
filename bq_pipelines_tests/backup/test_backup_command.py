"""`bq-pipelines backup [--date D]`: a backup taken now, verified and recorded as the scheduled
one would be (the same job, asset and blocking check), on the embedded defaults."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pystac
import pytest

from bq_pipelines.backup.assets import BACKUP_ASSET
from bq_pipelines.backup.dump import read_manifest
from bq_pipelines.backup.manifest import BackupKey
from bq_pipelines.cli import main
from bq_pipelines.lib.catalog import StaticCatalogPublisher
from bq_pipelines.lib.storage import LocalObjectStore
from bq_pipelines_tests.backup.helpers import collection_document, item_document

TODAY = datetime.now(UTC).date()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A static catalog of one collection and three items under BQ_HOME, a Dagster instance of
    its own (DAGSTER_HOME)."""
    for name in list(os.environ):
        if name.startswith("BQ_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BQ_HOME", str(tmp_path / "bq"))
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text("")  # Dagster's default storage
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    publisher = StaticCatalogPublisher(tmp_path / "bq" / "catalog")
    publisher.upsert_collection(pystac.Collection.from_dict(collection_document("demo")))
    for i in range(3):
        publisher.upsert_item(pystac.Item.from_dict(item_document("demo", f"demo-{i}")))
    return tmp_path / "bq"


def test_backup_now_is_verified_and_recorded_as_the_days_partition(home: Path, capsys) -> None:
    day = TODAY - timedelta(days=1)

    assert main(["backup", "--date", day.isoformat()]) == 0

    out = capsys.readouterr().out
    key = f"backups/catalog/{day.isoformat()}.tar.gz"
    assert f"backup {day.isoformat()}: {key}, " in out
    assert "1 collection, 3 items" in out  # counts in words, singular where one
    assert "verified (restored into a scratch copy)" in out
    store = LocalObjectStore(home / "objects")
    manifest = read_manifest(store, BackupKey.of("catalog", day, "static"))
    assert manifest is not None and manifest.verified is True
    # Recorded as the scheduled backup is: the asset's partition for that day, with its check.
    with dg.DagsterInstance.get() as instance:
        [record] = instance.fetch_materializations(BACKUP_ASSET, limit=10).records
        assert record.partition_key == day.isoformat()
        checks = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(BACKUP_ASSET, "restorable"), limit=10
        )
        assert checks[0].status.value == "SUCCEEDED"  # the newest


def test_backup_now_defaults_to_today(home: Path, capsys) -> None:
    assert main(["backup"]) == 0
    assert f"backup {TODAY.isoformat()}: backups/catalog/{TODAY.isoformat()}.tar.gz" in (
        capsys.readouterr().out
    )


def test_a_day_outside_the_backup_partitions_is_refused(home: Path, capsys) -> None:
    assert main(["backup", "--date", "2001-01-01"]) == 2
    assert "--date: 2001-01-01 is not a backup day (from 2026-11-01 to" in capsys.readouterr().err
    assert not (home / "objects").exists()  # nothing was taken
    with pytest.raises(SystemExit):
        main(["backup", "--date", "yesterday"])
    assert "'yesterday' is not a date (YYYY-MM-DD)" in capsys.readouterr().err


def test_a_backup_that_fails_exits_1_naming_why(home: Path, capsys) -> None:
    # A static catalog that is not there: nothing to back up.
    (home / "catalog" / "catalog.json").unlink()

    assert main(["backup"]) == 1

    captured = capsys.readouterr()
    assert "FAILED" in captured.out
    assert captured.err.strip()  # the step's error
