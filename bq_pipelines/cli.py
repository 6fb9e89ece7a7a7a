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

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg

from bq_pipelines.backup import cli as backup_cli
from bq_pipelines.backup.assets import BackupRun, backup_now, run_backup_command
from bq_pipelines.datasets.audit import AuditReport, audit, delete_orphans
from bq_pipelines.datasets.comparison import PlannedItem, compare, planned_items, report_lines
from bq_pipelines.datasets.demo import write_demo_rasters
from bq_pipelines.datasets.loading import load_declarations
from bq_pipelines.datasets.plans import SourceLocations
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.catalog import open_catalog
from bq_pipelines.lib.errors import ConfigError, PipelineError
from bq_pipelines.lib.files import exclusive_lock, write_text_atomically
from bq_pipelines.lib.pipeline import ItemPlan, Services, fingerprint, probe_sources
from bq_pipelines.lib.redaction import redact_url
from bq_pipelines.lib.words import plural
from bq_pipelines.orchestration.assets import partition_code_version
from bq_pipelines.orchestration.checks import all_partition_dimensions
from bq_pipelines.orchestration.factory import build_dataset
from bq_pipelines.orchestration.jobs import discover_files
from bq_pipelines.orchestration.keys import keys_by_dimension, op_name, partitions_definition
from bq_pipelines.orchestration.materialize import FORCE_TAG
from bq_pipelines.orchestration.resources import quick_catalog, resources_for, services_for
from bq_pipelines.orchestration.status import SourcesCheck, dataset_status
from bq_pipelines.runtime.launch import (
    InProcessLauncher,
    Materialization,
    RunReport,
    code_location_launcher,
    code_location_tags,
    materialize,
)
from bq_pipelines.settings import Settings

Command = Callable[[argparse.Namespace, Settings], int]
PROJECT_ROOT = Path(__file__).resolve().parent.parent
SUGGESTIONS = 5
INSTANCE_FOLDER = "dagster"
# After a run, the catalog is read for its listing with these bounds: a catalog that does not
# answer must not keep the command waiting on a result it already has.
LISTING_TIMEOUT_SECONDS = 3.0


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


def dataset_definitions(declaration: Declaration, settings: Settings) -> dg.Definitions:
    """The dataset's assets, jobs and the resources the settings choose: what its commands run,
    named as in the code location (the same jobs, asset keys and instance), without loading
    every other dataset, the ingestion API and the executors."""
    return dg.Definitions.merge(
        build_dataset(declaration, settings), dg.Definitions(resources=resources_for(settings))
    )


def code_location() -> dg.Definitions:
    """The whole code location (the backup's commands need its backup job and resources)."""
    # Imported here: loading every dataset, the API and the Celery executor costs a dataset's
    # commands seconds they do not need.
    from bq_pipelines.definitions import defs

    return defs()


def _instance(settings: Settings) -> dg.DagsterInstance:
    """The persistent instance: DAGSTER_HOME's, else `$BQ_HOME/dagster` (as `make` sets it),
    created with the project's dagster.yaml the first time."""
    if not os.environ.get("DAGSTER_HOME"):
        home = settings.home.absolute() / INSTANCE_FOLDER
        if not home.is_dir():
            home.mkdir(parents=True, exist_ok=True)
            print(f"runs are recorded in {home} (the Dagster instance)", file=sys.stderr)
        template = PROJECT_ROOT / "dagster.yaml"  # the project's, as `make` copies it
        if not (home / "dagster.yaml").exists() and template.is_file():
            write_text_atomically(home / "dagster.yaml", template.read_text(encoding="utf-8"))
        # Child processes (a code location launch) must open the same instance.
        os.environ["DAGSTER_HOME"] = str(home)
    home = Path(os.environ["DAGSTER_HOME"])
    # Two commands started together on a new instance would both create its storage (two
    # schema stamps, which Dagster then refuses): one does it, under a lock, the other waits.
    with exclusive_lock(home / ".instance.lock"):
        instance = dg.DagsterInstance.get()
        instance.get_run_records(limit=1)
    return instance


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


def selected_partitions(
    declaration: Declaration, settings: Settings, wanted: Sequence[str] | None
) -> dict[str, dict[str, str]]:
    """The dimension values of the `wanted` partitions (all by default), without loading the
    code location: file partitions are the files present under the data root."""
    partitions_def = partitions_definition(declaration.id, declaration.partitions)
    if isinstance(partitions_def, dg.DynamicPartitionsDefinition):
        valid = discover_files(declaration, settings.local_data_root)
    else:
        valid = list(partitions_def.get_partition_keys())
    check_partitions(declaration.id, wanted or [], valid)
    return {key: keys_by_dimension(declaration, partitions_def, key) for key in (wanted or valid)}


def planned_for(
    declaration: Declaration, settings: Settings, wanted: Sequence[str] | None
) -> list[PlannedItem]:
    """The items of the partitions, with the hrefs the settings in effect give them."""
    partitions = selected_partitions(declaration, settings, wanted)
    resource = resources_for(settings)["object_store"]
    with dg.build_resources({"object_store": resource}) as built:
        store = built.object_store.store()
        locations = SourceLocations(
            base_urls=dict(settings.source_base_urls), local_root=settings.local_data_root
        )
        return planned_items(declaration, partitions, store, built.object_store.prefix, locations)


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
        f"total: {plural(partitions, 'partition')}, {done.published} published, "
        f"{done.skipped} skipped, {done.failed} failed"
    )
    if not done.collection_published:
        succeeded = done.published + done.skipped
        reason = "no partition succeeded" if not succeeded else "its run failed, see above"
        print(f"collection {done.dataset_id}: not published ({reason})")


def _resources(definitions: dg.Definitions) -> Mapping[str, Any]:
    if definitions.resources is None:
        raise RuntimeError("the definitions carry no resources")
    return definitions.resources


def _print_catalog(declaration: Declaration, settings: Settings, *, published: bool) -> None:
    """The collection's items as the catalog now lists them, read within a few seconds (a
    catalog that does not answer is said so, not waited for)."""
    where = (
        redact_url(settings.stac_api_url or "")
        if settings.catalog == "stac-api"
        else (settings.catalog_dir.absolute() / "catalog.json")
    )
    resource = quick_catalog(settings, LISTING_TIMEOUT_SECONDS)
    try:
        with dg.build_resources({"catalog": resource}) as built:
            items = list(built.catalog.publisher().iter_items(declaration.id))
    except PipelineError as error:
        print(f"\ncollection {declaration.id}: the catalog at {where} did not answer: {error}")
        return
    held = f"{plural(len(items), 'item')} in {where}"
    if published:
        print(f"\ncollection {declaration.id}: {held}")
    elif items:
        print(f"\nthe catalog still holds {held}, from earlier runs")
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
    definitions = dataset_definitions(declaration, settings)
    for key in partition_keys(declaration, definitions, _instance(settings), settings):
        print(key)
    return 0


@contextlib.contextmanager
def built_services_for(definitions: dg.Definitions) -> Iterator[Services]:
    """The core library's services, its resources built as Dagster would for a run (EnvVar
    secrets, the STAC API token or the DSN, resolved here)."""
    resources = _resources(definitions)
    names = ("object_store", "catalog", "sources")
    with dg.build_resources({name: resources[name] for name in names}) as built:
        yield services_for(built.object_store, built.catalog, built.sources)


def sources_check(services: Services) -> SourcesCheck:
    """A partition's fingerprint with its sources as they are now (a HEAD each)."""

    def current(plans: Sequence[ItemPlan]) -> str:
        urls = list(dict.fromkeys(s.url for p in plans for s in p.sources))
        return fingerprint(plans, [f.token() for f in probe_sources(urls, services)])

    return current


def status_command(args: argparse.Namespace, settings: Settings) -> int:
    declaration = _declaration(args.dataset)
    definitions = dataset_definitions(declaration, settings)
    instance = _instance(settings)
    partition_keys(declaration, definitions, instance, settings)  # file partitions found
    job = definitions.resolve_job_def(op_name(declaration.id, "job"))
    assert job.partitions_def is not None
    locations = SourceLocations(dict(settings.source_base_urls), settings.local_data_root)
    with built_services_for(definitions) as services:
        check = sources_check(services) if args.check_sources else None
        found = dataset_status(
            declaration,
            job.partitions_def,
            instance,
            locations,
            partition_code_version(declaration),
            check,
        )
    print("\n".join(found.lines()))
    return 0


def plan_command(args: argparse.Namespace, settings: Settings) -> int:
    declaration = _declaration(args.dataset)
    planned = planned_for(declaration, settings, args.partition)
    if args.json:
        for found in planned:
            print(json.dumps(found.document, ensure_ascii=False))
        return 0
    rows = [
        (
            found.partition_key,
            found.plan.item_id,
            found.document["properties"].get("datetime")
            or found.document["properties"].get("start_datetime", ""),
            redact_url(found.document["assets"][found.plan.item_id]["href"]),
        )
        for found in planned
    ]
    print_table(("partition", "item", "datetime", "href"), rows)
    print(f"{plural(len(planned), 'item')} in {plural(len({r[0] for r in rows}), 'partition')}")
    return 0


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def compare_command(args: argparse.Namespace, settings: Settings) -> int:
    declaration = _declaration(args.dataset)
    planned = planned_for(declaration, settings, args.partition)
    catalog = open_catalog(args.catalog)
    result = compare(
        declaration,
        planned,
        catalog.iter_items(declaration.id),
        catalog.get_collection(declaration.id),
        redact_url(args.catalog),
        whole_dataset=not args.partition,
    )
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False, default=str))
    else:
        print("\n".join(report_lines(result)))
    return 0 if result.same else 1


def adopt_command(args: argparse.Namespace, settings: Settings) -> int:
    declaration = _declaration(args.dataset)
    definitions = dataset_definitions(declaration, settings)
    instance = _instance(settings)
    valid = partition_keys(declaration, definitions, instance, settings)
    check_partitions(declaration.id, args.partition or [], valid)
    job = definitions.resolve_job_def(op_name(declaration.id, "adopt_job"))
    config = {"partitions": list(args.partition or [])}
    result = job.execute_in_process(
        run_config={"ops": {op_name(declaration.id, "adopt"): {"config": config}}},
        instance=instance,
        raise_on_error=False,
    )
    if not result.success:
        print(f"adopt run {result.run_id[:8]}: FAILED (see the run in the UI)", file=sys.stderr)
        return 1
    found = result.output_for_node(op_name(declaration.id, "adopt"))
    wanted = len(args.partition or valid)
    print(
        f"{declaration.id}: {len(found['adopted'])} of {plural(wanted, 'partition')} adopted "
        f"(run {result.run_id[:8]}); {len(found['refused'])} left to the next backfill"
    )
    for partition_key, reasons in found["refused"].items():
        print(f"  {partition_key}: {'; '.join(reasons)}")
    return 0


def materialize_command(args: argparse.Namespace, settings: Settings) -> int:
    declaration = _declaration(args.dataset)
    definitions = dataset_definitions(declaration, settings)
    instance = _instance(settings)
    valid = partition_keys(declaration, definitions, instance, settings)
    check_partitions(declaration.id, args.partition or [], valid)
    wanted = args.partition or valid
    if not wanted:
        raise ConfigError(f"dataset {declaration.id!r}: no partitions to materialize")
    done = _materialize(
        declaration, definitions, wanted, instance, force=args.force, launch=args.launch
    )
    print_totals(done)
    _print_catalog(declaration, settings, published=done.collection_published)
    return 0 if done.ok else 1


def _materialize(
    declaration: Declaration,
    definitions: dg.Definitions,
    wanted: Sequence[str],
    instance: dg.DagsterInstance,
    *,
    force: bool,
    launch: bool = False,
) -> Materialization:
    tags = {FORCE_TAG: "true"} if force else {}
    if launch:
        with code_location_launcher(definitions, instance) as launcher:
            return materialize(
                declaration, definitions, wanted, instance, launcher, print_run, tags
            )
    here = InProcessLauncher(definitions, instance, tags=code_location_tags())
    return materialize(declaration, definitions, wanted, instance, here, print_run, tags)


def print_audit(report: AuditReport) -> None:
    print(report.summary(), flush=True)
    for name, entries in report.listing().items():
        if entries:
            print(f"  {name}:")
            for entry in entries:
                print(f"    {entry}")


def audit_command(args: argparse.Namespace, settings: Settings) -> int:
    declaration = _declaration(args.dataset)
    definitions = dataset_definitions(declaration, settings)
    instance = _instance(settings)
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
        print(f"deleted {plural(len(deleted), 'orphan object')}")
        if report.affected_partitions:
            print(f"re-publishing {plural(len(report.affected_partitions), 'partition')}")
            done = _materialize(
                declaration, definitions, report.affected_partitions, instance, force=True
            )
            print_totals(done)
        report = audit(declaration, partitions, services, locations)
        print_audit(report)
    if report.outside_partitions:
        outside = len(report.outside_partitions)
        print(
            f"{plural(outside, 'item')} {'lies' if outside == 1 else 'lie'} outside the "
            "dataset's partitions: "
            "--fix leaves them (a partition removed from the declaration?); delete them from "
            "the catalog by hand if they are not wanted",
            file=sys.stderr,
        )
    return 0 if report.clean else 1


def backup_command(args: argparse.Namespace, settings: Settings) -> int:
    return run_backup_command(args, code_location())


def backup_now_command(args: argparse.Namespace, settings: Settings) -> int:
    day = args.date or datetime.now(UTC).date()
    outcome = backup_now(code_location(), _instance(settings), day)
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
        "--launch",
        action="store_true",
        help="launch the runs through the code location, as the UI does (slower; the UI can "
        "then re-execute them)",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help=f"redo every partition, even unchanged ones (run tag {FORCE_TAG}=true)",
    )
    plan = commands.add_parser(
        "plan", help="the items a dataset's partitions would publish (nothing fetched)"
    )
    plan.add_argument("dataset")
    plan.add_argument("--partition", action="append", help="a partition key (default: all)")
    plan.add_argument("--json", action="store_true", help="one STAC item (as planned) per line")
    state = commands.add_parser(
        "status",
        help="partitions published, missing, failed, stale and adopted (from the run history)",
    )
    state.add_argument("dataset")
    state.add_argument(
        "--check-sources",
        action="store_true",
        help="also HEAD every source: a partition whose sources changed is stale",
    )
    against = commands.add_parser(
        "compare",
        help="compare what a dataset plans with what a catalog publishes (exit 1 if different)",
    )
    against.add_argument("dataset")
    against.add_argument("catalog", help="a STAC API URL, or the path of a static catalog.json")
    against.add_argument("--partition", action="append", help="a partition key (default: all)")
    against.add_argument("--json", action="store_true", help="the report as one JSON object")
    adopt = commands.add_parser(
        "adopt",
        help="record the partitions the catalog already publishes as planned as materialized",
    )
    adopt.add_argument("dataset")
    adopt.add_argument("--partition", action="append", help="a partition key (default: all)")
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
        "plan": plan_command,
        "status": status_command,
        "compare": compare_command,
        "adopt": adopt_command,
        "materialize": materialize_command,
        "audit": audit_command,
        **dict.fromkeys(backup_cli.COMMANDS, backup_command),
        backup_cli.BACKUP_NOW: backup_now_command,
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
