"""`plan` and `compare`: the items a dataset's partitions would publish (nothing fetched), and
how they compare with what a catalog publishes."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import dagster as dg

from bq_pipelines.cli.common import declared, print_table, selected_partitions
from bq_pipelines.datasets.comparison import PlannedItem, compare, planned_items, report_lines
from bq_pipelines.datasets.plans import SourceLocations
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.catalog import open_catalog
from bq_pipelines.lib.redaction import redact_url
from bq_pipelines.lib.words import plural
from bq_pipelines.orchestration.resources import object_store_for
from bq_pipelines.settings import Settings


def add_plan_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    plan = commands.add_parser(
        "plan", help="the items a dataset's partitions would publish (nothing fetched)"
    )
    plan.add_argument("dataset")
    plan.add_argument("--partition", action="append", help="a partition key (default: all)")
    plan.add_argument("--json", action="store_true", help="one STAC item (as planned) per line")


def add_compare_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    against = commands.add_parser(
        "compare",
        help="compare what a dataset plans with what a catalog publishes (exit 1 if different)",
    )
    against.add_argument("dataset")
    against.add_argument("catalog", help="a STAC API URL, or the path of a static catalog.json")
    against.add_argument("--partition", action="append", help="a partition key (default: all)")
    against.add_argument("--json", action="store_true", help="the report as one JSON object")


def planned_for(
    declaration: Declaration, settings: Settings, wanted: Sequence[str] | None
) -> list[PlannedItem]:
    """The items of the partitions, with the hrefs the settings in effect give them."""
    partitions = selected_partitions(declaration, settings, wanted)
    resource = object_store_for(settings)
    with dg.build_resources({"object_store": resource}) as built:
        store = built.object_store.store()
        locations = SourceLocations(
            base_urls=dict(settings.source_base_urls), local_root=settings.local_data_root
        )
        return planned_items(declaration, partitions, store, built.object_store.prefix, locations)


def plan_command(args: argparse.Namespace, settings: Settings) -> int:
    declaration = declared(args.dataset)
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


def compare_command(args: argparse.Namespace, settings: Settings) -> int:
    declaration = declared(args.dataset)
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
