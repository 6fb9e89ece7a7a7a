"""`bq-pipelines backups` and `bq-pipelines restore`: the backup commands of the CLI.

Registered by bq_pipelines.cli.main; the object store and catalog backend come from the code
location's resources, so the commands see exactly what the scheduled backups write.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date
from pathlib import Path
from typing import TextIO

from bq_pipelines.backup.backend import CatalogBackend
from bq_pipelines.backup.restore import resolve_backup, restore_backup
from bq_pipelines.backup.retention import StoredBackup, list_backups
from bq_pipelines.lib.errors import BackupError, StorageError
from bq_pipelines.lib.storage import ObjectStore

COMMANDS = ("backups", "restore")
# Runs the backup asset through Dagster: handled by bq_pipelines.cli.backups, not by `run` below.
BACKUP_NOW = "backup"


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    now = commands.add_parser(
        BACKUP_NOW,
        help="back up the catalog now, verified as the daily backup is",
        description=(
            "Run the daily backup's job for one day (default: today, UTC): dump the catalog into "
            "the object store, restore it into a scratch copy to verify it, then apply retention. "
            "Recorded in the Dagster instance as the day's catalog_backup partition."
        ),
    )
    now.add_argument("--date", type=_day, help="the day to record the backup under (YYYY-MM-DD)")
    listing = commands.add_parser("backups", help="list the catalog backups in the object store")
    listing.add_argument(
        "--all", action="store_true", help="every catalog's backups, not only the configured one"
    )
    restore = commands.add_parser(
        "restore",
        help="restore a catalog backup: verified, then swapped in place of the catalog",
        description=(
            "Download a backup, check its sha256, restore it into a new copy, check its counts, "
            "then swap it in place of the target, keeping the old one as "
            "<target>_before_<timestamp>."
        ),
    )
    which = restore.add_mutually_exclusive_group(required=True)
    which.add_argument("--date", type=_day, help="the day of the backup (YYYY-MM-DD)")
    which.add_argument("--key", help="the backup's object key (see `bq-pipelines backups`)")
    restore.add_argument(
        "--target",
        help="the database (pgstac) or folder (static catalog) to replace; "
        "default: the configured catalog",
    )
    restore.add_argument(
        "--dry-run",
        action="store_true",
        help="restore into a scratch copy, verify it and drop it; replace nothing (a drill)",
    )
    restore.add_argument("--yes", action="store_true", help="replace without asking")


def run(
    args: argparse.Namespace,
    store: ObjectStore,
    backend: CatalogBackend,
    work_dir: Path,
    *,
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    # Looked up at call time: tests and callers may have replaced the standard streams.
    stdin, out, err = stdin or sys.stdin, out or sys.stdout, err or sys.stderr
    try:
        if args.command == "backups":
            return _list(store, backend, out, every=args.all)
        return _restore(args, store, backend, work_dir, stdin, out, err)
    except (BackupError, StorageError) as error:
        print(f"error: {error}", file=err)
        return 1


def _list(store: ObjectStore, backend: CatalogBackend, out: TextIO, *, every: bool) -> int:
    backups = list_backups(store, None if every else backend.name)
    if not backups:
        where = "backups/" if every else f"backups/{backend.name}/"
        print(f"no backups under {where}", file=out)
        return 0
    print(
        f"{'date':10}  {'catalog':24}  {'kind':6}  {'size':>10}  {'collections':>11}  "
        f"{'items':>9}  {'verified':8}  key",
        file=out,
    )
    for backup in backups:
        manifest = backup.manifest
        if manifest is None:
            size, collections, items = "?", "?", "?"
        else:
            size = _size(manifest.size)
            collections, items = str(manifest.state.collections), str(manifest.state.items)
        print(
            f"{backup.key.day.isoformat():10}  {backup.key.name:24}  {backup.key.kind:6}  "
            f"{size:>10}  {collections:>11}  {items:>9}  {_verified(backup):8}  {backup.key.key}",
            file=out,
        )
        if backup.stored is not None and backup.stored.detail:
            print(f"{'':12}{backup.stored.detail}", file=out)
    return 0


def _verified(backup: StoredBackup) -> str:
    """yes: restored when taken and intact in the store now; CORRUPT: the stored object is not
    what was taken; unchecked: the store vouches for no checksum of it."""
    if backup.manifest is None:
        return "incomplete"
    if backup.manifest.verified is not True:
        return {False: "FAILED", None: "no"}[backup.manifest.verified]
    assert backup.stored is not None
    return "yes" if backup.stored.intact else backup.stored.label


def _restore(
    args: argparse.Namespace,
    store: ObjectStore,
    backend: CatalogBackend,
    work_dir: Path,
    stdin: TextIO,
    out: TextIO,
    err: TextIO,
) -> int:
    interactive = stdin.isatty()
    if not (args.yes or args.dry_run or interactive):
        # Say so before downloading anything, not after a long restore.
        raise BackupError("restore replaces the catalog: confirm with --yes (no terminal to ask)")
    key = resolve_backup(backend, day=args.date, key=args.key)
    started = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {message}", file=err, flush=True)

    def confirm(question: str) -> bool:
        if args.yes:
            return True
        print(f"{question} Type 'yes' to proceed: ", end="", file=out, flush=True)
        return stdin.readline().strip().lower() == "yes"

    outcome = restore_backup(
        backend,
        store,
        key,
        work_dir,
        target=args.target,
        dry_run=args.dry_run,
        confirm=confirm,
        progress=progress,
    )
    state = outcome.state
    if not outcome.swapped:
        print(
            f"dry run: {outcome.key} restores ({state.counts()}, ids match) in "
            f"{outcome.seconds:.1f} s; {outcome.target} not touched",
            file=out,
        )
        return 0
    print(
        f"restored {outcome.key} into {outcome.target}: {state.counts()} in "
        f"{outcome.seconds:.1f} s"
        + (f"; the previous catalog is kept as {outcome.before}" if outcome.before else ""),
        file=out,
    )
    return 0


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def _size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
