"""The API's side of the request store (`add`, `repeated`) for its event loop, so that no
POST waits for a thread: on psycopg's async connection pool when the store is PostgreSQL (one
autocommitted INSERT, compiled once from store.py's table), in a worker thread when it is
SQLite (whose writes queue on one lock anyway). The row and the Idempotency-Key rule are
store.py's: a request is committed before its id is answered, a key names one body.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import anyio.to_thread
import psycopg
import psycopg_pool
import sqlalchemy as sa
from psycopg.types.json import Json
from sqlalchemy.dialects.postgresql import psycopg as pg_dialect

from bq_pipelines.ingestion.database import POOL_SIZE
from bq_pipelines.ingestion.store import RequestStore, first_of_key, new_request, requests_table

# Connections kept open per API process; the pool grows to POOL_SIZE under load.
MIN_CONNECTIONS = 4


def _compiled(statement: sa.Insert | sa.Select[Any], keys: list[str] | None = None) -> str:
    """`statement` as psycopg's SQL with %(name)s placeholders."""
    dialect = pg_dialect.dialect()  # type: ignore[no-untyped-call]
    return statement.compile(dialect=dialect, column_keys=keys).string


_ROW_KEYS = list(new_request({}, "", "", None))
INSERT_SQL = _compiled(requests_table.insert().inline(), _ROW_KEYS)
SELECT_BY_KEY_SQL = _compiled(
    sa.select(requests_table.c.id, requests_table.c.request).where(
        requests_table.c.idempotency_key == sa.bindparam("key")
    )
)


class AsyncRequestStore:
    """`RequestStore.add` and `.repeated` as coroutines, over the same database."""

    def __init__(self, store: RequestStore, database_url: str) -> None:
        self.store = store
        self._pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        if not store.is_sqlite:
            self._pool = psycopg_pool.AsyncConnectionPool(
                database_url,
                min_size=MIN_CONNECTIONS,
                max_size=POOL_SIZE,
                kwargs={"autocommit": True},
                open=False,
            )
        self._opened = False

    async def _connections(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        assert self._pool is not None
        if not self._opened:  # the first request of this event loop opens the pool
            await self._pool.open()  # idempotent; connections are awaited by `connection()`
            self._opened = True
        return self._pool

    async def add(
        self,
        request: Mapping[str, Any],
        *,
        collection_id: str,
        item_id: str,
        idempotency_key: str | None = None,
    ) -> tuple[str, bool]:
        """`RequestStore.add`: committed on return; (id, whether it is new)."""
        if self._pool is None:
            add = partial(
                self.store.add,
                request,
                collection_id=collection_id,
                item_id=item_id,
                idempotency_key=idempotency_key,
            )
            return await anyio.to_thread.run_sync(add)
        values = new_request(request, collection_id, item_id, idempotency_key)
        values["request"] = Json(values["request"])
        try:
            async with (await self._connections()).connection() as connection:
                await connection.execute(INSERT_SQL, values)
        except psycopg.errors.UniqueViolation:
            first = await self.repeated(idempotency_key, request) if idempotency_key else None
            if first is None:
                raise
            return first, False
        return str(values["id"]), True

    async def repeated(self, key: str, request: Mapping[str, Any]) -> str | None:
        """`RequestStore.repeated`: the first request's id under `key`, None if there is none;
        IdempotencyKeyReused when its body differs."""
        if self._pool is None:
            return await anyio.to_thread.run_sync(self.store.repeated, key, request)
        async with (await self._connections()).connection() as connection:
            cursor = await connection.execute(SELECT_BY_KEY_SQL, {"key": key})
            found = [(str(id_), body) for id_, body in await cursor.fetchall()]
        return first_of_key(key, request, found)

    async def close(self) -> None:
        if self._pool is not None and self._opened:
            await self._pool.close()
