"""One ingestion request through the dataset pipeline's own steps (Dagster-free).

A request becomes an `ItemPlan` like a dataset partition's: one source (`file_source_host` +
`filename`), the item id `name`, the datetime from `date`, the request's properties. The COG
settings are the collection's declaration's when the collection is declared
(bq_pipelines/defs/<id>/defs.yaml), DEFAULT_COG otherwise; the COG is `<name>.tif` in the declared
folder, or a folder named after the collection (named after the item, not the source file: two
items sent with the same file name must not share an object). Then `run_items` fetches (within
the API's limits), converts, validates, stores and publishes, and the collection's extent grows
to cover the new item.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pystac
import rasterio
from rasterio.errors import RasterioError

from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.ingestion.models import (
    CREATEPYSTACITEM,
    GETCOLLECTION,
    GETITEMFILE,
    TRANF_COG,
    UPLOAD_COG_TO_SERVER,
    NewItem,
)
from bq_pipelines.lib import stac, tiff
from bq_pipelines.lib.cog import CogSettings
from bq_pipelines.lib.errors import CatalogError, SourceRefused
from bq_pipelines.lib.pipeline import ItemPlan, ItemResult, Services, SourceRef, Step, run_items
from bq_pipelines.lib.storage import API_WRITER

# Undeclared collections: the `raw` profile (CRS and resolution kept, DEFLATE with a predictor
# fitting the dtype, 512 px tiles, internal overviews, nodata kept), not categorical.
DEFAULT_COG = CogSettings()
COG_EXTENSIONS = (".tif", ".tiff")

LEGACY_OPERATIONS = {
    Step.FETCH: GETITEMFILE,
    Step.CONVERT: TRANF_COG,
    Step.DESCRIBE: CREATEPYSTACITEM,
    Step.STORE: UPLOAD_COG_TO_SERVER,
    Step.PUBLISH: UPLOAD_COG_TO_SERVER,
}
STEP_TEXT = {
    Step.FETCH: "downloading {}",
    Step.CONVERT: "converting {} to a Cloud-Optimized GeoTIFF and validating it",
    Step.DESCRIBE: "creating and validating the STAC item {}",
    Step.STORE: "uploading the COG to {}",
    Step.PUBLISH: "publishing the item ({})",
}

# (legacy operation, pipeline step, what is happening)
Report = Callable[[str, str, str], None]
Lock = Callable[[str], contextlib.AbstractContextManager[None]]


@dataclass(frozen=True)
class ProcessedRequest:
    item: ItemResult
    item_url: str
    extent_updated: bool
    history: str


def cog_file_name(item_id: str) -> str:
    """The object's file name: the item id, with a .tif extension unless it has one."""
    return item_id if item_id.lower().endswith(COG_EXTENSIONS) else f"{item_id}.tif"


def plan_request(body: NewItem, declarations: Mapping[str, Declaration]) -> ItemPlan:
    declaration = declarations.get(body.collection_id)
    return ItemPlan(
        collection_id=body.collection_id,
        item_id=body.name,
        folder=declaration.folder if declaration else body.collection_id,
        file_name=cog_file_name(body.name),
        sources=(SourceRef(url=body.source_url),),
        cog=declaration.cog.settings() if declaration else DEFAULT_COG,
        datetime=body.moment,
        properties={k: v for k, v in body.properties.items() if k != "datetime"},
        # Recorded with the object's owner: the dataset's audit knows the item is the API's.
        writer=API_WRITER,
    )


def geotiff_check(url: str, path: Path) -> None:
    """`FetchLimits.check_file` for the API: a TIFF GDAL's GTiff driver reads. Nothing else
    reaches GDAL: formats such as VRT can point GDAL at other files or URLs. (Its size is
    checked before conversion, like a dataset's: `FetchLimits.max_pixels`.)"""
    if not tiff.is_tiff(path):
        raise SourceRefused(url, "not a GeoTIFF (the ingestion API converts GeoTIFFs only)")
    try:
        with rasterio.open(path, driver="GTiff"):
            pass
    except RasterioError as error:
        raise SourceRefused(url, f"not a readable GeoTIFF: {error}") from None


def process_request(
    request_id: str,
    body: NewItem,
    services: Services,
    declarations: Mapping[str, Declaration],
    report: Report,
    lock: Lock = lambda name: contextlib.nullcontext(),
) -> ProcessedRequest:
    """Publish the request's item; raises PipelineError naming the step's problem."""
    history: list[str] = []

    def say(operation: str, step: str, text: str) -> None:
        history.append(f"{operation}: {text}")
        report(operation, step, text)

    publisher = services.publisher
    say(GETCOLLECTION, "collection", f"reading collection {body.collection_id!r}")
    if publisher.get_collection(body.collection_id) is None:
        raise CatalogError(
            f'Unable to read collection "{body.collection_id}": it is not in the catalog'
        )
    plan = plan_request(body, declarations)

    def on_step(step: Step, detail: str) -> None:
        if step in LEGACY_OPERATIONS:  # not CLEANUP: a failure keeps the step it failed in
            say(LEGACY_OPERATIONS[step], step.value, STEP_TEXT[step].format(detail))

    [result] = run_items([plan], services, f"api-{request_id}", on_step).items
    say(UPLOAD_COG_TO_SERVER, "collection", "growing the collection's extent")
    # Nothing may write to the store inside: with SQLite the lock is the store's write lock.
    with lock(f"collection:{body.collection_id}"):
        extent_updated = grow_collection_extent(services, body.collection_id, result.item)
    item_url = publisher.item_url(body.collection_id, body.name)
    history.append(f"item {result.outcome}: {item_url}")
    return ProcessedRequest(result, item_url, extent_updated, "\n".join(history))


def grow_collection_extent(services: Services, collection_id: str, item: dict[str, Any]) -> bool:
    """Extend the collection's extent to the item (a read-modify-write: hold the collection's
    lock across it). Returns whether the collection changed."""
    collection = services.publisher.get_collection(collection_id)
    if collection is None:
        raise CatalogError(f"collection {collection_id!r} vanished from the catalog")
    extent = stac.grown_extent(collection, [item])
    if extent == collection.get("extent"):
        return False
    updated = pystac.Collection.from_dict({**collection, "extent": extent})
    services.publisher.upsert_collection(updated)
    return True
