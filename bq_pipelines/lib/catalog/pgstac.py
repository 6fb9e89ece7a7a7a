"""The pgstac database behind the STAC API, written directly: items are bulk-upserted with
pypgstac's `Loader` (dehydrated client-side, COPY into a temporary table, one upsert per
partition), extents and summaries computed in SQL. Reads, collections and single deletes still go
through the API (`StacApiPublisher`), which serves what this writes.

One writer per collection at a time: every bulk write of a collection holds the advisory lock
`catalog-collection:<id>` in that database, so writers in other processes or machines (a second
backfill, the CLI, a script) wait instead of contending for the partition's table lock. A
deadlock or serialization failure that still happens (two collections creating their partitions
at once) is retried, the whole chunk again (an upsert is idempotent), within a time budget.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import psycopg
import psycopg_pool
import pystac
from pypgstac.db import PgstacDB
from pypgstac.load import Loader, Methods
from tenacity import stop_after_attempt, wait_random_exponential

from bq_pipelines.lib import stac
from bq_pipelines.lib.catalog.base import CollectionContent, PublishOutcome, to_json_dict
from bq_pipelines.lib.catalog.stac_api import API_RETRY, API_TIMEOUT, StacApiPublisher
from bq_pipelines.lib.errors import CatalogError
from bq_pipelines.lib.locks import DEFAULT_WAIT_SECONDS, LockError, PostgresLocks
from bq_pipelines.lib.retry import Deadline, RetryPolicy, with_retries

logger = logging.getLogger(__name__)

# Rows per Loader call: big enough that the per-call round trips vanish, small enough that a
# retried chunk costs little (about 1.3 s of work at 7,750 items/s).
LOAD_CHUNK = 10_000
# Deadlocks and serialization failures are retried until this many seconds have passed.
LOAD_RETRY = RetryPolicy(
    attempts=100, backoff_seconds=0.2, max_backoff_seconds=5.0, budget_seconds=120.0
)
_TRANSIENT = (
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.ObjectInUse,
    psycopg.OperationalError,  # the connection dropped: PgstacDB takes another one
)
PG_CONNECT_TIMEOUT_S = 10


def collection_lock_name(collection_id: str) -> str:
    """The advisory lock every bulk writer of a collection holds (see the module docstring)."""
    return f"catalog-collection:{collection_id}"


class _Loader(Loader):
    # pypgstac retries a partition's load 10 times with random waits of up to 120 s each
    # (tenacity): a deadlock could then stall a partition for many minutes. A few quick
    # attempts here; the caller's time budget (LOAD_RETRY) retries the whole chunk after that.
    load_partition = Loader.load_partition.retry_with(
        stop=stop_after_attempt(3), wait=wait_random_exponential(multiplier=0.1, max=2)
    )


def _is_transient(error: BaseException) -> bool:
    return isinstance(error, _TRANSIENT)


def _utc(value: datetime | None) -> datetime | None:
    # psycopg returns timestamptz in the session's time zone; STAC writes UTC ("Z").
    return value.astimezone(UTC) if value is not None else None


class PgstacPublisher(StacApiPublisher):
    """A STAC API (reads, collections) whose pgstac database (`dsn`) takes the item writes.

    `upsert_items` loads in chunks of `chunk_size` under the collection's advisory lock (waiting
    up to `lock_wait_seconds` for another writer); `collection_content` aggregates in SQL. The
    items read back through the API are the same as those `/bulk_items` would have stored.
    """

    def __init__(
        self,
        base_url: str,
        dsn: str,
        *,
        headers: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | httpx.Timeout = API_TIMEOUT,
        page_size: int = 500,
        chunk_size: int = LOAD_CHUNK,
        load_retry: RetryPolicy = LOAD_RETRY,
        lock_wait_seconds: float = DEFAULT_WAIT_SECONDS,
    ) -> None:
        super().__init__(
            base_url,
            headers=headers,
            retry=retry or API_RETRY,
            timeout=timeout,
            page_size=page_size,
        )
        self._dsn = dsn  # may hold a password: never in messages or logs
        self.chunk_size = chunk_size
        self.load_retry = load_retry
        self._locks = PostgresLocks(dsn, lock_wait_seconds)
        self._db: PgstacDB | None = None
        self._pool: psycopg_pool.ConnectionPool | None = None

    # connections -------------------------------------------------------------------

    def _pgstac_db(self) -> PgstacDB:
        if self._db is None:
            # Our own one-connection pool: PgstacDB makes one otherwise and `disconnect` drops
            # it without closing it (its threads and connection would outlive the publisher).
            self._pool = psycopg_pool.ConnectionPool(
                self._dsn,
                min_size=1,
                max_size=1,
                kwargs={"connect_timeout": PG_CONNECT_TIMEOUT_S},
                open=True,
            )
            self._db = PgstacDB(dsn=self._dsn, pool=self._pool)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.disconnect()
            self._db = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        super().close()

    @contextlib.contextmanager
    def _sql(self) -> Iterator[psycopg.Connection]:
        try:
            with psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=PG_CONNECT_TIMEOUT_S
            ) as conn:
                yield conn
        except psycopg.OperationalError as error:
            # psycopg's message names host and database, never the password.
            raise CatalogError(f"pgstac database unreachable: {error}") from error

    # items -------------------------------------------------------------------------

    def upsert_items(self, items: Sequence[pystac.Item]) -> list[PublishOutcome]:
        """Upsert items of one collection with pypgstac's Loader; outcomes in order:
        `created` (new id), `updated` (stored content differed), `unchanged` (not written)."""
        if not items:
            return []
        collection_id = items[0].collection_id or ""
        documents = []
        for item in items:
            if item.collection_id != collection_id or not collection_id:
                raise CatalogError(
                    f"item {item.id!r} belongs to collection {item.collection_id!r}, "
                    f"not {collection_id!r}: one collection per bulk upsert"
                )
            documents.append(to_json_dict(item))
        return self.upsert_documents(collection_id, documents)

    def upsert_documents(
        self, collection_id: str, documents: Sequence[dict[str, Any]]
    ) -> list[PublishOutcome]:
        """`upsert_items` for item dicts (as `to_json_dict` makes them)."""

        def waiting(name: str) -> None:
            logger.info("collection %s: waiting for another writer of it", collection_id)

        outcomes: list[PublishOutcome] = []
        try:
            with self._locks.hold(collection_lock_name(collection_id), waiting):
                for start in range(0, len(documents), self.chunk_size):
                    chunk = documents[start : start + self.chunk_size]
                    outcomes.extend(self._upsert_chunk(collection_id, chunk))
        except LockError as error:
            raise CatalogError(f"collection {collection_id!r}: {error}") from error
        return outcomes

    def _upsert_chunk(
        self, collection_id: str, chunk: Sequence[dict[str, Any]]
    ) -> list[PublishOutcome]:
        first, last = chunk[0]["id"], chunk[-1]["id"]
        what = f"bulk load of {len(chunk)} items ({first!r}..{last!r}) into {collection_id!r}"

        first_seen: list[list[PublishOutcome]] = []

        def attempt(_deadline: Deadline) -> list[PublishOutcome]:
            started = time.perf_counter()
            loader = _Loader(self._pgstac_db())
            # The collection's base item is cached per Loader: a fresh one per chunk never
            # dehydrates against a collection edited since.
            outcomes = self._outcomes(loader, collection_id, chunk)
            if not first_seen:
                # What the catalog held before this chunk: a retried attempt may find some of
                # its own writes committed, and would call them unchanged.
                first_seen.append(outcomes)
            to_load = [doc for doc, o in zip(chunk, outcomes, strict=True) if o != "unchanged"]
            if to_load:
                loader.load_items(iter(to_load), insert_mode=Methods.upsert, chunksize=len(chunk))
            logger.info(
                "pgstac: %s: %d written, %d unchanged in %.2f s",
                what,
                len(to_load),
                len(chunk) - len(to_load),
                time.perf_counter() - started,
            )
            return first_seen[0]

        try:
            return with_retries(
                attempt, policy=self.load_retry, is_transient=_is_transient, describe=what
            )
        except psycopg.Error as error:
            raise CatalogError(f"pgstac refused the {what}: {error}") from error
        except Exception as error:  # pypgstac raises bare Exceptions for bad items
            if isinstance(error, CatalogError):
                raise
            raise CatalogError(f"pgstac: {what} failed: {error}") from error

    def _outcomes(
        self, loader: Loader, collection_id: str, chunk: Sequence[dict[str, Any]]
    ) -> list[PublishOutcome]:
        """Which items are new, changed or already stored as they are (compared in their
        dehydrated form, as the database holds them)."""
        ids = [doc["id"] for doc in chunk]
        rows = loader.db.query(
            "SELECT id, content FROM pgstac.items WHERE collection = %s AND id = ANY(%s)",
            [collection_id, ids],
        )
        stored = {row[0]: row[1] for row in rows if row}
        if not stored:
            return ["created"] * len(chunk)
        outcomes: list[PublishOutcome] = []
        for doc in chunk:
            content = stored.get(doc["id"])
            if content is None:
                outcomes.append("created")
                continue
            # format_item mutates nothing of `doc` it keeps; it dehydrates a shallow copy.
            ours = orjson.loads(loader.format_item(dict(doc))["content"])
            outcomes.append("unchanged" if ours == content else "updated")
        return outcomes

    # extent and summaries -------------------------------------------------------------

    def collection_content(
        self, collection_id: str, summarize: Sequence[str] = ()
    ) -> CollectionContent:
        """Count, extent and summaries of the collection's items, aggregated by the database
        (a scan of one collection's partition, not every item through the API). The extent is
        the union of the items' `bbox` (which covers a reprojected footprint's curved edges,
        unlike its polygon) and of their datetimes or ranges, as `stac.union_extent` computes
        it."""
        with self._sql() as conn:
            row = conn.execute(
                """
                WITH boxes AS (
                    SELECT datetime, end_datetime, content->'bbox' AS bbox,
                           jsonb_array_length(content->'bbox') / 2 AS half
                    FROM pgstac.items WHERE collection = %s
                )
                SELECT count(*), min(datetime), max(end_datetime),
                       min((bbox->>0)::float8), min((bbox->>1)::float8),
                       max((bbox->>half)::float8), max((bbox->>(half + 1))::float8)
                FROM boxes
                """,
                (collection_id,),
            ).fetchone()
            assert row is not None
            count, start, end, *bbox = row
            values: dict[str, list[Any]] = {}
            for name in summarize:
                # Properties are never dehydrated (a base item holds no properties).
                values[name] = [
                    value
                    for (value,) in conn.execute(
                        """
                        SELECT DISTINCT content->'properties'->%s FROM pgstac.items
                        WHERE collection = %s AND content->'properties' ? %s
                        """,
                        (name, collection_id, name),
                    )
                ]
        if count == 0:
            return CollectionContent.empty()
        extent = pystac.Extent(
            pystac.SpatialExtent([list(bbox) if None not in bbox else stac.GLOBAL_BBOX]),
            pystac.TemporalExtent([[_utc(start), _utc(end)]]),
        )
        return CollectionContent(
            items=count, extent=extent, summaries=stac.summarize_values(values)
        )
