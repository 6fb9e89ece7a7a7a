"""Command line: demo data, datasets and their partitions, what a dataset would publish and how
that compares with a catalog, adopting what a catalog already publishes, materializing a
dataset, auditing it against the object store, catalog backups and restores.

`bq-pipelines materialize demo` is what `make demo` runs. Runs are recorded in the persistent
Dagster instance of DAGSTER_HOME, or else of `$BQ_HOME/dagster` (what the Makefile sets), so that
skip-unchanged and run history work the same from any shell, and the UI (`make dev`) lists them
under the dataset's job. They execute in this process (seconds); `--launch` launches them through
the code location instead, as the UI would (slower: a code server and a run process start; the
UI can re-execute such runs).
"""

# The docstring above is `bq-pipelines --help`'s description.

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings
from collections.abc import Sequence

import dagster as dg

from bq_pipelines.backup import cli as backup_cli
from bq_pipelines.cli.adopt import add_adopt_parser, adopt_command
from bq_pipelines.cli.audit import add_audit_parser, audit_command
from bq_pipelines.cli.backups import backup_command, backup_now_command
from bq_pipelines.cli.common import Command
from bq_pipelines.cli.datasets import (
    add_dataset_parsers,
    datasets_command,
    demo_data_command,
    partitions_command,
)
from bq_pipelines.cli.materialize import add_materialize_parser, materialize_command
from bq_pipelines.cli.plans import (
    add_compare_parser,
    add_plan_parser,
    compare_command,
    plan_command,
)
from bq_pipelines.cli.status import add_status_parser, status_command
from bq_pipelines.lib.errors import ConfigError, PipelineError
from bq_pipelines.lib.garbage_collection import freeze_long_lived_objects
from bq_pipelines.settings import Settings

HANDLERS: dict[str, Command] = {
    "demo-data": demo_data_command,
    "datasets": datasets_command,
    "partitions": partitions_command,
    "plan": plan_command,
    "status": status_command,
    "compare": compare_command,
    "adopt": adopt_command,
    "materialize": materialize_command,
    "audit": audit_command,
    **dict.fromkeys(backup_cli.COMMANDS, backup_command),
    backup_cli.BACKUP_NOW: backup_now_command,
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = argparse.ArgumentParser(prog="bq-pipelines", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    add_dataset_parsers(commands)
    add_materialize_parser(commands)
    add_plan_parser(commands)
    add_status_parser(commands)
    add_compare_parser(commands)
    add_adopt_parser(commands)
    add_audit_parser(commands)
    backup_cli.add_commands(commands)
    return parser, HANDLERS


def main(argv: Sequence[str] | None = None) -> int:
    # Dagster's notes on its own beta parameters (used inside Dagster) are not for our users.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    # The modules imported (Dagster's, ours) live as long as the command: out of the collector's
    # passes (0.4-0.8 s of CPU less per command; lib/garbage_collection.py).
    freeze_long_lived_objects()
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    try:
        status = handlers[args.command](args, Settings.from_env(os.environ))
        sys.stdout.flush()  # a reader gone away shows here, not in the interpreter's exit
        return status
    except BrokenPipeError:
        return _reader_gone()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except PipelineError as error:  # a launch that failed, files that cannot be partitions...
        print(f"error: {error}", file=sys.stderr)
        return 1


def _reader_gone() -> int:
    """The reader of a listing closed it (`bq-pipelines partitions ... | head`): stop quietly,
    with the status of a command killed by SIGPIPE, as `cat` or `seq` would."""
    # Whatever is still buffered would fail again when Python flushes stdout at exit.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE
