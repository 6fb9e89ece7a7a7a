"""Command line: generate demo data, list datasets, materialize a dataset in batched runs,
list and restore catalog backups.

`bq-pipelines materialize demo` is what `make demo` runs. Runs are recorded in the Dagster
instance of DAGSTER_HOME (SQLite under .bq/dagster by default), so `make dev` shows them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from bq_pipelines.backup import cli as backup_cli
from bq_pipelines.backup_assets import run_backup_command
from bq_pipelines.declarations import Declaration, load_declarations
from bq_pipelines.definitions import defs
from bq_pipelines.demo import write_demo_rasters
from bq_pipelines.factory import DatasetKeys, discover_files, op_name
from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.settings import Settings

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def partition_ranges(
    partitions_def: dg.PartitionsDefinition,
    keys: Sequence[str],
    batch_size: int,
    instance: dg.DagsterInstance | None = None,
) -> list[tuple[str, str]]:
    """Split `keys` into ranges of at most `batch_size` partitions each, one range per run.

    Multi-partitions: a range is a box, so ranges run along the time dimension for one value
    of the static dimension.
    """
    all_keys = list(partitions_def.get_partition_keys(dynamic_partitions_store=instance))
    wanted = set(keys)
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        lines: dict[str, list[str]] = {}
        time_dim = next(
            d
            for d in partitions_def.partitions_defs
            if isinstance(d.partitions_def, dg.TimeWindowPartitionsDefinition)
        )
        for key in all_keys:
            if key in wanted:
                parts = partitions_def.get_partition_key_from_str(key).keys_by_dimension
                other = {k: v for k, v in parts.items() if k != time_dim.name}
                lines.setdefault(json.dumps(other, sort_keys=True), []).append(key)
        return [
            r
            for line in lines.values()
            for r in _contiguous_chunks(line, all_keys, batch_size, time_dim)
        ]
    return _contiguous_chunks([k for k in all_keys if k in wanted], all_keys, batch_size, None)


def _contiguous_chunks(
    keys: list[str],
    all_keys: list[str],
    batch_size: int,
    time_dim: dg.PartitionDimensionDefinition | None,
) -> list[tuple[str, str]]:
    position = {key: index for index, key in enumerate(all_keys)}
    stride = 1
    if time_dim is not None and len(keys) > 1:
        stride = position[keys[1]] - position[keys[0]]  # keys of one line are evenly spaced
    ranges: list[tuple[str, str]] = []
    chunk: list[str] = []
    for key in keys:
        if chunk and (len(chunk) == batch_size or position[key] - position[chunk[-1]] != stride):
            ranges.append((chunk[0], chunk[-1]))
            chunk = []
        chunk.append(key)
    if chunk:
        ranges.append((chunk[0], chunk[-1]))
    return ranges


def _instance() -> dg.DagsterInstance:
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    print("DAGSTER_HOME is not set: runs go to a temporary instance (not visible in the UI)")
    return dg.DagsterInstance.ephemeral()


def materialize(
    declaration: Declaration,
    defs: dg.Definitions,
    partition_keys: Sequence[str],
    instance: dg.DagsterInstance,
) -> bool:
    """Run the dataset's job over `partition_keys` in batches, then its collection asset."""
    job = defs.resolve_job_def(op_name(declaration.id, "job"))
    keys = DatasetKeys(declaration.id)
    partitions_def = job.partitions_def
    assert partitions_def is not None
    ranges = partition_ranges(
        partitions_def, partition_keys, declaration.partitions.batch_size, instance
    )
    ok = True
    for start, end in ranges:
        result = job.execute_in_process(
            instance=instance,
            raise_on_error=False,
            run_config=QUIET_LOGS,
            tags={RANGE_START_TAG: start, RANGE_END_TAG: end},
            asset_selection=keys.partitioned,
        )
        label = start if start == end else f"{start} .. {end}"
        print(f"run {result.run_id[:8]} [{label}]: {'ok' if result.success else 'FAILED'}")
        ok &= result.success
        if not result.success:
            for event in result.all_events:
                if event.is_step_failure and event.step_failure_data:
                    print(
                        event.step_failure_data.error.message
                        if event.step_failure_data.error
                        else event.message,
                        file=sys.stderr,
                    )
    result = dg.materialize(
        # The resolved asset already carries the code location's resources.
        [defs.resolve_assets_def(keys.collection)],
        instance=instance,
        raise_on_error=False,
        run_config=QUIET_LOGS,
    )
    print(f"run {result.run_id[:8]} [collection]: {'ok' if result.success else 'FAILED'}")
    return ok and result.success


def _print_catalog(declaration: Declaration, defs: dg.Definitions, settings: Settings) -> None:
    publisher = defs.resources["catalog"].publisher()
    items = list(publisher.iter_items(declaration.id))
    where = (
        settings.stac_api_url
        if settings.catalog == "stac-api"
        else (settings.catalog_dir.absolute() / "catalog.json")
    )
    print(f"\ncollection {declaration.id}: {len(items)} items in {where}")
    for item in items:
        asset = next(iter(item["assets"].values()))
        print(f"  {item['id']}: {asset['href']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bq-pipelines", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo-data", help="generate the demo dataset's rasters")
    demo.add_argument("--root", type=Path, help="local data root (default BQ_LOCAL_DATA_ROOT)")
    commands.add_parser("datasets", help="list the declared datasets")
    run = commands.add_parser("materialize", help="materialize a dataset's partitions")
    run.add_argument("dataset")
    run.add_argument("--partition", action="append", help="a partition key (default: all)")
    backup_cli.add_commands(commands)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
        if args.command == "demo-data":
            for path in write_demo_rasters(args.root or settings.local_data_root):
                print(path)
            return 0
        if args.command in backup_cli.COMMANDS:
            return run_backup_command(args, defs())
        declarations = {d.id: d for d in load_declarations()}
        if args.command == "datasets":
            for declaration in declarations.values():
                print(f"{declaration.id:32} {declaration.title}")
            return 0
        if args.dataset not in declarations:
            raise ConfigError(
                f"dataset {args.dataset!r}: not declared; see `bq-pipelines datasets`"
            )
        declaration = declarations[args.dataset]
        definitions = defs()
        job = definitions.resolve_job_def(op_name(declaration.id, "job"))
        assert job.partitions_def is not None
        instance = _instance()
        if isinstance(job.partitions_def, dg.DynamicPartitionsDefinition):
            found = discover_files(declaration, settings.local_data_root)
            instance.add_dynamic_partitions(job.partitions_def.name or "", found)
        every = job.partitions_def.get_partition_keys(dynamic_partitions_store=instance)
        ok = materialize(declaration, definitions, args.partition or list(every), instance)
        _print_catalog(declaration, definitions, settings)
        return 0 if ok else 1
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
