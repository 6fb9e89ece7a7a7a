"""`audit`: a dataset's catalog items against the objects in the store; `--fix` deletes orphan
objects and re-publishes the partitions of missing or changed ones."""

from __future__ import annotations

import argparse
import sys

import dagster as dg

from bq_pipelines.cli.common import (
    dataset_definitions,
    declared,
    definition_resources,
    instance_for,
    partition_keys,
)
from bq_pipelines.cli.materialize import materialize_partitions, print_totals
from bq_pipelines.datasets.audit import AuditReport, audit, delete_orphans
from bq_pipelines.lib.words import plural
from bq_pipelines.orchestration.checks import all_partition_dimensions
from bq_pipelines.orchestration.keys import op_name
from bq_pipelines.orchestration.resources import services_for
from bq_pipelines.settings import Settings


def add_audit_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = commands.add_parser(
        "audit", help="compare a dataset's catalog items with the objects in the store"
    )
    check.add_argument("dataset")
    check.add_argument(
        "--fix",
        action="store_true",
        help="delete orphan objects and re-publish the partitions of missing or changed objects",
    )


def print_audit(report: AuditReport) -> None:
    print(report.summary(), flush=True)
    for name, entries in report.listing().items():
        if entries:
            print(f"  {name}:")
            for entry in entries:
                print(f"    {entry}")


def audit_command(args: argparse.Namespace, settings: Settings) -> int:
    declaration = declared(args.dataset)
    definitions = dataset_definitions(declaration, settings)
    instance = instance_for(settings)
    partition_keys(declaration, definitions, instance, settings)  # file partitions discovered
    job = definitions.resolve_job_def(op_name(declaration.id, "job"))
    assert job.partitions_def is not None
    partitions = all_partition_dimensions(declaration, job.partitions_def, instance)
    names = ("object_store", "catalog", "sources", "locks")
    # Built as Dagster would for a run: EnvVar secrets (STAC API token, DSN) are resolved here.
    resources = definition_resources(definitions)
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
            done = materialize_partitions(
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
