"""`backups`, `restore` and the other catalog backup commands (backup/cli.py), and `backup-now`,
which runs the backup asset through Dagster."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from bq_pipelines.backup.assets import BackupRun, backup_now, run_backup_command
from bq_pipelines.cli.common import code_location, instance_for
from bq_pipelines.lib.words import plural
from bq_pipelines.settings import Settings


def backup_command(args: argparse.Namespace, settings: Settings) -> int:
    return run_backup_command(args, code_location())


def backup_now_command(args: argparse.Namespace, settings: Settings) -> int:
    day = args.date or datetime.now(UTC).date()
    outcome = backup_now(code_location(), instance_for(settings), day)
    print_backup(outcome)
    return 0 if outcome.success else 1


def print_backup(outcome: BackupRun) -> None:
    found = outcome.metadata
    if found:
        counts = f"{plural(found['collections'], 'collection')}, {plural(found['items'], 'item')}"
        print(f"backup {outcome.day}: {found['key']}, {found['size_bytes']:,} bytes, {counts}")
        deleted = found.get("retention_deleted", found.get("retention_would_delete"))
        if deleted is not None:
            verb = "would delete" if "retention_would_delete" in found else "deleted"
            print(f"retention: {verb} {plural(len(deleted), 'object')}")
    state = "verified (restored into a scratch copy)" if outcome.success else "FAILED"
    print(f"run {outcome.run_id[:8]}: {state}")
    for problem in outcome.problems:
        print(problem, file=sys.stderr)
