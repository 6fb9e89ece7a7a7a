"""Dagster's batched event writes: the variable Dagster reads, and the value this project runs
with.

Dagster writes the events of one output's partitions (our 4 assets x the run's partitions) in one
batch when DAGSTER_EVENT_BATCH_SIZE is set in the environment of the process that runs the step;
dagster-postgres (production) then inserts a batch of materializations in one statement instead
of a connection and a commit each (SQLite writes them one by one either way; bench/RESULTS.md).
Dagster reads it from the environment only (no dagster.yaml key), at every event: the processes
that run steps get it where they are started (Makefile, deploy/compose.yaml, deploy/helm), and
the runs this project executes in its own process (the CLI, tests, benchmarks) while they run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

EVENT_BATCH_SIZE_ENV = "DAGSTER_EVENT_BATCH_SIZE"
EVENT_BATCH_SIZE = 1000


def with_event_batching(env: Mapping[str, str]) -> dict[str, str]:
    """`env` for a process that runs steps: batched writes unless `env` says otherwise (an
    explicit value wins; `0` turns batching off)."""
    return {EVENT_BATCH_SIZE_ENV: str(EVENT_BATCH_SIZE), **env}


@contextmanager
def batched_event_writes() -> Iterator[None]:
    """Batched event writes for runs executed in this process while the block runs; the
    environment as it was afterwards (an explicit value is left alone)."""
    if EVENT_BATCH_SIZE_ENV in os.environ:
        yield
        return
    os.environ[EVENT_BATCH_SIZE_ENV] = str(EVENT_BATCH_SIZE)
    try:
        yield
    finally:
        os.environ.pop(EVENT_BATCH_SIZE_ENV, None)
