"""Dagster resources: thin ConfigurableResource wrappers around the core library.

Each resource is an interface with real implementations picked by configuration
(`resources_for(settings)`), never by branching inside assets. Secrets come from EnvVar.
"""

import os
from abc import abstractmethod
from dataclasses import replace
from pathlib import Path
from typing import Any

import dagster as dg
import httpx

from bq_pipelines.backup.backend import CatalogBackend
from bq_pipelines.backup.pgstac import PgstacCatalog
from bq_pipelines.backup.postgres import PgTools
from bq_pipelines.backup.retention import RetentionPolicy
from bq_pipelines.backup.static import StaticCatalog
from bq_pipelines.datasets.plans import SourceLocations
from bq_pipelines.lib.catalog import (
    API_RETRY,
    PgstacPublisher,
    Publisher,
    StacApiPublisher,
    StaticCatalogPublisher,
)
from bq_pipelines.lib.catalog.pgstac import LOAD_RETRY
from bq_pipelines.lib.errors import ConfigError
from bq_pipelines.lib.links import Links
from bq_pipelines.lib.locks import DEFAULT_WAIT_SECONDS, FileLocks, Locks, PostgresLocks
from bq_pipelines.lib.pipeline import Services
from bq_pipelines.lib.retry import RetryPolicy
from bq_pipelines.lib.sources import FetchLimits
from bq_pipelines.lib.storage import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_READ_TIMEOUT_S,
    STORE_RETRY,
    LocalObjectStore,
    ObjectStore,
    S3Clients,
    S3ObjectStore,
)
from bq_pipelines.settings import DEFAULT_MAX_DOWNLOAD_BYTES, DEFAULT_MAX_PIXELS, Settings


class ObjectStoreResource(dg.ConfigurableResource):
    """Where COGs are stored; `prefix` is the legacy `io/` key prefix."""

    prefix: str = "io"

    @abstractmethod
    def store(self) -> ObjectStore: ...


class LocalObjectStoreResource(ObjectStoreResource):
    root: str
    public_base_url: str | None = None

    def store(self) -> ObjectStore:
        return LocalObjectStore(Path(self.root).absolute(), base_url=self.public_base_url)


class S3ObjectStoreResource(ObjectStoreResource):
    """An S3 (or S3-compatible) bucket; credentials via EnvVar.

    The client is the project's one configuration (`lib.storage.S3Clients`: botocore's
    standard retries, short timeouts), the one the tests use too; each operation is retried
    within `retry_budget_seconds`, botocore's attempts and timeouts fitted inside it.
    """

    bucket: str
    endpoint_url: str | None = None
    region_name: str | None = None
    aws_access_key_id: str | None = None  # from EnvVar("AWS_ACCESS_KEY_ID") when set
    aws_secret_access_key: str | None = None  # from EnvVar("AWS_SECRET_ACCESS_KEY") when set
    public_base_url: str | None = None
    public_read: bool = False
    connect_timeout_seconds: float = DEFAULT_CONNECT_TIMEOUT_S
    read_timeout_seconds: float = DEFAULT_READ_TIMEOUT_S
    retry_budget_seconds: float = STORE_RETRY.budget_seconds or 150.0

    def store(self) -> ObjectStore:
        client = S3Clients(
            self.endpoint_url,
            self.region_name,
            self.aws_access_key_id,
            self.aws_secret_access_key,
            connect_timeout=self.connect_timeout_seconds,
            read_timeout=self.read_timeout_seconds,
        )
        return S3ObjectStore(
            client,
            self.bucket,
            base_url=self.public_base_url,
            public_read=self.public_read,
            retry=replace(STORE_RETRY, budget_seconds=self.retry_budget_seconds),
        )


class CatalogResource(dg.ConfigurableResource):
    """Where STAC collections and items are published, and where people look at them: the tile
    server of its COGs (BQ_TILER_URL) and, on the embedded defaults, the browse server of the
    static catalog and the local objects (BQ_BROWSE_URL)."""

    tiler_url: str | None = None
    browse_url: str | None = None

    @abstractmethod
    def publisher(self) -> Publisher: ...


class StaticCatalogResource(CatalogResource):
    root: str

    def publisher(self) -> Publisher:
        return StaticCatalogPublisher(Path(self.root).absolute())


class StacApiCatalogResource(CatalogResource):
    """A STAC API with the Transactions extension (stac-fastapi-pgstac).

    With `pgstac_dsn` (the database the API serves), items are bulk-loaded into it with
    pypgstac's Loader and collection extents are computed in SQL (`PgstacPublisher`); without,
    everything goes through the API (`/bulk_items`)."""

    url: str
    token: str | None = None  # bearer token, from EnvVar("BQ_STAC_API_TOKEN") when set
    pgstac_dsn: str | None = None  # from EnvVar("BQ_PGSTAC_DSN"): it may hold a password
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 30.0
    retry_budget_seconds: float = API_RETRY.budget_seconds or 120.0
    load_retry_budget_seconds: float = LOAD_RETRY.budget_seconds or 120.0

    def publisher(self) -> Publisher:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        retry = replace(API_RETRY, budget_seconds=self.retry_budget_seconds)
        timeout = httpx.Timeout(self.read_timeout_seconds, connect=self.connect_timeout_seconds)
        if self.pgstac_dsn:
            return PgstacPublisher(
                self.url,
                self.pgstac_dsn,
                headers=headers,
                retry=retry,
                timeout=timeout,
                load_retry=replace(LOAD_RETRY, budget_seconds=self.load_retry_budget_seconds),
            )
        return StacApiPublisher(self.url, headers=headers, retry=retry, timeout=timeout)


class SourcesResource(dg.ConfigurableResource):
    """Where sources are read from and staged, and how patiently they are retried."""

    work_dir: str
    local_data_root: str
    base_urls: dict[str, str] = {}
    s3_endpoint_url: str | None = None
    retry_attempts: int = 4
    retry_backoff_seconds: float = 2.0
    stac_schemas_dir: str | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    item_workers: int = 0  # 0: one per CPU this process may use

    def locations(self) -> SourceLocations:
        return SourceLocations(base_urls=self.base_urls, local_root=Path(self.local_data_root))

    def fetch_limits(self) -> FetchLimits:
        """The datasets' limits: the same mechanism as the ingestion API's, without its guard
        (declared sources are trusted to go where they say), local files confined to the data
        root (checked again here, at fetch time, after the check at load)."""
        return FetchLimits(
            max_bytes=self.max_download_bytes,
            max_pixels=self.max_pixels,
            local_root=Path(self.local_data_root),
            settings_prefix="BQ_",
        )

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.retry_attempts, backoff_seconds=self.retry_backoff_seconds)


class LocksResource(dg.ConfigurableResource):
    """Per-partition locks: two runs of one partition wait for each other instead of
    interleaving their writes (Dagster's pools limit ops, not partitions)."""

    wait_seconds: float = DEFAULT_WAIT_SECONDS

    @abstractmethod
    def locks(self) -> Locks: ...


class FileLocksResource(LocksResource):
    """`flock` files: the embedded defaults, where every writer is on this machine."""

    root: str

    def locks(self) -> Locks:
        return FileLocks(Path(self.root), self.wait_seconds)


class PostgresLocksResource(LocksResource):
    """Advisory locks in the pgstac database, shared by workers on every machine."""

    dsn: str  # from EnvVar("BQ_PGSTAC_DSN"): it may hold a password

    def locks(self) -> Locks:
        return PostgresLocks(self.dsn, self.wait_seconds)


class CatalogBackupResource(dg.ConfigurableResource):
    """What the daily backup dumps, where it stages downloads, and how long backups are kept."""

    work_dir: str
    retention_days: int = 30
    keep_last: int = 7
    retention_dry_run: bool = False

    @abstractmethod
    def backend(self) -> CatalogBackend: ...

    def retention(self) -> RetentionPolicy:
        return RetentionPolicy(self.retention_days, self.keep_last, self.retention_dry_run)


class PgstacBackupResource(CatalogBackupResource):
    """The pgstac database the STAC API serves, dumped with the PostgreSQL client tools."""

    dsn: str | None = None  # from EnvVar("BQ_PGSTAC_DSN"): it may hold a password
    pg_bin_dir: str | None = None

    def backend(self) -> CatalogBackend:
        if not self.dsn:
            raise ConfigError(
                "BQ_PGSTAC_DSN: required to back up the catalog of a STAC API "
                "(BQ_CATALOG=stac-api): the connection string of the database it serves"
            )
        return PgstacCatalog(self.dsn, PgTools(Path(self.pg_bin_dir) if self.pg_bin_dir else None))


class StaticCatalogBackupResource(CatalogBackupResource):
    """The static catalog folder (the embedded default), archived as tar.gz."""

    root: str

    def backend(self) -> CatalogBackend:
        return StaticCatalog(Path(self.root), Path(self.work_dir))


LOCKS_FOLDER = ".locks"


def services_for(
    object_store: ObjectStoreResource, catalog: CatalogResource, sources: SourcesResource
) -> Services:
    """The core library's view of the configured resources."""
    return Services(
        store=object_store.store(),
        publisher=catalog.publisher(),
        work_dir=Path(sources.work_dir).absolute(),
        object_prefix=object_store.prefix,
        retry=sources.retry_policy(),
        s3_endpoint_url=sources.s3_endpoint_url,
        stac_schemas_dir=Path(sources.stac_schemas_dir) if sources.stac_schemas_dir else None,
        fetch_limits=sources.fetch_limits(),
        item_workers=sources.item_workers,
        # Kept between runs: a cube's band facts are read once per file, not per partition.
        band_facts_cache=Path(sources.work_dir).absolute() / "band-facts",
        links=links_for(object_store, catalog),
    )


def links_for(object_store: ObjectStoreResource, catalog: CatalogResource) -> Links:
    """The links recorded for people: the tile server, and the folders the browse server serves
    (the static catalog and the local object store, when those are the configured ones)."""
    roots: dict[str, Path] = {}
    if isinstance(catalog, StaticCatalogResource):
        roots["catalog"] = Path(catalog.root).absolute()
    if isinstance(object_store, LocalObjectStoreResource):
        roots["objects"] = Path(object_store.root).absolute()
    return Links(tiler_url=catalog.tiler_url, browse_url=catalog.browse_url, browse_roots=roots)


def _env_or_none(name: str) -> dg.EnvVar | None:
    # Only reference a secret that is set: an absent one means "use the default chain"
    # (instance role, ~/.aws), which boto3 handles itself.
    return dg.EnvVar(name) if os.environ.get(name) else None


def quick_catalog(settings: Settings, seconds: float) -> CatalogResource:
    """The catalog of `settings`, its reads bounded by `seconds` (a few tries, no outage
    budget): for what is printed after the work is done."""
    catalog = resources_for(settings)["catalog"]
    if isinstance(catalog, StacApiCatalogResource):
        return StacApiCatalogResource(
            url=catalog.url,
            token=catalog.token,
            connect_timeout_seconds=seconds,
            read_timeout_seconds=seconds,
            retry_budget_seconds=seconds,
        )
    assert isinstance(catalog, CatalogResource)
    return catalog


def resources_for(settings: Settings) -> dict[str, dg.ConfigurableResource]:
    """The implementations chosen by the settings (see settings.py for every variable)."""
    return {
        "object_store": object_store_for(settings),
        "catalog": catalog_for(settings),
        "sources": sources_for(settings),
        "backup": backup_for(settings),
        "locks": locks_for(settings),
    }


def object_store_for(settings: Settings) -> ObjectStoreResource:
    if settings.object_store == "s3":
        return S3ObjectStoreResource(
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=_env_or_none("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=_env_or_none("AWS_SECRET_ACCESS_KEY"),
            bucket=settings.s3_bucket or "",
            prefix=settings.object_prefix,
            public_base_url=settings.public_base_url,
            public_read=settings.s3_public_read,
        )
    return LocalObjectStoreResource(
        root=str(settings.objects_dir.absolute()),
        prefix=settings.object_prefix,
        public_base_url=settings.public_base_url,
    )


def catalog_for(settings: Settings) -> CatalogResource:
    if settings.catalog == "stac-api":
        return StacApiCatalogResource(
            url=settings.stac_api_url or "",
            token=_env_or_none("BQ_STAC_API_TOKEN"),
            pgstac_dsn=_env_or_none("BQ_PGSTAC_DSN") if settings.pgstac_dsn else None,
            tiler_url=settings.tiler_url,
            browse_url=settings.browse_url,
        )
    return StaticCatalogResource(
        root=str(settings.catalog_dir.absolute()),
        tiler_url=settings.tiler_url,
        browse_url=settings.browse_url,
    )


def sources_for(settings: Settings) -> SourcesResource:
    return SourcesResource(
        work_dir=str(settings.work_dir.absolute()),
        local_data_root=str(settings.local_data_root.absolute()),
        base_urls=dict(settings.source_base_urls),
        s3_endpoint_url=settings.s3_endpoint_url,
        stac_schemas_dir=str(settings.stac_schemas_dir) if settings.stac_schemas_dir else None,
        max_pixels=settings.max_pixels,
        max_download_bytes=settings.max_download_bytes,
        item_workers=settings.item_workers,
    )


def backup_for(settings: Settings) -> CatalogBackupResource:
    policy: dict[str, Any] = {
        "work_dir": str(settings.work_dir.absolute()),
        "retention_days": settings.backup_retention_days,
        "keep_last": settings.backup_keep_last,
        "retention_dry_run": settings.backup_retention_dry_run,
    }
    if settings.pgstac_dsn or settings.catalog == "stac-api":
        return PgstacBackupResource(
            dsn=_env_or_none("BQ_PGSTAC_DSN"),
            pg_bin_dir=str(settings.pg_bin_dir) if settings.pg_bin_dir else None,
            **policy,
        )
    return StaticCatalogBackupResource(root=str(settings.catalog_dir.absolute()), **policy)


def locks_for(settings: Settings) -> LocksResource:
    pgstac_dsn = _env_or_none("BQ_PGSTAC_DSN")
    if settings.pgstac_dsn and pgstac_dsn is not None:
        # The database every writer of the catalog shares, on whatever machine it runs.
        return PostgresLocksResource(dsn=pgstac_dsn)
    return FileLocksResource(root=str((settings.work_dir / LOCKS_FOLDER).absolute()))
