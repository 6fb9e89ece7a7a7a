"""The items of a many-band source (a cube's species, one band each): the source opened once,
the items produced in this process or, when there are enough, in worker processes. The same
items either way."""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pystac

from bq_pipelines.lib import cog, preview, sources
from bq_pipelines.lib.errors import CogError, SourceRefused
from bq_pipelines.lib.pipeline.plan import ItemPlan
from bq_pipelines.lib.pipeline.services import Services
from bq_pipelines.lib.pipeline.steps import (
    Produced,
    Step,
    StepCallback,
    ThumbnailFile,
    checked_item,
    log_step,
    source_refusal,
    store_produced,
    thumbnail_at,
)
from bq_pipelines.lib.redaction import redact_url
from bq_pipelines.lib.storage import object_key

logger = logging.getLogger(__name__)


def one_band_of_one_source(plans: Sequence[ItemPlan]) -> bool:
    """Items that each read one band of the same single source (e.g. species of a cube)."""
    first = plans[0].sources
    return len(plans) > 1 and all(
        len(p.sources) == 1
        and (p.sources[0].url, p.sources[0].subdataset) == (first[0].url, first[0].subdataset)
        and p.sources[0].bands is not None
        and len(p.sources[0].bands) == 1
        for p in plans
    )


def produce_band_items(
    plans: Sequence[ItemPlan],
    fetched: Mapping[str, sources.FetchedFile],
    staging: Path,
    services: Services,
    on_step: StepCallback,
) -> list[Produced]:
    """Convert, check and upload the items of `plans`, each one band of the same source
    (`one_band_of_one_source`), in this process or in `services.item_workers` processes."""
    ref = plans[0].sources[0]
    job = _band_job(plans[0], fetched[ref.url].path, staging, services)
    targets = [_Target.of(plan, services) for plan in plans]
    workers = _workers_for(len(plans), services.item_workers)
    produced: list[Produced] = []

    def store(plan: ItemPlan, described: _Described) -> None:
        produced.append(store_produced(plan, *described, services, on_step))

    pairs = list(zip(plans, targets, strict=True))
    try:
        if workers <= 1:
            _describe_here(job, ref.url, pairs, store, on_step)
        else:
            _describe_in_workers(job, ref.url, pairs, workers, store)
    except SourceRefused as error:
        raise source_refusal(error, [ref], fetched, services) from error
    return produced


def _band_job(plan: ItemPlan, path: Path, staging: Path, services: Services) -> _BandJob:
    return _BandJob(
        source=cog.RasterInput(path=path, subdataset=plan.sources[0].subdataset),
        settings=plan.cog,
        staging=staging,
        max_pixels=services.max_pixels,
        stac_schemas_dir=services.stac_schemas_dir,
        # Only files read where they are: a download lands in this run's staging, anew.
        facts_cache=None if path.is_relative_to(staging) else services.band_facts_cache,
    )


def _workers_for(items: int, configured: int) -> int:
    workers = min(item_workers(configured), items // MIN_ITEMS_PER_WORKER)
    if workers > 1 and multiprocessing.current_process().daemon:
        # A daemonic process (a Celery prefork worker, a pool's worker) may not start any.
        logger.info("producing %d items in this process: it may not start others", items)
        return 1
    return workers


def _describe_here(
    job: _BandJob,
    url: str,
    pairs: Sequence[tuple[ItemPlan, _Target]],
    store: _Store,
    on_step: StepCallback,
) -> None:
    with contextlib.ExitStack() as stack:
        try:
            convert = stack.enter_context(_band_converter(job))
        except CogError as error:
            raise CogError(f"{redact_url(url)}: {error}") from error
        for plan, target in pairs:
            store(plan, _band_item(convert, job, plan, target, on_step))


def _describe_in_workers(
    job: _BandJob, url: str, pairs: list[tuple[ItemPlan, _Target]], workers: int, store: _Store
) -> None:
    # Read here, once, for every worker: a source that cannot be read fails once, naming
    # its URL, and the workers skip the slow part of opening it (~30 s for 45,810 bands).
    try:
        facts = cog.band_facts(job.source, job.settings, job.max_pixels, job.facts_cache)
    except CogError as error:
        raise CogError(f"{redact_url(url)}: {error}") from error
    chunks = _chunks(pairs, workers)
    # spawn, not fork: the parent may hold threads (Dagster's) and GDAL state.
    context = multiprocessing.get_context("spawn")
    logger.debug("producing %d items in %d processes", len(pairs), workers)
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(job, facts)
    ) as pool:
        # In order, as each chunk completes: uploads overlap with the conversions.
        results = pool.map(_band_items, chunks)
        for chunk, described in zip(chunks, results, strict=True):
            for (plan, _), one in zip(chunk, described, strict=True):
                store(plan, one)


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
# Stores a described item (uploads its objects), in the order of the plans.
_Store = Callable[[ItemPlan, _Described], None]

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
    on_step: StepCallback = log_step,
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
        thumbnail = thumbnail_at(
            plan, info, job.staging, target.thumbnail_key, target.thumbnail_href
        )
    item = checked_item(plan, info, target.href, job.stac_schemas_dir, thumbnail, values)
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
