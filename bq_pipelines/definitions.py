"""The code location: everything under defs/ (a StacDataset component per dataset, the catalog
backup, the ingestion API, the automation sensors), with the resources and the executor the
settings choose."""

from __future__ import annotations

import warnings
from pathlib import Path

import dagster as dg

import bq_pipelines.defs
from bq_pipelines.datasets.loading import file_version, load_declarations
from bq_pipelines.lib.garbage_collection import freeze_long_lived_objects
from bq_pipelines.orchestration.resources import resources_for
from bq_pipelines.runtime.executors import executor_for
from bq_pipelines.settings import current_settings, settings_environment

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFS_FOLDER = Path(bq_pipelines.defs.__file__).parent
SHARED_FOLDER = Path(__file__).resolve().parent / "shared"

# What the definitions are read from (the settings' variables, the YAML files' versions) ->
# the definitions built from it; the last build only.
_BUILT: dict[tuple[object, ...], dg.Definitions] = {}


@dg.definitions
def defs() -> dg.Definitions:
    # Dagster's code server calls this twice as it starts: to find the location's targets, then
    # to reconstruct its repository (dagster/_grpc/server.py, LoadedRepositories; a lifecycle
    # for state-backed loaders, which this location has none of). Built once per settings and
    # files, the second call costs nothing instead of a second build (~0.7 s of CPU).
    inputs = (settings_environment(), _source_files())
    if inputs not in _BUILT:
        _BUILT.clear()
        _BUILT[inputs] = _build()
    return _BUILT[inputs]


def _source_files() -> tuple[tuple[Path, int, int], ...]:
    """The version of every YAML file under defs/ and every file of shared/."""
    paths = sorted(
        p for p in [*DEFS_FOLDER.rglob("*.yaml"), *SHARED_FOLDER.iterdir()] if p.is_file()
    )
    return tuple(file_version(p) for p in paths)


def _build() -> dg.Definitions:
    # What is loaded now (modules) and at the end (the definitions) lives as long as the process:
    # out of the collector's passes, which went through all of it (lib/garbage_collection.py).
    freeze_long_lived_objects()
    settings = current_settings()
    # The defs folder, not the project's root component: the root also embeds the JSON schema of
    # every component type the installed plugins register (Dagster's and dagster-aws's, none of
    # ours), importing dagster_aws.components to write it: ~0.8 s of CPU in each process that
    # loads the code location, every run worker and step process included.
    tree = dg.ComponentTree.from_module(defs_module=bq_pipelines.defs, project_root=PROJECT_ROOT)
    with warnings.catch_warnings():
        # As load_defs did: the beta APIs the components use (code references, owners) are
        # chosen, and a warning per asset in every process's log says nothing new.
        for category in (dg.BetaWarning, dg.PreviewWarning, dg.SupersessionWarning):
            warnings.simplefilter("ignore", category)
        components = tree.build_defs(DEFS_FOLDER)
    # What no single component can check (ids and object keys unique across datasets) fails
    # the load here (on the declarations the components have just read).
    load_declarations()
    definitions = dg.Definitions.merge(
        components,
        # Every job, the implicit asset job of backfills included.
        dg.Definitions(
            resources=resources_for(settings),
            executor=executor_for(settings),
            component_tree=tree,  # the UI's view of the components, as the root gives it
        ),
    )
    freeze_long_lived_objects()
    return definitions
