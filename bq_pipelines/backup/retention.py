"""Retention: which backups of a catalog to delete after a new one is verified.

A backup older than `days` is deleted unless it is among the newest `keep_last` verified ones
(whatever their age) or the one just taken. Verified means restored when it was taken *and*
still intact in the store now (its size and the checksum the store vouches for, checked on
every listing): a dump corrupted since never counts among the newest kept, so it can never
push a good one out. Only keys of the backup layout that have a manifest are deleted: anything
else under `backups/` (notes, a hand-made dump) was not written by us.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from bq_pipelines.backup.backend import Progress, log_progress
from bq_pipelines.backup.dump import read_manifest
from bq_pipelines.backup.manifest import BACKUP_PREFIX, BackupKey, Manifest, catalog_prefix
from bq_pipelines.backup.verify import StoredCheck, check_stored
from bq_pipelines.lib.storage import ObjectStore


@dataclass(frozen=True)
class RetentionPolicy:
    days: int = 30
    keep_last: int = 7
    dry_run: bool = False


@dataclass(frozen=True)
class StoredBackup:
    key: BackupKey
    manifest: Manifest | None  # None: an interrupted backup, or not one of ours
    stored: StoredCheck | None  # what the store holds now, against the manifest (None: none)

    @property
    def verified(self) -> bool:
        """Restorable when taken, and still the same bytes in the store."""
        return (
            self.manifest is not None
            and self.manifest.verified is True
            and self.stored is not None
            and self.stored.intact is True
        )

    @property
    def corrupt(self) -> bool:
        return self.stored is not None and self.stored.intact is False


@dataclass(frozen=True)
class RetentionPlan:
    keep: list[StoredBackup]
    delete: list[StoredBackup]
    untouched: list[StoredBackup]  # backup-shaped keys without a manifest

    @property
    def deleted_keys(self) -> list[str]:
        return [k for b in self.delete for k in (b.key.key, b.key.manifest_key)]


def list_backups(store: ObjectStore, name: str | None = None) -> list[StoredBackup]:
    """The backups of catalog `name` (default: of every catalog), oldest first."""
    prefix = catalog_prefix(name) if name else f"{BACKUP_PREFIX}/"
    keys = sorted(k for k in map(BackupKey.parse, store.list_keys(prefix)) if k is not None)
    return [_stored_backup(store, key) for key in keys]


def _stored_backup(store: ObjectStore, key: BackupKey) -> StoredBackup:
    manifest = read_manifest(store, key)
    stored = check_stored(store, manifest) if manifest is not None else None
    return StoredBackup(key, manifest, stored)


def plan_retention(
    backups: Sequence[StoredBackup],
    today: date,
    policy: RetentionPolicy,
    protect: BackupKey | None = None,
) -> RetentionPlan:
    newest = sorted((b for b in backups if b.verified), key=lambda b: b.key.day, reverse=True)
    protected = {b.key for b in newest[: policy.keep_last]} | ({protect} if protect else set())
    cutoff = today - timedelta(days=policy.days)
    plan = RetentionPlan([], [], [])
    for backup in backups:
        if backup.manifest is None:
            plan.untouched.append(backup)
        elif backup.key in protected or backup.key.day >= cutoff:
            plan.keep.append(backup)
        else:
            plan.delete.append(backup)
    return plan


def apply_retention(
    store: ObjectStore,
    name: str,
    today: date,
    policy: RetentionPolicy,
    *,
    protect: BackupKey | None = None,
    progress: Progress = log_progress,
) -> RetentionPlan:
    """Delete what `plan_retention` says (nothing with `dry_run`) and return the plan."""
    plan = plan_retention(list_backups(store, name), today, policy, protect)
    verb = "would delete" if policy.dry_run else "deleting"
    for backup in plan.delete:
        progress(f"retention: {verb} {backup.key.key}")
        if not policy.dry_run:
            # The dump first: a manifest left alone by a crash is tiny and harmless, a dump
            # left without its manifest would never be deleted.
            store.delete(backup.key.key)
            store.delete(backup.key.manifest_key)
    return plan
