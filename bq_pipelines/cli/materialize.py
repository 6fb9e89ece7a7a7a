"""`materialize`: run a dataset's partitions, then its collection, and show what the catalog
lists; the runs' lines and totals."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import dagster as dg

from bq_pipelines.cli.common import (
    check_partitions,
    dataset_definitions,
    declared,
    instance_for,
    partition_keys,
)
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.errors import ConfigError, PipelineError
from bq_pipelines.lib.redaction import redact_url
from bq_pipelines.lib.words import plural
from bq_pipelines.orchestration.materialize import FORCE_TAG
from bq_pipelines.orchestration.resources import quick_catalog
from bq_pipelines.runtime.launch import (
    InProcessLauncher,
    Materialization,
    RunReport,
    code_location_launcher,
    code_location_tags,
    materialize,
)
from bq_pipelines.settings import Settings

# After a run, the catalog is read for its listing with these bounds: a catalog that does not
# answer must not keep the command waiting on a result it already has.
LISTING_TIMEOUT_SECONDS = 3.0


def add_materialize_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def materialize_command(args: argparse.Namespace, settings: Settings) -> int:
    declaration = declared(args.dataset)
    definitions = dataset_definitions(declaration, settings)
    instance = instance_for(settings)
    valid = partition_keys(declaration, definitions, instance, settings)
    check_partitions(declaration.id, args.partition or [], valid)
    wanted = args.partition or valid
    if not wanted:
        raise ConfigError(f"dataset {declaration.id!r}: no partitions to materialize")
    done = materialize_partitions(
        declaration, definitions, wanted, instance, force=args.force, launch=args.launch
    )
    print_totals(done)
    _print_catalog(declaration, settings, published=done.collection_published)
    return 0 if done.ok else 1


def materialize_partitions(
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
