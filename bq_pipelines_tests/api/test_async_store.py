"""The API's side of the request store in its event loop (ingestion/async_store.py), on SQLite
and PostgreSQL: the row RequestStore.add would write, committed on return, and the
Idempotency-Key's rule (one body per key, one row however many repeat it at once)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bq_pipelines.ingestion.async_store import AsyncRequestStore
from bq_pipelines.ingestion.store import IdempotencyKeyReused, RequestStore

BODY = {"collection_id": "c", "name": "i", "nested": {"values": [1, 2.5, None, "é"]}}


def stored_as(store: RequestStore, request_id: str) -> dict[str, Any]:
    found = store.get(request_id)
    assert found is not None
    return {
        "collection_id": found.collection_id,
        "item_id": found.item_id,
        "request": found.request,
        "state": found.state,
        "operation": found.operation,
        "status": found.status,
        "description": found.description,
        "attempt": found.attempt,
    }


def test_an_async_add_stores_the_row_a_sync_add_would(database_url: str):
    async def add(store: AsyncRequestStore) -> tuple[str, bool]:
        try:
            return await store.add(BODY, collection_id="c", item_id="i")
        finally:
            await store.close()

    with RequestStore(database_url) as store:
        request_id, new = asyncio.run(add(AsyncRequestStore(store, database_url)))
        sync_id, _ = store.add(BODY, collection_id="c", item_id="i")

        assert new and request_id != sync_id
        assert stored_as(store, request_id) == stored_as(store, sync_id)
        assert [r.id for r in store.pending(10)] == [request_id, sync_id]


def test_an_idempotency_key_names_one_request_however_many_send_it_at_once(database_url: str):
    async def repeat(store: AsyncRequestStore) -> list[tuple[str, bool]]:
        try:
            answers = await asyncio.gather(
                *(
                    store.add(BODY, collection_id="c", item_id="i", idempotency_key="k")
                    for _ in range(10)
                )
            )
            assert await store.repeated("k", BODY) == answers[0][0]
            assert await store.repeated("other", BODY) is None
            with pytest.raises(IdempotencyKeyReused, match=answers[0][0]):
                await store.repeated("k", {**BODY, "name": "j"})
            with pytest.raises(IdempotencyKeyReused):
                await store.add(
                    {**BODY, "name": "j"}, collection_id="c", item_id="j", idempotency_key="k"
                )
            return answers
        finally:
            await store.close()

    with RequestStore(database_url) as store:
        answers = asyncio.run(repeat(AsyncRequestStore(store, database_url)))

        assert len({request_id for request_id, _ in answers}) == 1
        assert sorted(new for _, new in answers) == [False] * 9 + [True]
        assert store.count() == 1
