"""Retention on both object stores: the right backups go, everything else stays."""

from __future__ import annotations

import argparse
import io
import os
from datetime import date, timedelta

import pytest

from bq_pipelines.backup.cli import run as run_backup_cli
from bq_pipelines.backup.manifest import BackupKey
from bq_pipelines.backup.retention import (
    RetentionPolicy,
    StoredBackup,
    apply_retention,
    list_backups,
    plan_retention,
)
from bq_pipelines.backup.static import StaticCatalog
from bq_pipelines.backup.verify import StoredCheck
from bq_pipelines.lib.storage import LocalObjectStore, ObjectStore, S3ObjectStore
from bq_pipelines_tests.backup.helpers import BACKUP_NAME, manifest_for, store_backup

TODAY = date(2026, 11, 27)


def store_foreign_objects(store: ObjectStore) -> list[str]:
    """Objects that are not backups of BACKUP_NAME, some of them shaped very much like one."""
    keys = [
        f"backups/{BACKUP_NAME}/notes.txt",
        f"backups/{BACKUP_NAME}/2025-01-01.dump.bak",
        f"backups/{BACKUP_NAME}/manual.dump",
        f"backups/{BACKUP_NAME}/2025-01-02.dump",  # backup-shaped, no manifest: not provably ours
        "io/demo/2025-01-01.dump",
    ]
    for key in keys:
        store.put_stream(io.BytesIO(b"not ours"), key, content_type="text/plain")
    store_backup(store, date(2025, 1, 1), name="other_catalog")  # another catalog's own
    return keys


def days_back(first: int, count: int) -> list[date]:
    return [TODAY - timedelta(days=first + n) for n in range(count)]


def without(keys: list[str], deleted: list[str]) -> list[str]:
    gone = set(deleted) | {f"{k}.sha256" for k in deleted}
    return [k for k in keys if k not in gone]


def test_forty_daily_backups_keep_the_last_thirty_days(backup_store: ObjectStore) -> None:
    for day in days_back(0, 40):
        store_backup(backup_store, day)
    foreign = store_foreign_objects(backup_store)
    before = backup_store.list_keys("")

    plan = apply_retention(backup_store, BACKUP_NAME, TODAY, RetentionPolicy(days=30, keep_last=7))

    deleted_days = days_back(31, 9)  # 31 to 39 days old
    expected_deleted = [
        k
        for day in sorted(deleted_days)
        for k in (
            BackupKey.of(BACKUP_NAME, day, "pgstac").key,
            BackupKey.of(BACKUP_NAME, day, "pgstac").manifest_key,
        )
    ]
    assert plan.deleted_keys == expected_deleted
    assert backup_store.list_keys("") == without(before, expected_deleted)
    remaining = [b.key.day for b in list_backups(backup_store, BACKUP_NAME)]
    assert remaining == sorted([*days_back(0, 31), date(2025, 1, 2)])
    for key in foreign:
        assert backup_store.get_bytes(key) == b"not ours"
    assert [b.key.name for b in list_backups(backup_store, "other_catalog")] == ["other_catalog"]


def test_the_newest_verified_backups_survive_whatever_their_age(
    backup_store: ObjectStore,
) -> None:
    old_days = days_back(100, 40)  # all far older than the retention window
    unverified = old_days[:3]  # the three newest failed their verification
    for day in old_days:
        store_backup(backup_store, day, verified=day not in unverified)
    before = backup_store.list_keys("")

    plan = apply_retention(backup_store, BACKUP_NAME, TODAY, RetentionPolicy(days=30, keep_last=7))

    assert sorted(b.key.day for b in plan.keep) == sorted(old_days[3:10])
    assert {b.key.day for b in plan.delete} == set(old_days) - set(old_days[3:10])
    assert backup_store.list_keys("") == without(before, plan.deleted_keys)


def test_dry_run_deletes_nothing_and_says_what_it_would(backup_store: ObjectStore) -> None:
    for day in days_back(0, 40):
        store_backup(backup_store, day)
    before = backup_store.list_keys("")

    plan = apply_retention(backup_store, BACKUP_NAME, TODAY, RetentionPolicy(30, 7, dry_run=True))

    assert len(plan.delete) == 9
    assert backup_store.list_keys("") == before


def stored(day: date, verified: bool | None = True) -> StoredBackup:
    key = BackupKey.of(BACKUP_NAME, day, "pgstac")
    return StoredBackup(key, manifest_for(key, verified=verified), StoredCheck(True))


@pytest.mark.parametrize("days", [1, 30, 365])
def test_the_window_boundary_is_inclusive(days: int) -> None:
    edge, past = TODAY - timedelta(days=days), TODAY - timedelta(days=days + 1)
    plan = plan_retention([stored(past), stored(edge)], TODAY, RetentionPolicy(days, keep_last=1))
    assert [b.key.day for b in plan.keep] == [edge]
    assert [b.key.day for b in plan.delete] == [past]


def test_the_backup_just_taken_is_never_deleted() -> None:
    # A backfill of an old day that did not verify is still not deleted by its own run.
    old = stored(TODAY - timedelta(days=90), verified=False)
    plan = plan_retention(
        [old, stored(TODAY)], TODAY, RetentionPolicy(30, keep_last=1), protect=old.key
    )
    assert plan.delete == []


# --- backups corrupted after they were taken --------------------------------------------------


def corrupt(store: ObjectStore, key: BackupKey, how: str) -> None:
    """Damage a stored dump behind the platform's back: same size with other bytes (the local
    file's mtime put back; on S3 its metadata copied), or truncated."""
    garbage = b"dum" if how == "truncated" else b"DUMP"
    if isinstance(store, LocalObjectStore):
        path = store.root / key.key
        before = path.stat()
        path.write_bytes(garbage)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        return
    assert isinstance(store, S3ObjectStore)
    head = store.client.head_object(Bucket=store.bucket, Key=key.key)
    store.client.put_object(
        Bucket=store.bucket, Key=key.key, Body=garbage, Metadata=head["Metadata"]
    )


def test_corrupt_backups_never_count_among_the_newest_kept(backup_store: ObjectStore) -> None:
    # Five backups all past the window, keep_last 3: the two newest were corrupted since.
    days = days_back(100, 5)
    keys = [store_backup(backup_store, day) for day in days]
    corrupt(backup_store, keys[0], "same size")
    corrupt(backup_store, keys[1], "truncated")

    listed = {b.key.day: b for b in list_backups(backup_store, BACKUP_NAME)}
    assert [listed[day].corrupt for day in days] == [True, True, False, False, False]
    assert not listed[days[0]].verified and listed[days[2]].verified
    assert f"{keys[1].key} is 3 bytes, 4 when it was taken" == listed[days[1]].stored.detail  # type: ignore[union-attr]
    assert "has sha256" in listed[days[0]].stored.detail  # type: ignore[union-attr]

    plan = apply_retention(backup_store, BACKUP_NAME, TODAY, RetentionPolicy(days=30, keep_last=3))

    # The three good ones are kept; the corrupt ones, past the window, go.
    assert sorted(b.key.day for b in plan.keep) == sorted(days[2:])
    assert sorted(b.key.day for b in plan.delete) == sorted(days[:2])
    assert [b.key.day for b in list_backups(backup_store, BACKUP_NAME)] == sorted(days[2:])


def test_the_backups_command_lists_a_corrupt_backup_as_corrupt(
    backup_store: ObjectStore, tmp_path
) -> None:
    good, bad = (store_backup(backup_store, day) for day in days_back(1, 2))
    corrupt(backup_store, bad, "same size")
    out = io.StringIO()

    status = run_backup_cli(
        argparse.Namespace(command="backups", all=False),
        backup_store,
        StaticCatalog(tmp_path / BACKUP_NAME, tmp_path / "work"),  # the catalog named BACKUP_NAME
        tmp_path,
        out=out,
    )

    assert status == 0
    lines = out.getvalue().splitlines()
    [bad_line] = [line for line in lines if line.endswith(bad.key)]
    [good_line] = [line for line in lines if line.endswith(good.key)]
    assert " CORRUPT " in bad_line and " yes " in good_line
    assert any(f"{bad.key} has sha256" in line for line in lines)
