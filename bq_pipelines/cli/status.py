"""`status`: a dataset's partitions published, missing, failed, stale and adopted, from the run
history (and, on request, its sources as they are now)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bq_pipelines.cli.common import (
    built_services_for,
    dataset_definitions,
    declared,
    instance_for,
    partition_keys,
)
from bq_pipelines.datasets.plans import SourceLocations
from bq_pipelines.lib.pipeline import ItemPlan, Services, fingerprint, probe_sources
from bq_pipelines.orchestration.assets import partition_code_version
from bq_pipelines.orchestration.keys import op_name
from bq_pipelines.orchestration.status import SourcesCheck, dataset_status
from bq_pipelines.settings import Settings


def add_status_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def sources_check(services: Services) -> SourcesCheck:
    """A partition's fingerprint with its sources as they are now (a HEAD each)."""

    def current(plans: Sequence[ItemPlan]) -> str:
        urls = list(dict.fromkeys(s.url for p in plans for s in p.sources))
        return fingerprint(plans, [f.token() for f in probe_sources(urls, services)])

    return current


def status_command(args: argparse.Namespace, settings: Settings) -> int:
    declaration = declared(args.dataset)
    definitions = dataset_definitions(declaration, settings)
    instance = instance_for(settings)
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
