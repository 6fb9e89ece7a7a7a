"""`adopt`: record the partitions a catalog already publishes as planned as materialized."""

from __future__ import annotations

import argparse
import sys

from bq_pipelines.cli.common import (
    check_partitions,
    dataset_definitions,
    declared,
    instance_for,
    partition_keys,
)
from bq_pipelines.lib.words import plural
from bq_pipelines.orchestration.keys import op_name
from bq_pipelines.settings import Settings


def add_adopt_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    adopt = commands.add_parser(
        "adopt",
        help="record the partitions the catalog already publishes as planned as materialized",
    )
    adopt.add_argument("dataset")
    adopt.add_argument("--partition", action="append", help="a partition key (default: all)")


def adopt_command(args: argparse.Namespace, settings: Settings) -> int:
    declaration = declared(args.dataset)
    definitions = dataset_definitions(declaration, settings)
    instance = instance_for(settings)
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
