"""The adopt job of a dataset: record as materialized the partitions a catalog already publishes
as planned (adoption.py), so that the next backfill only fills the gaps.

One op, `<id>_adopt`, in the job `<id>_adopt_job` (the UI's launchpad, or
`bq-pipelines adopt <id>`). Each adopted partition gets one materialization of each of its four
assets, marked `adopted: true`, with the objects' sizes and ETags and the sources' fingerprint;
the others are listed with their reasons and left alone. Nothing is written to the catalog or
the store.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from bq_pipelines.datasets.adoption import ADOPTED, ADOPTED_OBJECTS, MAX_REASONS, Assessment
from bq_pipelines.datasets.adoption import assess_partition as assess
from bq_pipelines.datasets.plans import SourceLocations
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.pipeline import Services, settings_digest
from bq_pipelines.orchestration.keys import (
    CODE_VERSION_TAG,
    DATASET_TAG,
    SETTINGS_DIGEST,
    DatasetKeys,
    keys_by_dimension,
    op_name,
)
from bq_pipelines.orchestration.resources import (
    CatalogResource,
    ObjectStoreResource,
    SourcesResource,
    services_for,
)

MAX_LISTED = 25


class AdoptConfig(dg.Config):
    """Which partitions to adopt: every one of the dataset by default."""

    partitions: list[str] = []


@dataclass
class _Tally:
    """The partitions adopted so far, and those refused with their reasons."""

    adopted: list[str] = field(default_factory=list)
    refused: dict[str, list[str]] = field(default_factory=dict)


def adopt_job(
    declaration: Declaration, partitions_def: dg.PartitionsDefinition, code_version: str
) -> dg.JobDefinition:
    return dg.GraphDefinition(
        name=op_name(declaration.id, "adopt_job"),
        node_defs=[_adopt_op(declaration, partitions_def, code_version)],
        description=(
            f"Adopt what the catalog already publishes of {declaration.title}: partitions whose "
            "items and objects match the plan are recorded as materialized (nothing is written "
            "to the catalog or the store), so a backfill only fills the gaps."
        ),
    ).to_job(tags={DATASET_TAG: declaration.id})


def _adopt_op(
    declaration: Declaration, partitions_def: dg.PartitionsDefinition, code_version: str
) -> dg.OpDefinition:
    @dg.op(
        name=op_name(declaration.id, "adopt"),
        description=f"Record the partitions of {declaration.id} the catalog already publishes.",
        out=dg.Out(dict),
    )
    def adopt(
        context: dg.OpExecutionContext,
        config: AdoptConfig,
        object_store: ObjectStoreResource,
        catalog: CatalogResource,
        sources: SourcesResource,
    ) -> Iterator[dg.AssetMaterialization | dg.Output]:
        wanted = config.partitions or list(
            partitions_def.get_partition_keys(dynamic_partitions_store=context.instance)
        )
        services = services_for(object_store, catalog, sources)
        tally = _Tally()
        yield from _adopt_partitions(
            declaration, partitions_def, wanted, services, sources.locations(), code_version, tally
        )
        context.log.info(
            f"{declaration.id}: {len(tally.adopted)} of {len(wanted)} partitions adopted; "
            f"{len(tally.refused)} left to the next backfill"
        )
        yield _summary(tally)

    return adopt


def _adopt_partitions(
    declaration: Declaration,
    partitions_def: dg.PartitionsDefinition,
    wanted: Sequence[str],
    services: Services,
    locations: SourceLocations,
    code_version: str,
    tally: _Tally,
) -> Iterator[dg.AssetMaterialization]:
    """Each wanted partition assessed in turn: the adoptable ones materialized as they are
    found (a later failure keeps them), the others tallied with their reasons."""
    keys = DatasetKeys(declaration.id)
    for partition_key in wanted:
        dimension_keys = keys_by_dimension(declaration, partitions_def, partition_key)
        found = assess(declaration, partition_key, dimension_keys, services, locations)
        if not found.adoptable:
            tally.refused[partition_key] = found.reasons[:MAX_REASONS]
            continue
        tally.adopted.append(partition_key)
        yield from _materializations(keys, found, services, code_version)


def _summary(tally: _Tally) -> dg.Output:
    return dg.Output(
        {"adopted": tally.adopted, "refused": tally.refused},
        metadata={
            "adopted": len(tally.adopted),
            "not_adopted": len(tally.refused),
            "reasons": dg.MetadataValue.json(dict(list(tally.refused.items())[:MAX_LISTED])),
        },
    )


def _materializations(
    keys: DatasetKeys, found: Assessment, services: Services, code_version: str
) -> Iterator[dg.AssetMaterialization]:
    plans = found.plans
    first = plans[0]
    objects = found.objects_json()
    shared: dict[str, Any] = {ADOPTED: True, "skipped": False}
    per_asset: dict[str, dict[str, Any]] = {
        "raw": {
            "source_urls": dg.MetadataValue.md("\n".join(f"- {u}" for u in _source_urls(plans))),
        },
        "cog": {"cogs": len(plans)},
        "object": {
            "href": dg.MetadataValue.url(services.store.href(next(iter(found.objects)))),
            "bytes": sum(o.size for o in found.objects.values()),
            ADOPTED_OBJECTS: dg.MetadataValue.json(objects),
        },
        "stac_item": {
            "item_url": dg.MetadataValue.url(
                services.publisher.item_url(first.collection_id, first.item_id)
            ),
            "fingerprint": found.fingerprint,
            SETTINGS_DIGEST: settings_digest(plans),
            "items": len(plans),
            "item_ids": [p.item_id for p in plans[:MAX_LISTED]],
            ADOPTED_OBJECTS: dg.MetadataValue.json(objects),
        },
    }
    for name, metadata in per_asset.items():
        yield dg.AssetMaterialization(
            asset_key=keys.step(name),
            partition=found.partition_key,
            metadata={**shared, **metadata},
            # As current as the code that planned it (the UI reads the version from this tag).
            tags={CODE_VERSION_TAG: code_version},
        )


def _source_urls(plans: Sequence[Any]) -> list[str]:
    return list(dict.fromkeys(s.url for p in plans for s in p.sources))
