"""A dataset's asset checks: valid COGs and items (blocking, results of the partition step)
and the drift audit of the collection (on request)."""

from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg

from bq_pipelines.datasets.audit import audit
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.errors import CogError, StacValidationError
from bq_pipelines.orchestration.keys import (
    AUDIT_CHECK,
    COG_VALID_CHECK,
    ITEM_VALID_CHECK,
    DatasetKeys,
    keys_by_dimension,
)
from bq_pipelines.orchestration.outcomes import MAX_LISTED_ITEMS, PartitionOutcome
from bq_pipelines.orchestration.resources import (
    CatalogResource,
    ObjectStoreResource,
    SourcesResource,
    services_for,
)


def partition_check_specs(keys: DatasetKeys) -> list[dg.AssetCheckSpec]:
    """The checks the partition step reports on each run: every COG and every item valid."""
    return [
        dg.AssetCheckSpec(
            COG_VALID_CHECK,
            asset=keys.step("cog"),
            blocking=True,
            description="Every COG passes rio-cogeo's cog_validate.",
        ),
        dg.AssetCheckSpec(
            ITEM_VALID_CHECK,
            asset=keys.step("stac_item"),
            blocking=True,
            description="Every item validates against the STAC schemas and has data: an "
            "all-nodata raster fails (not published); a constant one is listed in the "
            "metadata (constant_items) as a warning.",
        ),
    ]


def all_partition_dimensions(
    declaration: Declaration,
    partitions_def: dg.PartitionsDefinition,
    instance: dg.DagsterInstance,
) -> dict[str, dict[str, str]]:
    """Every partition of the dataset (file partitions: those the instance knows), with its
    dimension values."""
    keys = partitions_def.get_partition_keys(dynamic_partitions_store=instance)
    return {key: keys_by_dimension(declaration, partitions_def, key) for key in keys}


def partition_check_results(
    keys: DatasetKeys,
    processed: int,
    failures: Mapping[str, BaseException],
    outcomes: Mapping[str, PartitionOutcome],
) -> Iterator[dg.AssetCheckResult]:
    invalid_cogs = {k: str(e) for k, e in failures.items() if isinstance(e, CogError)}
    invalid_items = {k: str(e) for k, e in failures.items() if isinstance(e, StacValidationError)}
    # All-nodata items fail the item check (StacValidationError, never published); constant
    # ones are only reported: a mask of ones is constant and legitimate.
    constant = {k: list(o.constant)[:MAX_LISTED_ITEMS] for k, o in outcomes.items() if o.constant}
    for check, asset, invalid in (
        (COG_VALID_CHECK, keys.step("cog"), invalid_cogs),
        (ITEM_VALID_CHECK, keys.step("stac_item"), invalid_items),
    ):
        metadata: dict[str, Any] = {
            "partitions_checked": processed,
            "invalid": dg.MetadataValue.json(invalid),
        }
        if check == ITEM_VALID_CHECK:
            metadata["constant_items"] = dg.MetadataValue.json(constant)
        yield dg.AssetCheckResult(
            asset_key=asset, check_name=check, passed=not invalid, metadata=metadata
        )


def audit_check(
    declaration: Declaration, partitions_def: dg.PartitionsDefinition
) -> dg.AssetChecksDefinition:
    """The drift audit (audit.py) as a non-blocking check of the collection. Not part of the
    dataset's job: it reads every item and HEADs every object, so it runs on request (the
    asset's Checks tab, or `bq-pipelines audit <dataset>`), not after every batch."""
    keys = DatasetKeys(declaration.id)

    @dg.asset_check(
        asset=keys.collection,
        name=AUDIT_CHECK,
        blocking=False,
        description=(
            "The catalog matches the object store: every item's object exists with the size "
            "and sha256 the item says, no object under the dataset's folders lacks its item, "
            "no item lies outside the dataset's partitions, nothing is listed twice (a failure). "
            "Declared partitions not published (a backfill cut short) are a warning, with "
            "their keys. Repair: `bq-pipelines audit <dataset> --fix`; gaps: a backfill."
        ),
    )
    def catalog_matches_store(
        context: dg.AssetCheckExecutionContext,
        object_store: ObjectStoreResource,
        catalog: CatalogResource,
        sources: SourcesResource,
    ) -> dg.AssetCheckResult:
        report = audit(
            declaration,
            all_partition_dimensions(declaration, partitions_def, context.instance),
            services_for(object_store, catalog, sources),
            sources.locations(),
        )
        context.log.info(report.summary())
        # Drift fails the check; gaps alone are a warning (a backfill fills them).
        complete = not report.missing_partitions
        return dg.AssetCheckResult(
            passed=report.clean and complete,
            severity=dg.AssetCheckSeverity.ERROR
            if not report.clean
            else dg.AssetCheckSeverity.WARN,
            description=report.summary(),
            metadata={
                **report.counts(),
                **{name: dg.MetadataValue.json(ids) for name, ids in report.listing().items()},
            },
        )

    return catalog_matches_store
