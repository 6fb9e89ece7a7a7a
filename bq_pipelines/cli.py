"""Command line: demo data, datasets and their partitions, materializing a dataset, auditing it
against the object store, catalog backups and restores.

`bq-pipelines materialize demo` is what `make demo` runs. With DAGSTER_HOME set (the Makefile
sets it to .bq/dagster), runs are launched through the code location into that instance, so
the UI (`make dev`) lists them under the dataset's job; without it they run in-process on a
temporary instance.
"""

from __future__ import annotations

import argparse
import difflib
import os
import signal
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from bq_pipelines.audit import AuditReport, audit, delete_orphans
from bq_pipelines.backup import cli as backup_cli
from bq_pipelines.backup_assets import run_backup_command
from bq_pipelines.declarations import Declaration, load_declarations
from bq_pipelines.definitions import defs
from bq_pipelines.demo import write_demo_rasters
from bq_pipelines.factory import (
    FORCE_TAG,
    all_partition_dimensions,
    discover_files,
    op_name,
)
from bq_pipelines.launch import (
    Materialization,
    RunReport,
    code_location_launcher,
    materialize,
)
from bq_pipelines.lib.errors import ConfigError, PipelineError
from bq_pipelines.lib.redaction import redact_url
from bq_pipelines.resources import services_for
from bq_pipelines.settings import Settings

Command = Callable[[argparse.Namespace, Settings], int]
SUGGESTIONS = 5


# ------------------------------------------------------------------------------ helpers


def _declaration(dataset_id: str) -> Declaration:
    declarations = {d.id: d for d in load_declarations()}
    if dataset_id not in declarations:
        close = difflib.get_close_matches(dataset_id, list(declarations), n=SUGGESTIONS)
        hint = f"closest: {', '.join(close)}; " if close else ""
        raise ConfigError(
            f"dataset {dataset_id!r}: not declared ({hint}see `bq-pipelines datasets`)"
        )
    return declarations[dataset_id]


def _instance() -> dg.DagsterInstance:
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    print(
        "DAGSTER_HOME is not set: runs go to a temporary instance (not visible in the UI)",
        file=sys.stderr,
    )
    return dg.DagsterInstance.ephemeral()


def partition_keys(
    declaration: Declaration,
    definitions: dg.Definitions,
    instance: dg.DagsterInstance,
    settings: Settings,
) -> list[str]:
    """Every partition key of the dataset; file partitions are discovered (and added to the
    instance, as the files sensor would) first."""
    partitions_def = definitions.resolve_job_def(op_name(declaration.id, "job")).partitions_def
    assert partitions_def is not None
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        found = discover_files(declaration, settings.local_data_root)
        instance.add_dynamic_partitions(partitions_def.name or "", found)
    return list(partitions_def.get_partition_keys(dynamic_partitions_store=instance))


def closest_keys(key: str, valid: Sequence[str], count: int = SUGGESTIONS) -> list[str]:
    """Valid keys closest to `key`: the same dimension values in another order first (`pet|1985-07`
    for `1985-07|pet`), then by similarity."""
    parts = sorted(key.split("|"))
    reordered = [k for k in valid if k != key and sorted(k.split("|")) == parts]
    similar = difflib.get_close_matches(key, valid, n=count, cutoff=0.0)
    return list(dict.fromkeys([*reordered, *similar]))[:count]


def check_partitions(dataset_id: str, wanted: Sequence[str], valid: Sequence[str]) -> None:
    """ConfigError listing each unknown key with the closest valid ones."""
    known = set(valid)
    unknown = [key for key in wanted if key not in known]
    if unknown:
        lines = [
            f"  {key!r}: closest valid keys: {', '.join(closest_keys(key, valid))}"
            for key in unknown
        ]
        raise ConfigError(
            f"dataset {dataset_id!r}: unknown partition key(s) (`bq-pipelines partitions "
            f"{dataset_id}` lists them all):\n" + "\n".join(lines)
        )


def _run_line(report: RunReport) -> str:
    if report.partitions:
        first, last = report.partitions[0], report.partitions[-1]
        label = first if first == last else f"{first} .. {last}"
        if report.collection_published is not None:
            label += " + collection"
    else:
        label = "collection"
    line = f"run {report.run_id[:8]} [{label}]: {'ok' if report.success else 'FAILED'}"
    if report.partitions:
        line += f", {report.published} published, {report.skipped} skipped, {report.failed} failed"
    if report.collection_published is False:
        line += ", collection not published"
    return line


def print_run(report: RunReport) -> None:
    print(_run_line(report), flush=True)
    for message in report.failures:
        print(message, file=sys.stderr, flush=True)


def print_totals(done: Materialization) -> None:
    partitions = done.published + done.skipped + done.failed
    print(
        f"total: {partitions} partitions, {done.published} published, {done.skipped} skipped, "
        f"{done.failed} failed"
    )
    if not done.collection_published:
        succeeded = done.published + done.skipped
        reason = "no partition succeeded" if not succeeded else "its run failed, see above"
        print(f"collection {done.dataset_id}: not published ({reason})")


def _resources(definitions: dg.Definitions) -> Mapping[str, Any]:
    if definitions.resources is None:
        raise RuntimeError("the definitions carry no resources")
    return definitions.resources


def _print_catalog(
    declaration: Declaration, definitions: dg.Definitions, settings: Settings
) -> None:
    # Resolved as a run resolves it: its secrets (EnvVar) are read now, not in the definition.
    catalog = _resources(definitions)["catalog"].process_config_and_initialize()
    items = list(catalog.publisher().iter_items(declaration.id))
    where = (
        redact_url(settings.stac_api_url or "")
        if settings.catalog == "stac-api"
        else (settings.catalog_dir.absolute() / "catalog.json")
    )
    print(f"\ncollection {declaration.id}: {len(items)} items in {where}")
    for item in items:
        asset = next(iter(item["assets"].values()))
        print(f"  {item['id']}: {redact_url(asset['href'])}")


# ---------------------------------------------------------------------------- commands


def demo_data_command(args: argparse.Namespace, settings: Settings) -> int:
    for path, written in write_demo_rasters(args.root or settings.local_data_root):
        print(f"{path} ({'written' if written else 'unchanged'})")
    return 0


def datasets_command(args: argparse.Namespace, settings: Settings) -> int:
    for declaration in load_declarations():
        print(f"{declaration.id:32} {declaration.title}")
    return 0


def partitions_command(args: argparse.Namespace, settings: Settings) -> int:
    declaration = _declaration(args.dataset)
    for key in partition_keys(declaration, defs(), _instance(), settings):
        print(key)
    return 0


def materialize_command(args: argparse.Namespace, settings: Settings) -> int:
    declaration = _declaration(args.dataset)
    definitions = defs()
    instance = _instance()
    valid = partition_keys(declaration, definitions, instance, settings)
    check_partitions(declaration.id, args.partition or [], valid)
    wanted = args.partition or valid
    if not wanted:
        raise ConfigError(f"dataset {declaration.id!r}: no partitions to materialize")
    done = _materialize(declaration, definitions, wanted, instance, force=args.force)
    print_totals(done)
    _print_catalog(declaration, definitions, settings)
    return 0 if done.ok else 1


def _materialize(
    declaration: Declaration,
    definitions: dg.Definitions,
    wanted: Sequence[str],
    instance: dg.DagsterInstance,
    *,
    force: bool,
) -> Materialization:
    tags = {FORCE_TAG: "true"} if force else {}
    if os.environ.get("DAGSTER_HOME"):
        with code_location_launcher(definitions, instance) as launcher:
            return materialize(
                declaration, definitions, wanted, instance, launcher, print_run, tags
            )
    return materialize(declaration, definitions, wanted, instance, on_run=print_run, tags=tags)


def print_audit(report: AuditReport) -> None:
    print(report.summary(), flush=True)
    for name, entries in report.listing().items():
        if entries:
            print(f"  {name}:")
            for entry in entries:
                print(f"    {entry}")


def audit_command(args: argparse.Namespace, settings: Settings) -> int:
    declaration = _declaration(args.dataset)
    definitions = defs()
    instance = _instance()
    partition_keys(declaration, definitions, instance, settings)  # file partitions discovered
    job = definitions.resolve_job_def(op_name(declaration.id, "job"))
    assert job.partitions_def is not None
    partitions = all_partition_dimensions(declaration, job.partitions_def, instance)
    names = ("object_store", "catalog", "sources", "locks")
    # Built as Dagster would for a run: EnvVar secrets (STAC API token, DSN) are resolved here.
    resources = _resources(definitions)
    with dg.build_resources({name: resources[name] for name in names}) as built:
        services = services_for(built.object_store, built.catalog, built.sources)
        locations = built.sources.locations()
        report = audit(declaration, partitions, services, locations)
        print_audit(report)
        if not args.fix or report.clean:
            return 0 if report.clean else 1
        deleted = delete_orphans(
            report, declaration, partitions, services, locations, built.locks.locks()
        )
        print(f"deleted {len(deleted)} orphan objects")
        if report.affected_partitions:
            print(f"re-publishing {len(report.affected_partitions)} partitions")
            done = _materialize(
                declaration, definitions, report.affected_partitions, instance, force=True
            )
            print_totals(done)
        report = audit(declaration, partitions, services, locations)
        print_audit(report)
    if report.outside_partitions:
        print(
            f"{len(report.outside_partitions)} items lie outside the dataset's partitions: "
            "--fix leaves them (a partition removed from the declaration?); delete them from "
            "the catalog by hand if they are not wanted",
            file=sys.stderr,
        )
    return 0 if report.clean else 1


def backup_command(args: argparse.Namespace, settings: Settings) -> int:
    return run_backup_command(args, defs())


# -------------------------------------------------------------------------------- main


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = argparse.ArgumentParser(prog="bq-pipelines", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo-data", help="write the demo dataset's rasters if missing")
    demo.add_argument("--root", type=Path, help="local data root (default BQ_LOCAL_DATA_ROOT)")
    commands.add_parser("datasets", help="list the declared datasets")
    listing = commands.add_parser("partitions", help="list a dataset's partition keys")
    listing.add_argument("dataset")
    run = commands.add_parser("materialize", help="materialize a dataset's partitions")
    run.add_argument("dataset")
    run.add_argument("--partition", action="append", help="a partition key (default: all)")
    run.add_argument(
        "--force",
        action="store_true",
        help=f"redo every partition, even unchanged ones (run tag {FORCE_TAG}=true)",
    )
    check = commands.add_parser(
        "audit", help="compare a dataset's catalog items with the objects in the store"
    )
    check.add_argument("dataset")
    check.add_argument(
        "--fix",
        action="store_true",
        help="delete orphan objects and re-publish the partitions of missing or changed objects",
    )
    backup_cli.add_commands(commands)
    handlers: dict[str, Command] = {
        "demo-data": demo_data_command,
        "datasets": datasets_command,
        "partitions": partitions_command,
        "materialize": materialize_command,
        "audit": audit_command,
        **dict.fromkeys(backup_cli.COMMANDS, backup_command),
    }
    return parser, handlers


def main(argv: Sequence[str] | None = None) -> int:
    # Dagster's notes on its own beta parameters (used inside Dagster) are not for our users.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
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


if __name__ == "__main__":
    sys.exit(main())
