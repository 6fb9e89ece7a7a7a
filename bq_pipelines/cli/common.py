"""What the commands share: a declared dataset, its definitions and partitions, the persistent
Dagster instance, the services its resources give, partition keys checked with suggestions."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from bq_pipelines.datasets.loading import load_declarations
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.lib.files import exclusive_lock, write_text_atomically
from bq_pipelines.lib.pipeline import Services
from bq_pipelines.orchestration.factory import build_dataset
from bq_pipelines.orchestration.jobs import discover_files
from bq_pipelines.orchestration.keys import keys_by_dimension, op_name, partitions_definition
from bq_pipelines.orchestration.resources import resources_for, services_for
from bq_pipelines.settings import Settings

Command = Callable[[argparse.Namespace, Settings], int]
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
SUGGESTIONS = 5
INSTANCE_FOLDER = "dagster"


def declared(dataset_id: str) -> Declaration:
    """The declaration of `dataset_id`; ConfigError naming the closest ids otherwise."""
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


def instance_for(settings: Settings) -> dg.DagsterInstance:
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


def definition_resources(definitions: dg.Definitions) -> Mapping[str, Any]:
    if definitions.resources is None:
        raise RuntimeError("the definitions carry no resources")
    return definitions.resources


@contextlib.contextmanager
def built_services_for(definitions: dg.Definitions) -> Iterator[Services]:
    """The core library's services, its resources built as Dagster would for a run (EnvVar
    secrets, the STAC API token or the DSN, resolved here)."""
    resources = definition_resources(definitions)
    names = ("object_store", "catalog", "sources")
    with dg.build_resources({name: resources[name] for name in names}) as built:
        yield services_for(built.object_store, built.catalog, built.sources)


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
