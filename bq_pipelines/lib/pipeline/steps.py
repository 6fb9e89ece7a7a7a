"""The steps that make one item: fetch its sources, convert them to a COG, render its thumbnail,
describe and check the item, store its objects. Nothing is stored unless the COG and the item
validate."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import pystac

from bq_pipelines.lib import cog, preview, sources, stac
from bq_pipelines.lib.errors import (
    CogError,
    PipelineError,
    RasterTooLarge,
    SourceRefused,
    StacValidationError,
)
from bq_pipelines.lib.hashing import sha256_bytes
from bq_pipelines.lib.pipeline.plan import ItemPlan, SourceRef, item_fields
from bq_pipelines.lib.pipeline.services import Services
from bq_pipelines.lib.redaction import redact_url
from bq_pipelines.lib.storage import ObjectOwner, StoredObject, object_key

logger = logging.getLogger(__name__)


class Step(StrEnum):
    """Steps in order; the ingestion API reports them."""

    FETCH = "fetch"
    CONVERT = "convert"
    DESCRIBE = "describe"
    STORE = "store"
    PUBLISH = "publish"
    CLEANUP = "cleanup"


StepCallback = Callable[[Step, str], None]


def log_step(step: Step, detail: str) -> None:
    """The default step callback: a debug line."""
    logger.debug("%s: %s", step, detail)


def probe_sources(urls: Sequence[str], services: Services) -> list[sources.SourceFingerprint]:
    return [
        sources.probe(
            url,
            retry=services.retry,
            s3_endpoint_url=services.s3_endpoint_url,
            limits=services.fetch_limits,
            http=services.http,
        )
        for url in urls
    ]


def fetch_sources(
    urls: Sequence[str], staging: Path, services: Services
) -> dict[str, sources.FetchedFile]:
    """Download each distinct URL once into `staging` (names kept unique by an index); local
    files are read where they are (confined to the limits' local root), unless a guard decides
    what is allowed (the ingestion API's: it refuses them)."""
    limits = services.fetch_limits
    fetched: dict[str, sources.FetchedFile] = {}
    for index, url in enumerate(dict.fromkeys(urls)):
        if sources.is_local(url) and (limits is None or limits.guard is None):
            fetched[url] = sources.describe_local(url, limits)
            continue
        name = f"{index:03d}-{Path(url.split('?')[0]).name or 'source'}"
        fetched[url] = sources.fetch(
            url,
            staging,
            file_name=name,
            retry=services.retry,
            s3_endpoint_url=services.s3_endpoint_url,
            limits=services.fetch_limits,
            http=services.http,
        )
    return fetched


def convert(
    plan: ItemPlan,
    fetched: Mapping[str, sources.FetchedFile],
    staging: Path,
    services: Services,
    prepared: cog.RasterInput | None = None,
) -> cog.CogInfo:
    """The plan's COG, from its fetched sources (or from an input already `prepared`)."""
    inputs = (
        [prepared]
        if prepared is not None
        else [
            cog.RasterInput(path=fetched[s.url].path, subdataset=s.subdataset, bands=s.bands)
            for s in plan.sources
        ]
    )
    try:
        return _to_cog(plan, inputs, staging, services.max_pixels)
    except SourceRefused as error:
        raise source_refusal(error, plan.sources, fetched, services) from error


def _to_cog(
    plan: ItemPlan, inputs: list[cog.RasterInput], staging: Path, max_pixels: int | None
) -> cog.CogInfo:
    try:
        info = cog.to_cog(
            inputs if len(inputs) > 1 else inputs[0],
            staging / plan.file_name,
            plan.cog,
            max_pixels=max_pixels,
        )
    except CogError as error:
        # Name the source, not the staging copy: that is what a user can go and fix.
        sources_text = ", ".join(redact_url(s.url) for s in plan.sources)
        raise CogError(f"item {plan.item_id} from {sources_text}: {error}") from error
    return info  # to_cog validated it (cog_validate) before writing it in place


def source_refusal(
    error: SourceRefused,
    refs: Sequence[SourceRef],
    fetched: Mapping[str, sources.FetchedFile],
    services: Services,
) -> SourceRefused:
    """The refusal naming the source URL (not its staging copy) and the limit's setting."""
    url = next(
        (ref.url for ref in refs if ref.url in fetched and str(fetched[ref.url].path) == error.url),
        ", ".join(ref.url for ref in refs),
    )  # redacted below
    reason = error.reason
    if isinstance(error, RasterTooLarge) and services.fetch_limits is not None:
        reason += services.fetch_limits.setting("MAX_PIXELS")
    return type(error)(redact_url(url), reason)


@dataclass(frozen=True)
class ThumbnailFile:
    """A thumbnail rendered into staging, and where it goes."""

    path: Path
    key: str
    href: str
    size: int
    sha256: str


def render_thumbnail(
    plan: ItemPlan, info: cog.CogInfo, staging: Path, services: Services
) -> ThumbnailFile:
    """The plan's thumbnail, rendered from its COG's overviews into staging."""
    key = object_key(
        services.object_prefix, plan.folder, preview.thumbnail_file_name(plan.file_name)
    )
    return thumbnail_at(plan, info, staging, key, services.store.href(key))


def thumbnail_at(
    plan: ItemPlan, info: cog.CogInfo, staging: Path, key: str, href: str
) -> ThumbnailFile:
    """The plan's thumbnail, rendered into staging, to be stored at `key` (`href`): where it
    goes is given, since a worker process has no object store to ask."""
    name = preview.thumbnail_file_name(plan.file_name)
    try:
        thumbnail = preview.render_thumbnail(info.path, categorical=plan.cog.categorical)
    except Exception as error:
        raise PipelineError(f"item {plan.item_id}: cannot render its thumbnail: {error}") from error
    path = thumbnail.write(staging / name)
    return ThumbnailFile(
        path=path, key=key, href=href, size=len(thumbnail.png), sha256=sha256_bytes(thumbnail.png)
    )


def describe(
    plan: ItemPlan,
    info: cog.CogInfo,
    href: str,
    services: Services,
    thumbnail: ThumbnailFile | None = None,
) -> pystac.Item:
    """The plan's item, built from its COG and checked (`checked_item`)."""
    return checked_item(plan, info, href, services.stac_schemas_dir, thumbnail)


def checked_item(
    plan: ItemPlan,
    info: cog.CogInfo,
    href: str,
    stac_schemas_dir: Path | None,
    thumbnail: ThumbnailFile | None = None,
    values: Sequence[np.ma.MaskedArray] | None = None,
) -> pystac.Item:
    """The plan's item, built from its COG, validated, and refused when it holds no data.
    `values`: the COG's bands already in memory, for its statistics (`stac.build_item`)."""
    item = stac.build_item(
        info.path,
        **item_fields(plan, href),
        file_size=info.size,
        file_sha256=info.sha256,
        values=values,
    )
    if thumbnail is not None:
        stac.add_thumbnail(item, thumbnail.href, size=thumbnail.size, sha256=thumbnail.sha256)
    stac.validate(item, stac_schemas_dir)
    empty = stac.nodata_only(item, info.path)
    if empty is not None:
        # Published, it would look like a successful ingestion of a blank map.
        raise StacValidationError(f"item {plan.item_id}: {empty}: not published")
    return item


@dataclass(frozen=True)
class Produced:
    """One item converted, described and stored, not yet published."""

    item: pystac.Item
    info: cog.CogInfo
    stored: StoredObject
    thumbnail: StoredObject | None = None


def produce_item(
    plan: ItemPlan,
    fetched: Mapping[str, sources.FetchedFile],
    staging: Path,
    services: Services,
    on_step: StepCallback = log_step,
    prepared: cog.RasterInput | None = None,
) -> Produced:
    """Convert, check and upload one item whose sources are already fetched (not published)."""
    on_step(Step.CONVERT, plan.item_id)
    info = convert(plan, fetched, staging, services, prepared)
    key = object_key(services.object_prefix, plan.folder, plan.file_name)
    on_step(Step.DESCRIBE, plan.item_id)
    thumbnail = render_thumbnail(plan, info, staging, services) if plan.thumbnail else None
    item = describe(plan, info, services.store.href(key), services, thumbnail)
    return store_produced(plan, item, info, thumbnail, services, on_step)


def store_produced(
    plan: ItemPlan,
    item: pystac.Item,
    info: cog.CogInfo,
    thumbnail: ThumbnailFile | None,
    services: Services,
    on_step: StepCallback,
) -> Produced:
    """Upload the item's COG (validated, described) and thumbnail, and remove their staging
    copies."""
    key = object_key(services.object_prefix, plan.folder, plan.file_name)
    on_step(Step.STORE, key)
    # The owner makes the store refuse to overwrite another item's object with this one; the
    # thumbnail belongs to the same item.
    owner = ObjectOwner(plan.collection_id, plan.item_id, plan.writer)
    rewrite = services.rewrite_objects
    stored = services.store.put_file(
        info.path, key, sha256=info.sha256, owner=owner, rewrite=rewrite
    )
    info.path.unlink(missing_ok=True)
    stored_thumbnail = None
    if thumbnail is not None:
        stored_thumbnail = services.store.put_file(
            thumbnail.path,
            thumbnail.key,
            sha256=thumbnail.sha256,
            owner=owner,
            content_type=preview.PNG_MEDIA_TYPE,
            rewrite=rewrite,
        )
        thumbnail.path.unlink(missing_ok=True)
    return Produced(item, info, stored, stored_thumbnail)
