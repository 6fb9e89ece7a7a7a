"""Test code location: a chelsa-monthly-like dataset built from a declaration dict.

Monthly time dimension x static `variable` (2 values), sources on the CHELSA host, which
`BQ_SOURCE_BASE_URLS` points at a local HTTP server. Loaded by `dagster-webserver` /
`dagster-daemon` in `test_backfill.py` (workspace `python_module`), and imported by the in-process
tests and `bench/bench_backfill.py`. Settings come from the environment, like the real code
location: `BQ_HOME`, `BQ_SOURCE_BASE_URLS`, `BQ_STAC_SCHEMAS_DIR`, ...; the dataset id, the number
of months and the batch size from `BQ_TEST_DATASET_ID`, `BQ_TEST_MONTHS`, `BQ_TEST_BATCH_SIZE`.
"""

from __future__ import annotations

import os
from datetime import date

import dagster as dg

from bq_pipelines.declarations import Declaration, parse_declaration
from bq_pipelines.factory import build_dataset
from bq_pipelines.resources import resources_for
from bq_pipelines.settings import Settings

CHELSA_HOST = "os.zhdk.cloud.switch.ch"
CHELSA_BASE_URL = "https://os.zhdk.cloud.switch.ch/envicloud/chelsa/chelsa_V2/GLOBAL"
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
    return f"chelsa_{variable}_{day.year}_{day.month:02d}"


def chelsa_like(
    dataset_id: str = DEFAULT_ID,
    months: int = DEFAULT_MONTHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Declaration:
    """A declaration shaped like chelsa-monthly: `months` months x VARIABLES."""
    return parse_declaration(
        {
            "id": dataset_id,
            "title": "CHELSA monthly timeseries (test)",
            "description": "Monthly climate rasters, one file per variable and month.",
            "license": "CC-BY-SA-4.0",
            "keywords": ["climate", "CHELSA"],
            "folder": dataset_id,
            "source": {"host": CHELSA_HOST, "base_url": CHELSA_BASE_URL, "path": CHELSA_PATH},
            "partitions": {
                "time": {
                    "cadence": "monthly",
                    "start": f"{START:%Y-%m}",
                    "end": f"{month_start(months - 1):%Y-%m}",
                },
                "static": [{"name": "variable", "values": list(VARIABLES)}],
                "batch_size": batch_size,
            },
            "item": {
                "id": "chelsa_{variable}_{year}_{month:02d}",
                "properties": {
                    "variable": "{variable}",
                    "year": "{year}",
                    "month": "{month}",
                    "version": "2.1",
                },
            },
        },
        f"{dataset_id} (test declaration)",
    )


def declaration_from_env(env: dict[str, str] | os._Environ[str]) -> Declaration:
    return chelsa_like(
        env.get("BQ_TEST_DATASET_ID", DEFAULT_ID),
        int(env.get("BQ_TEST_MONTHS", DEFAULT_MONTHS)),
        int(env.get("BQ_TEST_BATCH_SIZE", DEFAULT_BATCH_SIZE)),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions.merge(
        build_dataset(declaration_from_env(os.environ)),
        dg.Definitions(resources=resources_for(Settings.from_env(os.environ))),
    )
