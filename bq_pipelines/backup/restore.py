"""Restoring a backup in place of the live catalog, safely.

Download, check the sha256, restore into a new copy beside the target, check the copy holds
what the manifest recorded, then swap names: the old catalog is kept as
`<target>_before_<timestamp>`. Nothing is replaced until every check has passed; when one fails
the error says what is left and how to finish or roll back by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from bq_pipelines.backup.backend import CatalogBackend, Progress, log_progress
from bq_pipelines.backup.dump import read_manifest
from bq_pipelines.backup.manifest import BackupKey, CatalogState, Manifest
from bq_pipelines.backup.verify import fetch_checked
from bq_pipelines.lib.errors import BackupError
from bq_pipelines.lib.storage import ObjectStore

Confirm = Callable[[str], bool]


@dataclass(frozen=True)
class RestoreOutcome:
    key: str
    target: str
    state: CatalogState
    swapped: bool
    before: str | None  # where the replaced catalog was kept (None: there was none)
    seconds: float


def resolve_backup(
    backend: CatalogBackend, *, day: date | None = None, key: str | None = None
) -> BackupKey:
    """The backup a restore names: a day of the configured catalog, or a key."""
    if (day is None) == (key is None):
        raise BackupError("name a backup by its date or by its key (one of them)")
    if key is not None:
        parsed = BackupKey.parse(key)
        if parsed is None:
            raise BackupError(
                f"key {key!r} is not a backup (backups/<name>/<YYYY-MM-DD>.dump or .tar.gz); "
                "`bq-pipelines backups` lists them"
            )
    else:
        assert day is not None
        parsed = BackupKey.of(backend.name, day, backend.kind)
    if parsed.kind != backend.kind:
        raise BackupError(
            f"{parsed.key} is a {parsed.kind} backup and the configured catalog is {backend.kind} "
            f"({backend.describe()}): it cannot be restored there"
        )
    return parsed


def restore_backup(
    backend: CatalogBackend,
    store: ObjectStore,
    key: BackupKey,
    work_dir: Path,
    *,
    target: str | None = None,
    dry_run: bool = False,
    confirm: Confirm = lambda question: True,
    progress: Progress = log_progress,
) -> RestoreOutcome:
    started = time.monotonic()
    target = target or backend.default_target
    manifest = _complete_manifest(store, key)
    if manifest.verified is False:
        progress(f"warning: {key.key} failed its verification when it was taken")
    current = backend.state(target) if backend.exists(target) else None  # refuses a non-catalog
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    new, before = f"{target}_restore_{stamp}", f"{target}_before_{stamp}"

    archive = fetch_checked(store, key.key, manifest.sha256, work_dir, progress=progress)
    try:
        progress(f"restoring {key.key} into {backend.describe(new)}")
        found = backend.restore_copy(
            archive, new, like=target, made_by=manifest.versions.get("pg_dump"), progress=progress
        )
    finally:
        archive.unlink(missing_ok=True)
    problems = manifest.state.differences(found)
    if problems:
        raise BackupError(
            f"the restored copy {new} does not hold what {key.key} recorded: "
            f"{'; '.join(problems)}. {target} was not touched.\n"
            + backend.manual_swap(target, new, before)
        )
    progress(f"restored copy {new} verified: {found.counts()}, item ids match")
    if dry_run:
        backend.remove_copy(new)
        progress(f"dry run: {new} removed, {target} not touched")
        return RestoreOutcome(key.key, target, found, False, None, _since(started))
    question = (
        f"Replace {backend.describe(target)} "
        + (f"({current.counts()}) " if current else "")
        + f"with the backup of {key.day} ({found.counts()})"
        + (f", keeping the current one as {before}?" if current else "?")
    )
    if not confirm(question):
        backend.remove_copy(new)
        raise BackupError(f"restore cancelled: {target} not touched, {new} removed")
    progress(f"swapping {new} in place of {target}")
    backend.swap(target, new, before)
    progress(
        f"{target} now holds the backup of {key.day}"
        + (f"; the previous catalog is {before}" if current else "")
    )
    return RestoreOutcome(
        key.key, target, found, True, before if current else None, _since(started)
    )


def _complete_manifest(store: ObjectStore, key: BackupKey) -> Manifest:
    manifest = read_manifest(store, key)
    if manifest is None:
        what = "no backup" if store.stat(key.key) is None else "an incomplete backup"
        raise BackupError(
            f"{key.key}: {what} (no manifest {key.manifest_key}); `bq-pipelines backups` "
            "lists the complete ones"
        )
    return manifest


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)
