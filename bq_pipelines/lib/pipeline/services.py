"""What the pipeline works with: the object store, the catalog, staging, retries and limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bq_pipelines.lib import sources
from bq_pipelines.lib.catalog import Publisher
from bq_pipelines.lib.links import Links
from bq_pipelines.lib.retry import RetryPolicy
from bq_pipelines.lib.storage import ObjectStore


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
