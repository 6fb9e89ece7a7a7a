"""Python's cyclic garbage collector in processes that hold a large, long-lived heap.

A code-location load leaves about a million objects (Dagster's modules, ours, the assets of
every dataset) that live as long as the process. Each full collection went through all of them,
during the load and during the run after it: 0.35-0.45 s of a ~3 s load, in every code server,
run worker, step process and CLI that loads the code location (measured with
`python -c 'import bq_pipelines.definitions as d; d.defs()'` under /usr/bin/time, with and
without). `gc.freeze()` moves the objects that exist to a generation the collector skips, as
the Python documentation suggests for what a process builds at start; reference counting still
frees any of them once unreferenced (only a cycle among them would stay). A larger first
generation makes collections during the load fewer. Called where a process has loaded what it
keeps: at the start and end of the code location's `defs()`, at the start of the CLI, when the
ingestion API has started. The larger first generation is also set before anything is imported,
by startup/sitecustomize.py in every process started with the project's environment.
"""

from __future__ import annotations

import gc

# Allocations between two collections of the youngest generation (Python's default: 700).
YOUNG_GENERATION_THRESHOLD = 10_000


def freeze_long_lived_objects(*, collect_first: bool = False) -> None:
    """Leave every object that exists now out of the collector's passes, and collect the
    youngest generation less often. `collect_first`: collect before, so that no garbage is
    frozen (one full collection: worth it once in a server's start, not in a load)."""
    if collect_first:
        gc.collect()
    gc.freeze()
    collect_the_young_generation_less_often()


def collect_the_young_generation_less_often() -> None:
    """Collect the youngest generation every YOUNG_GENERATION_THRESHOLD allocations (a larger
    threshold already set is kept; the older generations keep theirs). What startup/'s
    sitecustomize does first thing in every process of the project."""
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, YOUNG_GENERATION_THRESHOLD), middle, old)
