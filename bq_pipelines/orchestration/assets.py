"""A dataset's assets: `<id>/raw`, `<id>/cog`, `<id>/object`, `<id>/stac_item` (partitioned,
one multi-asset step) and `<id>/collection`, with what the UI shows of them (group, owners,
tags, kinds, descriptions) and the code versions that mark them stale."""

import itertools
import re
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg

from bq_pipelines.datasets.plans import collection_for
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib import cog as cog_lib
from bq_pipelines.lib import stac
from bq_pipelines.lib.catalog import Publisher
from bq_pipelines.lib.errors import PipelineError
from bq_pipelines.lib.hashing import sha256_json
from bq_pipelines.lib.pipeline import PIPELINE_VERSION
from bq_pipelines.orchestration.checks import partition_check_specs
from bq_pipelines.orchestration.keys import (
    PARTITION_STEPS,
    DatasetKeys,
    collection_pool,
    op_name,
)
from bq_pipelines.orchestration.materialize import materialize_partitions
from bq_pipelines.orchestration.previews import (
    PREVIEW_MAX_ITEMS,
    collection_previews,
    coverage_map_key,
    store_coverage_map,
)
from bq_pipelines.orchestration.resources import (
    CatalogResource,
    LocksResource,
    ObjectStoreResource,
    SourcesResource,
    links_for,
    services_for,
)
from bq_pipelines.orchestration.sensors import collection_automation_condition
from bq_pipelines.orchestration.status import dataset_status
from bq_pipelines.runtime.monitoring import die_with_run_worker
from bq_pipelines.settings import Settings


def partition_assets(
    declaration: Declaration, partitions_def: dg.PartitionsDefinition, settings: Settings
) -> dg.AssetsDefinition:
    """The four partitioned assets as one step: download, conversion, upload and publication
    of a partition happen on one worker's disk, so a multi-worker executor never needs a
    shared file system between steps. A run processes a batch of partitions (BackfillPolicy)."""
    keys = DatasetKeys(declaration.id)

    @dg.multi_asset(
        name=op_name(declaration.id, "partitions"),
        specs=_partition_specs(declaration, partitions_def, settings),
        check_specs=partition_check_specs(keys),
        partitions_def=partitions_def,
        backfill_policy=dg.BackfillPolicy.multi_run(declaration.partitions.batch_size),
        can_subset=False,
    )
    def partition_step(
        context: dg.AssetExecutionContext,
        object_store: ObjectStoreResource,
        catalog: CatalogResource,
        sources: SourcesResource,
        locks: LocksResource,
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        die_with_run_worker(context)  # never publish for a run already marked failed
        services = services_for(object_store, catalog, sources)
        yield from materialize_partitions(
            context, declaration, partitions_def, services, sources.locations(), locks.locks()
        )

    return partition_step


def _partition_specs(
    declaration: Declaration, partitions_def: dg.PartitionsDefinition, settings: Settings
) -> list[dg.AssetSpec]:
    keys = DatasetKeys(declaration.id)
    descriptions = _descriptions(declaration, settings)
    code_version = partition_code_version(declaration)
    specs = []
    previous: dg.AssetKey | None = None
    for name in PARTITION_STEPS:
        specs.append(
            dg.AssetSpec(
                key=keys.step(name),
                deps=[previous] if previous else [],
                group_name=_group(declaration),
                description=descriptions[name],
                kinds=_kinds(name, settings),
                owners=declaration.owners,
                tags=dataset_tags(declaration),
                code_version=code_version,
                metadata=_metadata(declaration),
                partitions_def=partitions_def,
            )
        )
        previous = keys.step(name)
    return specs


def collection_asset(
    declaration: Declaration, partitions_def: dg.PartitionsDefinition, settings: Settings
) -> dg.AssetsDefinition:
    """The collection, its extent and summaries recomputed from the published items."""
    keys = DatasetKeys(declaration.id)

    @dg.asset(
        key=keys.collection,
        deps=[keys.step("stac_item")],
        group_name=_group(declaration),
        kinds=_kinds("collection", settings),
        owners=declaration.owners,
        tags=dataset_tags(declaration),
        code_version=collection_code_version(declaration),
        metadata=_metadata(declaration),
        automation_condition=collection_automation_condition(),
        description=_descriptions(declaration, settings)["collection"],
        output_required=False,
        pool=collection_pool(declaration.id),
    )
    def collection(
        context: dg.AssetExecutionContext,
        catalog: CatalogResource,
        sources: SourcesResource,
        object_store: ObjectStoreResource,
    ) -> Iterator[dg.MaterializeResult]:
        die_with_run_worker(context)
        yield from _materialize_collection(
            context, declaration, partitions_def, catalog, sources, object_store
        )

    return collection


def _materialize_collection(
    context: dg.AssetExecutionContext,
    declaration: Declaration,
    partitions_def: dg.PartitionsDefinition,
    catalog: CatalogResource,
    sources: SourcesResource,
    object_store: ObjectStoreResource,
) -> Iterator[dg.MaterializeResult]:
    """Publish the collection built from its published items (none while there are none)."""
    code_version = partition_code_version(declaration)
    publisher = catalog.publisher()
    content = publisher.collection_content(declaration.id, declaration.summarize)
    if not content.items:
        # An empty collection would advertise a dataset with nothing in it (a failed first
        # run): the collection appears with its first published items.
        context.log.warning(f"collection {declaration.id}: no published items, not published")
        return
    built = collection_for(declaration, [], content)
    schemas = sources.stac_schemas_dir
    stac.validate(built, Path(schemas) if schemas else None)
    outcome = publisher.upsert_collection(built)
    as_dict = built.to_dict(include_self_link=False)
    context.log.info(f"collection {declaration.id}: {outcome}, {content.items} items")
    yield dg.MaterializeResult(
        metadata={
            "items": content.items,
            "outcome": outcome,
            **_extent_metadata(as_dict),
            "collection": dg.MetadataValue.json(as_dict),
            "updated_at": datetime.now().isoformat(timespec="seconds"),
            **_collection_previews(
                declaration.id, publisher, content.items, object_store, catalog, sources
            ),
            **_status_metadata(context, declaration, partitions_def, sources, code_version),
        }
    )


def _group(declaration: Declaration) -> str:
    # Dagster group names allow no `-`: the dataset id with `_` (op_name), as in job names.
    return op_name(declaration.id, "dataset")


def _metadata(declaration: Declaration) -> dict[str, Any]:
    return {
        "dataset": declaration.id,
        "collection_id": declaration.id,
        "dataset_description": dg.MetadataValue.md(declaration.description),
    }


def _collection_previews(
    collection_id: str,
    publisher: Publisher,
    total: int,
    object_store: ObjectStoreResource,
    catalog: CatalogResource,
    sources: SourcesResource,
) -> dict[str, dg.MetadataValue]:
    """The collection's previews, its coverage map stored beside the datasets' objects."""
    store = object_store.store()
    key = coverage_map_key(object_store.prefix, collection_id)
    Path(sources.work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=sources.work_dir, prefix="collection-") as staging:
        return collection_previews(
            itertools.islice(publisher.iter_items(collection_id), PREVIEW_MAX_ITEMS),
            total=total,
            store_map=lambda png: store_coverage_map(png, store, key, Path(staging)),
            links=links_for(object_store, catalog),
            collection_id=collection_id,
        )


def _extent_metadata(collection: dict[str, Any]) -> dict[str, Any]:
    extent = collection.get("extent", {})
    return {
        "spatial_extent": str(extent.get("spatial", {}).get("bbox")),
        "temporal_extent": str(extent.get("temporal", {}).get("interval")),
    }


def _status_metadata(
    context: dg.AssetExecutionContext,
    declaration: Declaration,
    partitions_def: dg.PartitionsDefinition,
    sources: SourcesResource,
    code_version: str,
) -> dict[str, Any]:
    """The partitions' status counts (status.py), shown at a glance on the collection."""
    try:
        found = dataset_status(
            declaration, partitions_def, context.instance, sources.locations(), code_version
        )
    except PipelineError as error:  # a source the plan reads is gone: say so, publish anyway
        context.log.warning(f"collection {declaration.id}: no partition status: {error}")
        return {}
    return found.metadata()


# Dagster tag values: at most 63 letters, digits, `-`, `_` or `.`.
_TAG_VALUE_DISALLOWED = re.compile(r"[^A-Za-z0-9_.\-]")


def _tag_value(text: str) -> str:
    return _TAG_VALUE_DISALLOWED.sub("-", text)[:63]


def dataset_tags(declaration: Declaration) -> dict[str, str]:
    """What the UI filters assets by: the dataset, its source host(s), license and cadence."""
    partitions = declaration.partitions
    cadence = (
        partitions.time.cadence
        if partitions.time is not None
        else "files"
        if partitions.files is not None
        else "static"
    )
    return {
        "dataset": _tag_value(declaration.id),
        "host": _tag_value(".".join(declaration.hosts)),
        "license": _tag_value(declaration.license),
        "cadence": cadence,
    }


def _digest(payload: Any) -> str:
    return sha256_json(payload)[:12]


def partition_code_version(declaration: Declaration) -> str:
    """The code version of the partitioned assets: the pipeline and COG algorithm versions
    and every COG setting the declaration makes. Changing one marks the assets stale."""
    settings = {
        "cog": declaration.cog.versioned(),
        "variants": [v.cog.model_dump() if v.cog else None for v in declaration.variants],
        "values": {
            d.name: {v.value: v.cog.model_dump() for v in d.values if v.cog is not None}
            for d in declaration.partitions.static
        },
    }
    return f"pipeline-{PIPELINE_VERSION}.cog-{cog_lib.COG_ALGORITHM_VERSION}.{_digest(settings)}"


def collection_code_version(declaration: Declaration) -> str:
    """The code version of the collection: the pipeline version and the collection's fields."""
    fields = declaration.model_dump(
        include={
            "title",
            "description",
            "license",
            "providers",
            "keywords",
            "item_assets",
            "summaries",
            "summarize",
            "links",
            "extra_fields",
        }
    )
    return f"pipeline-{PIPELINE_VERSION}.{_digest(fields)}"


def _kinds(step: str, settings: Settings) -> set[str]:
    catalog = {"stac", "postgres"} if settings.catalog == "stac-api" else {"stac"}
    store = "s3" if settings.object_store == "s3" else "file"
    return {
        "raw": {"file"},
        "cog": {"cog"},
        "object": {"cog", store},
        "stac_item": catalog,
        "collection": catalog,
    }[step]


def _descriptions(declaration: Declaration, settings: Settings) -> dict[str, str]:
    where = f"`{settings.object_prefix}/{declaration.folder}/`" + (
        f" of the bucket `{settings.s3_bucket}`" if settings.object_store == "s3" else ""
    )
    steps = {
        "raw": "The source files of each partition, fetched into staging (streamed, checksummed).",
        "cog": "Cloud-Optimized GeoTIFFs converted from the sources and validated.",
        "object": f"The COGs, stored under {where}.",
        "stac_item": "The STAC items describing the COGs, validated and published; each "
        "partition links to its item (`item_url`).",
        "collection": "The STAC collection, its extent and summaries recomputed from the "
        "published items (not published while it has none).",
    }
    return {
        name: f"**{declaration.title}**: {text}\n\n{declaration.description}"
        for name, text in steps.items()
    }
