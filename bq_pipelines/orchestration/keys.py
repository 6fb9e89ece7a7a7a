"""Names of a dataset's Dagster objects: asset keys, op/job/sensor names, partitions.

Shared by the factory, the sensors, the CLI and the ingestion API; it imports neither, so
none of them import each other for a name.
"""

from dataclasses import dataclass

import dagster as dg

from bq_pipelines.datasets.schema import FILES_DIMENSION, Declaration, Partitions, next_period

PARTITION_STEPS = ("raw", "cog", "object", "stac_item")
COG_VALID_CHECK = "cog_valid"
ITEM_VALID_CHECK = "stac_item_valid"
AUDIT_CHECK = "catalog_matches_store"
# On every run of a dataset's job: the run queue's per-dataset limit (deploy/dagster.yaml).
DATASET_TAG = "bq/dataset"
# stac_item metadata: the partition's settings without its sources (`settings_digest`), which
# `bq-pipelines status` compares with the current declaration's.
SETTINGS_DIGEST = "settings_digest"
# Where Dagster records a materialization's code version (among its tags).
CODE_VERSION_TAG = "dagster/code_version"


def collection_pool(dataset_id: str) -> str:
    """The Dagster pool of a collection's writers (limit 1 in production: deploy/README.md)."""
    return f"bq/collection/{dataset_id}"


def op_name(dataset_id: str, suffix: str) -> str:
    """`<id>_<suffix>` with `-` as `_`: Dagster names (ops, jobs, groups) allow no `-`."""
    return f"{dataset_id.replace('-', '_')}_{suffix}"


@dataclass(frozen=True)
class DatasetKeys:
    dataset_id: str

    def step(self, name: str) -> dg.AssetKey:
        return dg.AssetKey([self.dataset_id, name])

    @property
    def partitioned(self) -> list[dg.AssetKey]:
        return [self.step(name) for name in PARTITION_STEPS]

    @property
    def collection(self) -> dg.AssetKey:
        return self.step("collection")


def partitions_definition(dataset_id: str, partitions: Partitions) -> dg.PartitionsDefinition:
    """Time and/or static partitions (static dimensions combined into one), or dynamic
    partitions filled with the files found by the dataset's discovery sensor."""
    if partitions.files is not None:
        return dg.DynamicPartitionsDefinition(name=op_name(dataset_id, "files"))
    static = dg.StaticPartitionsDefinition(partitions.static_keys()) if partitions.static else None
    time = partitions.time
    if time is None:
        assert static is not None
        return static
    cron = {"yearly": "0 0 1 1 *", "monthly": "0 0 1 * *", "daily": "0 0 * * *"}[time.cadence]
    time_def = dg.TimeWindowPartitionsDefinition(
        cron_schedule=cron,
        fmt=time.key_format,
        timezone="UTC",
        start=time.start.strftime(time.key_format),
        end=next_period(time.end, time.cadence).strftime(time.key_format) if time.end else None,
    )
    if static is None:
        return time_def
    return dg.MultiPartitionsDefinition(
        {time.name: time_def, partitions.static_dimension_name: static}
    )


def keys_by_dimension(
    declaration: Declaration, partitions_def: dg.PartitionsDefinition, partition_key: str
) -> dict[str, str]:
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return dict(partitions_def.get_partition_key_from_str(partition_key).keys_by_dimension)
    if declaration.partitions.files is not None:
        return {FILES_DIMENSION: partition_key}
    if declaration.partitions.time is not None:
        return {declaration.partitions.time.name: partition_key}
    return {declaration.partitions.static_dimension_name: partition_key}
