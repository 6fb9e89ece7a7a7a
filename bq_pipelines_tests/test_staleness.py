"""What the UI shows of versions: a partition materialized under the current code is fresh,
and stale (cause: code version) once the dataset's COG settings change; a run of one
partition records the partition's fingerprint as its data version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster_graphql.test.utils import define_out_of_process_context, execute_dagster_graphql

from bq_pipelines.orchestration.keys import DatasetKeys
from bq_pipelines.settings import Settings
from bq_pipelines_testkit.runs import materialize_dataset
from bq_pipelines_testkit.values import metadata_value
from bq_pipelines_tests import stale_location

STALE_QUERY = """
query Stale($path: [String!]!, $partition: String!) {
  assetNodes(assetKeys: [{path: $path}]) {
    staleStatus(partition: $partition)
    staleCauses(partition: $partition) { category reason }
  }
}
"""


def _stale(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str) -> dict[str, Any]:
    with define_out_of_process_context(stale_location.__file__, "defs", instance) as context:
        result = execute_dagster_graphql(
            context, STALE_QUERY, {"path": list(key.path), "partition": partition}
        )
    assert not result.errors, result.errors
    [node] = result.data["assetNodes"]
    assert isinstance(node, dict)
    return node


@pytest.fixture
def location_env(monkeypatch, tmp_path: Path, demo_sources: Path) -> Settings:
    # The code server of the GraphQL context reads the same settings from its environment.
    monkeypatch.delenv("BQ_TEST_NODATA", raising=False)
    env = {"BQ_HOME": str(tmp_path / "bq"), "BQ_LOCAL_DATA_ROOT": str(demo_sources)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings.from_env(env)


@pytest.mark.slow
def test_a_code_version_change_marks_the_partition_stale(location_env, tmp_path, monkeypatch):
    keys = DatasetKeys(stale_location.DATASET_ID)
    with dg.instance_for_test() as instance:
        outcome = materialize_dataset(
            stale_location.declaration(), location_env, instance, partitions=["elevation"]
        )
        assert outcome.ok

        # One partition in the run: its fingerprint is the data version of `raw`.
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=keys.step("raw"), asset_partitions=["elevation"]),
            limit=1,
        ).records[0]
        item = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=keys.step("stac_item"), asset_partitions=["elevation"]),
            limit=1,
        ).records[0]
        assert record.asset_materialization and item.asset_materialization
        assert record.asset_materialization.tags is not None
        fingerprint = item.asset_materialization.metadata["fingerprint"].value
        assert record.asset_materialization.tags["dagster/data_version"] == fingerprint
        # and the partition links to its published item
        item_url = metadata_value(item.asset_materialization.metadata, "item_url", str)
        assert item_url.startswith("file://") and item_url.endswith("demo_elevation.json")

        fresh = _stale(instance, keys.step("cog"), "elevation")
        assert fresh["staleStatus"] == "FRESH", fresh

        monkeypatch.setenv("BQ_TEST_NODATA", "-9999")
        stale = _stale(instance, keys.step("cog"), "elevation")
        assert stale["staleStatus"] == "STALE", stale
        assert {c["category"] for c in stale["staleCauses"]} == {"CODE"}
