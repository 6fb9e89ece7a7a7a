"""`demo-data`, `datasets` and `partitions`: what is declared, and the demo's rasters."""

from __future__ import annotations

import argparse
from pathlib import Path

from bq_pipelines.cli.common import dataset_definitions, declared, instance_for, partition_keys
from bq_pipelines.datasets.demo import write_demo_rasters
from bq_pipelines.datasets.loading import load_declarations
from bq_pipelines.settings import Settings


def add_dataset_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser("demo-data", help="write the demo dataset's rasters if missing")
    demo.add_argument("--root", type=Path, help="local data root (default BQ_LOCAL_DATA_ROOT)")
    commands.add_parser("datasets", help="list the declared datasets")
    listing = commands.add_parser("partitions", help="list a dataset's partition keys")
    listing.add_argument("dataset")


def demo_data_command(args: argparse.Namespace, settings: Settings) -> int:
    for path, written in write_demo_rasters(args.root or settings.local_data_root):
        print(f"{path} ({'written' if written else 'unchanged'})")
    return 0


def datasets_command(args: argparse.Namespace, settings: Settings) -> int:
    for declaration in load_declarations():
        print(f"{declaration.id:32} {declaration.title}")
    return 0


def partitions_command(args: argparse.Namespace, settings: Settings) -> int:
    declaration = declared(args.dataset)
    definitions = dataset_definitions(declaration, settings)
    for key in partition_keys(declaration, definitions, instance_for(settings), settings):
        print(key)
    return 0
