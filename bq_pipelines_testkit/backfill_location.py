"""Test code location: chelsa-monthly (its YAML, under another id, cut to a few years).

Monthly time dimension x static `variable` (2 values), sources on the CHELSA host, which
`BQ_SOURCE_BASE_URLS` points at a local HTTP server. Loaded by `dagster-webserver` /
`dagster-daemon` in `test_backfill.py` and `deploy/test_celery.py` (workspace `python_module`;
with `BQ_EXECUTOR=celery` its steps go to Celery workers, as in the real code location), and
imported by the in-process tests and `bench/bench_backfill.py`. Settings come from the environment,
like the real code location: `BQ_HOME`, `BQ_SOURCE_BASE_URLS`, ...; the
dataset id, the number of months and the batch size from `BQ_TEST_DATASET_ID`, `BQ_TEST_MONTHS`,
`BQ_TEST_BATCH_SIZE`. `BQ_TEST_STEP_PROCESSES=1` gives every step a process of its own (Dagster's
multiprocess executor), as a run whose steps can run at once gets with the project's executor.
"""

from __future__ import annotations

import os
from datetime import date

import dagster as dg

from bq_pipelines.datasets.loading import builtin_declaration_data, parse_declaration
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.orchestration.factory import build_dataset
from bq_pipelines.orchestration.resources import resources_for
from bq_pipelines.runtime.executors import executor_for
from bq_pipelines.runtime.monitoring import dead_run_workers_sensor
from bq_pipelines.settings import Settings

CHELSA_HOST = "chelsa"  # the source host name in chelsa-monthly.yaml
CHELSA_PATH = "monthly/{variable}/CHELSA_{variable}_{month:02d}_{year}_V.2.1.tif"
VARIABLES = ("tas", "pr")
START = date(1979, 1, 1)
DEFAULT_ID = "chelsa-monthly-test"
DEFAULT_MONTHS = 120
DEFAULT_BATCH_SIZE = 24


def month_start(index: int) -> date:
    """First day of the `index`-th month after START (0-based)."""
    months = START.month - 1 + index
    return date(START.year + months // 12, months % 12 + 1, 1)


def partition_key(index: int, variable: str) -> str:
    """Multi-partition key string: dimensions `date` and `variable`, alphabetical order."""
    return f"{month_start(index):%Y-%m}|{variable}"


def source_path(index: int, variable: str) -> str:
    """The source file's path under the CHELSA base URL."""
    day = month_start(index)
    return CHELSA_PATH.format(variable=variable, month=day.month, year=day.year)


def item_id(index: int, variable: str) -> str:
    day = month_start(index)
    return f"{variable}_{day.month:02d}_{day.year}"


def chelsa_like(
    dataset_id: str = DEFAULT_ID,
    months: int = DEFAULT_MONTHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Declaration:
    """The real chelsa-monthly declaration under another id, cut to `months` months of
    VARIABLES: same source host and path templates, item ids and properties."""
    data = builtin_declaration_data("chelsa-monthly")
    data["id"] = data["folder"] = dataset_id
    data["partitions"]["time"]["end"] = f"{month_start(months - 1):%Y-%m}"
    data["partitions"]["batch_size"] = batch_size
    [variables] = data["partitions"]["static"]
    variables["values"] = [v for v in variables["values"] if v["value"] in VARIABLES]
    return parse_declaration(data, f"{dataset_id} (chelsa-monthly.yaml, cut)")


def declaration_from_env(env: dict[str, str] | os._Environ[str]) -> Declaration:
    return chelsa_like(
        env.get("BQ_TEST_DATASET_ID", DEFAULT_ID),
        int(env.get("BQ_TEST_MONTHS", DEFAULT_MONTHS)),
        int(env.get("BQ_TEST_BATCH_SIZE", DEFAULT_BATCH_SIZE)),
    )


@dg.definitions
def defs() -> dg.Definitions:
    settings = Settings.from_env(os.environ)
    return dg.Definitions.merge(
        build_dataset(declaration_from_env(os.environ)),
        dg.Definitions(
            resources=resources_for(settings),
            executor=(
                dg.multiprocess_executor
                if os.environ.get("BQ_TEST_STEP_PROCESSES") == "1"
                else executor_for(settings)
            ),
            sensors=[dead_run_workers_sensor()],
        ),
    )
