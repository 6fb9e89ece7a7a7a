"""Bulk loading into pgstac with pypgstac's Loader (`PgstacPublisher`), against the real
database and stac-fastapi-pgstac of `scripts/services.py`: the same items as `/bulk_items`
stores, extents in SQL, and writers of one collection at the same time."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from typing import Any

import psycopg
import pystac
import pytest

from bq_pipelines.lib.catalog import (
    BULK_THRESHOLD,
    PgstacPublisher,
    Publisher,
    StacApiPublisher,
    same_content,
    to_json_dict,
)
from bq_pipelines.lib.catalog.pgstac import collection_lock_name
from bq_pipelines.lib.errors import CatalogError
from bq_pipelines.lib.locks import advisory_key
from bq_pipelines.lib.stac import build_collection
from bq_pipelines_testkit.values import published_item
from bq_pipelines_tests.fixtures.stac_items import FAST_RETRY, clone

ITEM_ASSETS = {"data": {"type": pystac.MediaType.COG, "roles": ["data"]}}


@pytest.fixture(scope="module")
def dsn(services_env: dict[str, str]) -> str:
    return services_env["BQ_PGSTAC_DSN"]


@pytest.fixture
def publishers(stac_api_url: str, dsn: str) -> Iterator[tuple[StacApiPublisher, PgstacPublisher]]:
    with (
        StacApiPublisher(stac_api_url, retry=FAST_RETRY) as api,
        PgstacPublisher(stac_api_url, dsn, retry=FAST_RETRY, chunk_size=7) as loader,
    ):
        yield api, loader


@pytest.fixture
def collection_ids(
    publishers: tuple[StacApiPublisher, PgstacPublisher], unique_id: str
) -> Iterator[list[str]]:
    ids = [f"test-pgstac-{unique_id}-{n}" for n in range(4)]
    yield ids
    for collection_id in ids:
        publishers[0].delete_collection(collection_id)


def collection(collection_id: str) -> pystac.Collection:
    # item_assets make pgstac dehydrate the assets against the collection's base item: the
    # Loader does it in Python, the API in SQL; both must read back the same.
    return build_collection(
        collection_id=collection_id,
        title=collection_id,
        description="Loader test",
        license_="CC-BY-4.0",
        items=[],
        item_assets=ITEM_ASSETS,
        summaries=None,
    )


def items_of(template: dict[str, Any], collection_id: str, count: int) -> list[pystac.Item]:
    return [
        clone(
            template,
            collection_id,
            f"scenario1_2015_{n:04d}",
            species=n,
            scenario=1 + n % 3,
            datetime=f"20{10 + n % 7}-01-01T00:00:00Z",
        )
        for n in range(count)
    ]


def comparable(item: dict[str, Any]) -> dict[str, Any]:
    """An item as read back, without what names its collection (links, `collection`)."""
    return {k: v for k, v in item.items() if k not in ("links", "collection")}


def test_loader_and_bulk_items_store_the_same_items(
    publishers: tuple[StacApiPublisher, PgstacPublisher],
    collection_ids: list[str],
    item_template: dict[str, Any],
) -> None:
    api, loader = publishers
    via_api, via_loader = collection_ids[:2]
    count = BULK_THRESHOLD + 10  # the API publisher's bulk path
    for collection_id in (via_api, via_loader):
        api.ensure_collection(collection(collection_id))
    api.upsert_items(items_of(item_template, via_api, count))
    outcomes = loader.upsert_items(items_of(item_template, via_loader, count))
    assert outcomes == ["created"] * count

    read_api = {i["id"]: comparable(i) for i in api.iter_items(via_api)}
    read_loader = {i["id"]: comparable(i) for i in api.iter_items(via_loader)}
    assert len(read_api) == count
    assert read_loader == read_api
    # What was sent is what is read back (beyond links, which the API writes, and null fields,
    # which pgstac drops whichever way an item comes in).
    sent = to_json_dict(items_of(item_template, via_loader, 1)[0])
    assert same_content(sent, api.get_item(via_loader, sent["id"]) or {})

    # Idempotent, and the outcomes say what changed.
    again = items_of(item_template, via_loader, count)
    assert loader.upsert_items(again) == ["unchanged"] * count
    again[3].properties["species"] = -1
    outcomes = loader.upsert_items(again)
    assert outcomes[3] == "updated"
    assert outcomes.count("unchanged") == count - 1
    assert published_item(api, via_loader, again[3].id)["properties"]["species"] == -1


def test_collection_content_in_sql_is_what_the_items_say(
    publishers: tuple[StacApiPublisher, PgstacPublisher],
    collection_ids: list[str],
    item_template: dict[str, Any],
) -> None:
    api, loader = publishers
    collection_id = collection_ids[0]
    assert loader.collection_content(collection_id).items == 0
    api.ensure_collection(collection(collection_id))
    loader.upsert_items(items_of(item_template, collection_id, 12))
    names = ["species", "scenario", "missing"]
    in_sql = loader.collection_content(collection_id, names)
    by_items = Publisher.collection_content(loader, collection_id, names)  # every item, via API
    assert in_sql.items == by_items.items == 12
    assert in_sql.extent.to_dict() == by_items.extent.to_dict()
    assert in_sql.summaries == by_items.summaries
    assert in_sql.summaries["scenario"] == {"minimum": 1, "maximum": 3}
    assert in_sql.extent.to_dict()["temporal"]["interval"] == [
        ["2010-01-01T00:00:00Z", "2016-01-01T00:00:00Z"]
    ]


def _write(
    stac_api_url: str,
    dsn: str,
    template: dict[str, Any],
    collection_id: str,
    count: int,
    first: int,
    done: Any,
) -> None:
    with PgstacPublisher(stac_api_url, dsn, chunk_size=150) as publisher:
        items = items_of(template, collection_id, first + count)[first:]
        done.put((collection_id, len(publisher.upsert_items(items))))


def test_concurrent_writers_lose_and_duplicate_nothing(
    publishers: tuple[StacApiPublisher, PgstacPublisher],
    collection_ids: list[str],
    item_template: dict[str, Any],
    stac_api_url: str,
    dsn: str,
) -> None:
    """Two writers of one collection (overlapping ids) beside writers of two other, new
    collections (whose partitions pgstac creates at the same moment), in separate processes."""
    api, _ = publishers
    shared, other_a, other_b = collection_ids[:3]
    for collection_id in (shared, other_a, other_b):
        api.ensure_collection(collection(collection_id))
    jobs = [(shared, 900, 0), (shared, 900, 450), (other_a, 700, 0), (other_b, 700, 0)]
    context = multiprocessing.get_context("spawn")
    done = context.Queue()
    processes = [
        context.Process(
            target=_write, args=(stac_api_url, dsn, item_template, cid, count, first, done)
        )
        for cid, count, first in jobs
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
        assert process.exitcode == 0, "a writer failed (its traceback is in the output above)"
    reported = sorted(done.get(timeout=5) for _ in jobs)
    assert reported == sorted((cid, count) for cid, count, _ in jobs)

    expected = {shared: 1350, other_a: 700, other_b: 700}
    with psycopg.connect(dsn) as conn:
        for collection_id, count in expected.items():
            counted = conn.execute(
                "SELECT count(*), count(DISTINCT id) FROM pgstac.items WHERE collection = %s",
                (collection_id,),
            ).fetchone()
            assert counted is not None
            total, distinct = counted
            assert (total, distinct) == (count, count), collection_id
    assert len({i["id"] for i in api.iter_items(shared)}) == 1350


def test_a_writer_waits_for_the_collection_lock(
    publishers: tuple[StacApiPublisher, PgstacPublisher],
    collection_ids: list[str],
    item_template: dict[str, Any],
    stac_api_url: str,
    dsn: str,
) -> None:
    """A writer outside this process holding the collection's advisory lock makes the load wait
    (and give up with a clear error past its wait), not interleave."""
    api, _ = publishers
    collection_id = collection_ids[0]
    api.ensure_collection(collection(collection_id))
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute(
            "SELECT pg_advisory_lock(%s)", (advisory_key(collection_lock_name(collection_id)),)
        )
        with (
            PgstacPublisher(stac_api_url, dsn, lock_wait_seconds=1.0) as impatient,
            pytest.raises(CatalogError, match="still held by another run"),
        ):
            impatient.upsert_items(items_of(item_template, collection_id, 2))
    assert list(api.iter_items(collection_id)) == []
