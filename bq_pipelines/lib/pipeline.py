"""The ingestion steps, chained: fetch -> COG -> check -> item -> check -> store -> publish.

Dagster-free, so the dataset assets and the ingestion API run the very same code. Nothing is
published unless the COG and the item validate; the object is uploaded only after both checks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime as DateTime  # the type, where a field is named `datetime`
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pystac

from bq_pipelines.lib import cog, preview, sources, stac
from bq_pipelines.lib.catalog import Publisher, PublishOutcome
from bq_pipelines.lib.errors import (
    CogError,
    PipelineError,
    RasterTooLarge,
    SourceRefused,
    StacValidationError,
)
from bq_pipelines.lib.hashing import sha256_bytes, sha256_json
from bq_pipelines.lib.links import Links
from bq_pipelines.lib.redaction import redact_url
from bq_pipelines.lib.retry import RetryPolicy
from bq_pipelines.lib.storage import ObjectOwner, ObjectStore, StoredObject, object_key

logger = logging.getLogger(__name__)

# Bump when a change here alters what a partition produces: it invalidates skip-unchanged.
# 2: the COG asset keyed by the item id, proj:epsg beside proj:code, spatial_resolution.
PIPELINE_VERSION = "2"


class Step(StrEnum):
    """Steps in order; the ingestion API reports them."""

    FETCH = "fetch"
    CONVERT = "convert"
    DESCRIBE = "describe"
    STORE = "store"
    PUBLISH = "publish"
    CLEANUP = "cleanup"


@dataclass(frozen=True)
class SourceRef:
    """One input file of an item, and what to read from it."""

    url: str
    subdataset: str | None = None
    bands: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ItemPlan:
    """Everything needed to produce and publish one item: the unit of work."""

    collection_id: str
    item_id: str
    folder: str
    file_name: str
    sources: tuple[SourceRef, ...]
    cog: cog.CogSettings
    datetime: DateTime | None = None
    start_datetime: DateTime | None = None
    end_datetime: DateTime | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)
    title: str | None = None
    # A PNG thumbnail stored beside the COG (`preview.thumbnail_file_name`) and added to the
    # item as its `thumbnail` asset.
    thumbnail: bool = False
    # Who writes the item when not a dataset's partition (`storage.API_WRITER`): recorded with
    # the object's owner, so that the audit knows whose item it is.
    writer: str = ""

    def fingerprint_payload(self) -> dict[str, Any]:
        payload = {
            "collection": self.collection_id,
            "item": self.item_id,
            "folder": self.folder,
            "file": self.file_name,
            "cog": self.cog.fingerprint(),
            "sources": [[s.url, s.subdataset, list(s.bands or ())] for s in self.sources],
            "datetime": [str(self.datetime), str(self.start_datetime), str(self.end_datetime)],
            "properties": dict(self.properties),
            "title": self.title,
        }
        if self.thumbnail:  # only then: items without thumbnails keep their fingerprints
            payload["thumbnail"] = preview.PREVIEW_VERSION
        return payload


@dataclass(frozen=True)
class ItemResult:
    plan: ItemPlan
    cog: cog.CogInfo
    stored: StoredObject
    item: dict[str, Any]
    outcome: PublishOutcome
    thumbnail: StoredObject | None = None


@dataclass(frozen=True)
class Services:
    """Where things go: the object store, the catalog, a staging folder, retry policy."""

    store: ObjectStore
    publisher: Publisher
    work_dir: Path
    object_prefix: str = "io"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    s3_endpoint_url: str | None = None
    stac_schemas_dir: Path | None = None
    # Bounds on fetching and converting sources (download size, pixels; for the ingestion API
    # also where sources may come from); None trusts them.
    fetch_limits: sources.FetchLimits | None = None
    # Processes producing the items of one many-band source (a cube's species); 1 produces
    # them in this process. The identical items either way (tested).
    item_workers: int = 1
    # One HTTP client for every probe and fetch made with these services (a run's).
    http: sources.HttpSession = field(default_factory=sources.HttpSession, compare=False)
    # A folder kept between runs where what each band of a many-band source file says is
    # cached (`cog.band_facts`): read once per file (a cube's scenario), not once per partition.
    # None reads them in every partition.
    band_facts_cache: Path | None = None
    # Links recorded for people (browse server, tile server); none by default.
    links: Links = field(default_factory=Links)
    # Upload every object again, even one the store holds with the same sha256 (`--force`).
    rewrite_objects: bool = False

    @property
    def max_pixels(self) -> int | None:
        return self.fetch_limits.max_pixels if self.fetch_limits is not None else None


StepCallback = Callable[[Step, str], None]


def _no_callback(step: Step, detail: str) -> None:
    logger.debug("%s: %s", step, detail)


def fingerprint(plans: Sequence[ItemPlan], source_tokens: Sequence[str]) -> str:
    """Changes whenever a source, a setting or the code that turns them into items changes."""
    payload = {
        "pipeline": PIPELINE_VERSION,
        "cog": cog.COG_ALGORITHM_VERSION,
        "sources": sorted(source_tokens),
        "items": [p.fingerprint_payload() for p in plans],
    }
    return sha256_json(payload)


def settings_digest(plans: Sequence[ItemPlan]) -> str:
    """What the fingerprint holds but the sources: the items planned, their settings and the
    code. Recorded beside it, it tells a partition whose settings changed without asking any
    source host."""
    return fingerprint(plans, [])


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
        raise _refused(error, plan.sources, fetched, services) from error


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


def _refused(
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
    return _render_thumbnail(plan, info, staging, key, services.store.href(key))


def _render_thumbnail(
    plan: ItemPlan, info: cog.CogInfo, staging: Path, key: str, href: str
) -> ThumbnailFile:
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
    return _describe(plan, info, href, services.stac_schemas_dir, thumbnail)


def _describe(
    plan: ItemPlan,
    info: cog.CogInfo,
    href: str,
    stac_schemas_dir: Path | None,
    thumbnail: ThumbnailFile | None = None,
    values: Sequence[np.ma.MaskedArray] | None = None,
) -> pystac.Item:
    item = stac.build_item(
        info.path,
        item_id=plan.item_id,
        collection_id=plan.collection_id,
        datetime_=plan.datetime,
        start_datetime=plan.start_datetime,
        end_datetime=plan.end_datetime,
        properties=plan.properties,
        asset=stac.ItemAssetSpec(href=href, key=plan.item_id, title=plan.title or plan.file_name),
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
    on_step: StepCallback = _no_callback,
    prepared: cog.RasterInput | None = None,
) -> Produced:
    """Convert, check and upload one item whose sources are already fetched (not published)."""
    on_step(Step.CONVERT, plan.item_id)
    info = convert(plan, fetched, staging, services, prepared)
    key = object_key(services.object_prefix, plan.folder, plan.file_name)
    on_step(Step.DESCRIBE, plan.item_id)
    thumbnail = render_thumbnail(plan, info, staging, services) if plan.thumbnail else None
    item = describe(plan, info, services.store.href(key), services, thumbnail)
    return _store(plan, item, info, thumbnail, services, on_step)


def _store(
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


@dataclass
class PartitionResult:
    items: list[ItemResult]
    fetched: list[sources.FetchedFile]


def run_items(
    plans: Sequence[ItemPlan],
    services: Services,
    staging_name: str,
    on_step: StepCallback = _no_callback,
    collection: pystac.Collection | None = None,
) -> PartitionResult:
    """Fetch every source once, produce each item, then publish them all together (in bulk
    when the catalog supports it). A failing item stops the partition before anything is
    published; objects already uploaded are simply overwritten by the rerun. The staging
    folder is always removed.

    `collection` is created, if the catalog lacks it, right before the items: a partition that
    fails earlier leaves no empty collection behind.
    """
    if not plans:
        raise PipelineError(f"{staging_name}: nothing to produce (no items planned)")
    staging = services.work_dir / _safe_name(staging_name)
    staging.mkdir(parents=True, exist_ok=True)
    try:
        urls = [source.url for plan in plans for source in plan.sources]
        on_step(Step.FETCH, ", ".join(dict.fromkeys(urls)))
        fetched = fetch_sources(urls, staging, services)
        produced = _produce_all(plans, fetched, staging, services, on_step)
        on_step(Step.PUBLISH, f"{len(produced)} items")
        if collection is not None:
            services.publisher.ensure_collection(collection)
        outcomes = services.publisher.upsert_items([p.item for p in produced])
        results = [
            ItemResult(
                plan=plan,
                cog=p.info,
                stored=p.stored,
                item=p.item.to_dict(),
                outcome=outcome,
                thumbnail=p.thumbnail,
            )
            for plan, p, outcome in zip(plans, produced, outcomes, strict=True)
        ]
        return PartitionResult(items=results, fetched=list(fetched.values()))
    finally:
        on_step(Step.CLEANUP, str(staging))
        shutil.rmtree(staging, ignore_errors=True)


def _one_band_of_one_source(plans: Sequence[ItemPlan]) -> bool:
    """Items that each read one band of the same single source (e.g. species of a cube)."""
    first = plans[0].sources
    return len(plans) > 1 and all(
        len(p.sources) == 1
        and (p.sources[0].url, p.sources[0].subdataset) == (first[0].url, first[0].subdataset)
        and p.sources[0].bands is not None
        and len(p.sources[0].bands) == 1
        for p in plans
    )


def _produce_all(
    plans: Sequence[ItemPlan],
    fetched: Mapping[str, sources.FetchedFile],
    staging: Path,
    services: Services,
    on_step: StepCallback,
) -> list[Produced]:
    if not _one_band_of_one_source(plans):
        return [produce_item(plan, fetched, staging, services, on_step) for plan in plans]
    ref = plans[0].sources[0]
    path = fetched[ref.url].path
    job = _BandJob(
        source=cog.RasterInput(path=path, subdataset=ref.subdataset),
        settings=plans[0].cog,
        staging=staging,
        max_pixels=services.max_pixels,
        stac_schemas_dir=services.stac_schemas_dir,
        # Only files read where they are: a download lands in this run's staging, anew.
        facts_cache=None if path.is_relative_to(staging) else services.band_facts_cache,
    )
    targets = [_Target.of(plan, services) for plan in plans]
    workers = min(item_workers(services.item_workers), len(plans) // MIN_ITEMS_PER_WORKER)
    if workers > 1 and multiprocessing.current_process().daemon:
        # A daemonic process (a Celery prefork worker, a pool's worker) may not start any.
        logger.info("producing %d items in this process: it may not start others", len(plans))
        workers = 1
    produced: list[Produced] = []

    def store(plan: ItemPlan, described: _Described) -> None:
        produced.append(_store(plan, *described, services, on_step))

    try:
        if workers <= 1:
            with contextlib.ExitStack() as stack:
                try:
                    convert = stack.enter_context(_band_converter(job))
                except CogError as error:
                    raise CogError(f"{redact_url(ref.url)}: {error}") from error
                for plan, target in zip(plans, targets, strict=True):
                    store(plan, _band_item(convert, job, plan, target, on_step))
            return produced
        # Read here, once, for every worker: a source that cannot be read fails once, naming
        # its URL, and the workers skip the slow part of opening it (~30 s for 45,810 bands).
        try:
            facts = cog.band_facts(job.source, job.settings, job.max_pixels, job.facts_cache)
        except CogError as error:
            raise CogError(f"{redact_url(ref.url)}: {error}") from error
        chunks = _chunks(list(zip(plans, targets, strict=True)), workers)
        # spawn, not fork: the parent may hold threads (Dagster's) and GDAL state.
        context = multiprocessing.get_context("spawn")
        logger.debug("producing %d items in %d processes", len(plans), workers)
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(job, facts)
        ) as pool:
            # In order, as each chunk completes: uploads overlap with the conversions.
            results = pool.map(_band_items, chunks)
            for chunk, described in zip(chunks, results, strict=True):
                for (plan, _), one in zip(chunk, described, strict=True):
                    store(plan, one)
    except SourceRefused as error:
        raise _refused(error, [ref], fetched, services) from error
    return produced


# Below this many items per process, starting the processes (~1 s each: spawn and imports)
# costs more than it saves (~0.1 s an item).
MIN_ITEMS_PER_WORKER = 16
# Chunks per worker: small enough to balance the load and start uploads early, large enough
# that each chunk's pickling and dispatch stay negligible.
_CHUNKS_PER_WORKER = 8


def item_workers(configured: int | None) -> int:
    """Processes for item production: `configured` if positive, else the CPUs this process
    may run on (its affinity, not the machine's count: a container or taskset may limit it)."""
    if configured is not None and configured > 0:
        return configured
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class _BandJob:
    """What a process needs to produce items from bands of one source (picklable)."""

    source: cog.RasterInput
    settings: cog.CogSettings
    staging: Path
    max_pixels: int | None
    stac_schemas_dir: Path | None
    facts_cache: Path | None = None


@dataclass(frozen=True)
class _Target:
    """Where an item's objects go: computed by the parent (workers have no object store)."""

    href: str
    thumbnail_key: str | None = None
    thumbnail_href: str | None = None

    @classmethod
    def of(cls, plan: ItemPlan, services: Services) -> _Target:
        href = services.store.href(object_key(services.object_prefix, plan.folder, plan.file_name))
        if not plan.thumbnail:
            return cls(href)
        name = preview.thumbnail_file_name(plan.file_name)
        key = object_key(services.object_prefix, plan.folder, name)
        return cls(href, key, services.store.href(key))


# An item, its COG and its thumbnail, in staging, not yet stored.
_Described = tuple[pystac.Item, cog.CogInfo, ThumbnailFile | None]


_BandConverter = Callable[[int, Path], cog.BandCog]


def _band_converter(
    job: _BandJob, facts: cog.BandFacts | None = None
) -> contextlib.AbstractContextManager[_BandConverter]:
    return cog.band_converter(
        job.source, job.settings, job.staging, job.max_pixels, facts, job.facts_cache
    )


def _band_item(
    convert: _BandConverter,
    job: _BandJob,
    plan: ItemPlan,
    target: _Target,
    on_step: StepCallback = _no_callback,
) -> _Described:
    """The COG and thumbnail (left in staging) and the item of one plan reading one band of
    the source. The item's statistics come from the band as read for the COG, when it was
    converted from memory."""
    on_step(Step.CONVERT, plan.item_id)
    band = _convert_band(convert, plan, job.staging)
    info = band.info
    values = [band.values] if band.values is not None else None
    on_step(Step.DESCRIBE, plan.item_id)
    thumbnail = None
    if target.thumbnail_key is not None and target.thumbnail_href is not None:
        thumbnail = _render_thumbnail(
            plan, info, job.staging, target.thumbnail_key, target.thumbnail_href
        )
    item = _describe(plan, info, target.href, job.stac_schemas_dir, thumbnail, values)
    return item, info, thumbnail


@dataclass
class _Worker:
    """A worker process's job, and its source once opened (by its first chunk, so that an
    error reaches the parent as the chunk's; kept open until the process ends)."""

    job: _BandJob
    facts: cog.BandFacts
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    convert: _BandConverter | None = None


_worker: _Worker | None = None


def _start_worker(job: _BandJob, facts: cog.BandFacts) -> None:
    global _worker
    _worker = _Worker(job, facts)


def _band_items(chunk: Sequence[tuple[ItemPlan, _Target]]) -> list[_Described]:
    """In a worker process: the items of `chunk` (plans and where their objects go)."""
    worker = _worker
    assert worker is not None, "_start_worker runs first"
    if worker.convert is None:
        worker.convert = worker.stack.enter_context(_band_converter(worker.job, worker.facts))
    return [_band_item(worker.convert, worker.job, plan, target) for plan, target in chunk]


def _chunks(
    items: list[tuple[ItemPlan, _Target]], workers: int
) -> list[list[tuple[ItemPlan, _Target]]]:
    size = max(1, math.ceil(len(items) / (workers * _CHUNKS_PER_WORKER)))
    return [items[start : start + size] for start in range(0, len(items), size)]


def _convert_band(convert: _BandConverter, plan: ItemPlan, staging: Path) -> cog.BandCog:
    ref = plan.sources[0]
    try:
        return convert(ref.bands[0], staging / plan.file_name)  # type: ignore[index]
    except CogError as error:
        # Name the source, not the staging copy: that is what a user can go and fix.
        raise CogError(f"item {plan.item_id} from {redact_url(ref.url)}: {error}") from error


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:150]
