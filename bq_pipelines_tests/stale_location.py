"""A code location of one demo dataset for the staleness test; `BQ_TEST_NODATA` changes its
COG settings (its code version), as an edited defs.yaml would."""

from __future__ import annotations

import os

import dagster as dg

from bq_pipelines.datasets.loading import builtin_declaration_data, parse_declaration
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.orchestration.factory import build_dataset
from bq_pipelines.orchestration.resources import resources_for
from bq_pipelines.settings import Settings

DATASET_ID = "demo-stale"


def declaration() -> Declaration:
    data = {**builtin_declaration_data("demo"), "id": DATASET_ID, "folder": DATASET_ID}
    if os.environ.get("BQ_TEST_NODATA"):
        data["cog"] = {"nodata": float(os.environ["BQ_TEST_NODATA"])}
    return parse_declaration(data, f"{DATASET_ID}/defs.yaml")


def location() -> dg.Definitions:
    return dg.Definitions.merge(
        build_dataset(declaration()),
        dg.Definitions(resources=resources_for(Settings.from_env(os.environ))),
    )


defs = location()
