"""Publishing to a static catalog on disk and to the real stac-fastapi-pgstac service."""

from __future__ import annotations

import json
import multiprocessing
import socket
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pystac
import pytest
from pystac_client import Client

from bq_pipelines.lib.catalog import StacApiPublisher, StaticCatalogPublisher
from bq_pipelines.lib.errors import CatalogError
from bq_pipelines.lib.retry import RetryPolicy
from bq_pipelines.lib.stac import build_collection, validate
from bq_pipelines_testkit.rasters import RasterSpec
from bq_pipelines_testkit.values import published_collection, published_item
from bq_pipelines_tests.fixtures.stac_items import FAST_RETRY, SPECS, clone, item_for, make_cog


def collection_for(collection_id: str, items: list[pystac.Item], description: str = "Test"):
    return build_collection(
        collection_id=collection_id,
        title=f"Collection {collection_id}",
        description=description,
        license_="CC-BY-4.0",
        items=items,
    )


# ----------------------------------------------------------------------- static catalog


def test_static_catalog_round_trip(tmp_path: Path) -> None:
    cogs = [
        make_cog(tmp_path / "cogs", SPECS["int16-32198"], "a"),
        make_cog(tmp_path / "cogs", RasterSpec(origin=(-70.0, 47.0)), "b"),
    ]
    items = [item_for(cog, item_id=cog.path.stem) for cog in cogs]
    publisher = StaticCatalogPublisher(tmp_path / "catalog")

    assert publisher.ensure_collection(collection_for("chelsa-monthly", items)) == "created"
    assert [publisher.upsert_item(item) for item in items] == ["created", "created"]

    catalog = pystac.Catalog.from_file(str(tmp_path / "catalog" / "catalog.json"))
    collection = catalog.get_child("chelsa-monthly")
    assert isinstance(collection, pystac.Collection)
    loaded = sorted(collection.get_items(), key=lambda item: item.id)
    assert [item.id for item in loaded] == ["a", "b"]
    for item in loaded:
        root = item.get_root()
        assert root is not None and root.id == "bq-io"
        assert (
            item.assets[item.id].href
            == f"https://object-store.example/bq-io/io/chelsa/{item.id}.tif"
        )
        assert item.to_dict(include_self_link=False)["properties"]["variable"] == "tas"
    for path in (tmp_path / "catalog").rglob("*.json"):
        validate(_load(path))
    assert sorted(item["id"] for item in publisher.iter_items("chelsa-monthly")) == ["a", "b"]
    assert (
        published_item(publisher, "chelsa-monthly", "a")["links"][0]["href"] == "../../catalog.json"
    )


def test_static_catalog_files_are_world_readable(
    tmp_path: Path, item_template: dict[str, Any]
) -> None:
    publisher = StaticCatalogPublisher(tmp_path / "catalog")
    item = clone(item_template, "chelsa-monthly", "tas_2001_03")
    publisher.ensure_collection(collection_for("chelsa-monthly", [item]))
    publisher.upsert_item(item)

    files = sorted((tmp_path / "catalog").rglob("*.json"))
    assert [f.name for f in files] == ["catalog.json", "collection.json", "tas_2001_03.json"]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*.json")}


def test_static_catalog_is_idempotent(tmp_path: Path, item_template: dict[str, Any]) -> None:
    publisher = StaticCatalogPublisher(tmp_path)
    items = [clone(item_template, "stressors_qc", f"layer-{n}") for n in range(3)]
    collection = collection_for("stressors_qc", items)
    publisher.upsert_collection(collection)
    for item in items:
        publisher.upsert_item(item)
    before = _snapshot(tmp_path)

    assert publisher.upsert_collection(collection) == "unchanged"
    assert publisher.ensure_collection(collection) == "unchanged"
    assert [publisher.upsert_item(item) for item in items] == ["unchanged"] * 3
    assert _snapshot(tmp_path) == before
    links = published_collection(publisher, "stressors_qc")["links"]
    assert Counter(link["href"] for link in links if link["rel"] == "item") == {
        f"./layer-{n}/layer-{n}.json": 1 for n in range(3)
    }

    changed = clone(item_template, "stressors_qc", "layer-0", variable="pr")
    assert publisher.upsert_item(changed) == "updated"
    assert published_item(publisher, "stressors_qc", "layer-0")["properties"]["variable"] == "pr"
    # A new extent rewrites the collection and keeps its item links.
    assert publisher.upsert_collection(collection_for("stressors_qc", [], "New")) == "updated"
    assert (
        len(
            [
                ln
                for ln in published_collection(publisher, "stressors_qc")["links"]
                if ln["rel"] == "item"
            ]
        )
        == 3
    )

    publisher.delete_item("stressors_qc", "layer-1")
    assert publisher.get_item("stressors_qc", "layer-1") is None
    assert sorted(i["id"] for i in publisher.iter_items("stressors_qc")) == ["layer-0", "layer-2"]


def test_static_catalog_refuses_bad_input(tmp_path: Path, item_template: dict[str, Any]) -> None:
    publisher = StaticCatalogPublisher(tmp_path)
    with pytest.raises(CatalogError, match="'orphans' does not exist"):
        publisher.upsert_item(clone(item_template, "orphans", "x"))
    with pytest.raises(CatalogError, match=r"\.\./escape"):
        publisher.upsert_item(clone(item_template, "ok", "../escape"))


def _publish_batch(root: str, documents: list[dict[str, Any]]) -> None:
    publisher = StaticCatalogPublisher(Path(root))
    for document in documents:
        collection_id = document["collection"]
        publisher.ensure_collection(collection_for(collection_id, []))
        publisher.upsert_item(pystac.Item.from_dict(document))


@pytest.mark.slow
def test_static_catalog_concurrent_writers(tmp_path: Path, item_template: dict[str, Any]) -> None:
    batches = [
        [
            clone(item_template, f"collection-{(p + n) % 2}", f"p{p}-i{n}").to_dict(
                include_self_link=False, transform_hrefs=False
            )
            for n in range(10)
        ]
        for p in range(4)
    ]
    # spawn, not fork: GDAL and pytest state do not survive a fork cleanly.
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_publish_batch, args=(str(tmp_path), batch)) for batch in batches
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0

    catalog = _load(tmp_path / "catalog.json")
    children = [link["href"] for link in catalog["links"] if link["rel"] == "child"]
    assert sorted(children) == ["./collection-0/collection.json", "./collection-1/collection.json"]
    expected = {document["id"] for batch in batches for document in batch}
    seen: Counter[str] = Counter()
    for collection_id in ("collection-0", "collection-1"):
        links = published_collection(StaticCatalogPublisher(tmp_path), collection_id)["links"]
        seen.update(link["href"].split("/")[1] for link in links if link["rel"] == "item")
    assert seen == dict.fromkeys(expected, 1)
    loaded = pystac.Catalog.from_file(str(tmp_path / "catalog.json"))
    assert {item.id for item in loaded.get_items(recursive=True)} == expected
    assert not list(tmp_path.rglob("*.tmp")), "a temporary file was left behind"


# ---------------------------------------------------------------------------- STAC API


@pytest.fixture
def api(stac_api_url: str) -> Iterator[StacApiPublisher]:
    headers = {"Authorization": "Bearer very-secret-token"}
    with StacApiPublisher(stac_api_url, headers=headers, retry=FAST_RETRY, timeout=30) as client:
        yield client


@pytest.fixture
def api_collection_id(api: StacApiPublisher, unique_id: str) -> Iterator[str]:
    collection_id = f"test-catalog-{unique_id}"
    yield collection_id
    api.delete_collection(collection_id)


def search_ids(url: str, collection_id: str) -> list[str]:
    return [item.id for item in Client.open(url).search(collections=[collection_id]).items()]


def test_api_publish_is_idempotent(
    api: StacApiPublisher,
    api_collection_id: str,
    stac_api_url: str,
    item_template: dict[str, Any],
) -> None:
    item = clone(item_template, api_collection_id, "tas_2001_03")
    collection = collection_for(api_collection_id, [item])
    assert api.ensure_collection(collection) == "created"
    assert api.upsert_item(item) == "created"

    assert search_ids(stac_api_url, api_collection_id) == ["tas_2001_03"]
    stored = published_item(api, api_collection_id, "tas_2001_03")
    validate(stored)
    assert (
        stored["assets"]["tas_2001_03"]["file:checksum"]
        == item.assets["tas_2001_03"].extra_fields["file:checksum"]
    )

    assert api.upsert_item(item) == "unchanged"
    assert api.upsert_collection(collection) == "unchanged"
    assert api.ensure_collection(collection_for(api_collection_id, [], "Other")) == "unchanged"
    assert search_ids(stac_api_url, api_collection_id) == ["tas_2001_03"]
    assert api.get_item(api_collection_id, "tas_2001_03") == stored

    changed = clone(item_template, api_collection_id, "tas_2001_03", variable="pr")
    assert api.upsert_item(changed) == "updated"
    assert published_item(api, api_collection_id, "tas_2001_03")["properties"]["variable"] == "pr"
    assert search_ids(stac_api_url, api_collection_id) == ["tas_2001_03"]
    assert api.upsert_collection(collection_for(api_collection_id, [item], "New")) == "updated"
    assert published_collection(api, api_collection_id)["description"] == "New"

    api.delete_item(api_collection_id, "tas_2001_03")
    api.delete_item(api_collection_id, "tas_2001_03")  # already gone: still fine
    assert api.get_item(api_collection_id, "tas_2001_03") is None


def test_api_refusal_names_the_item(
    api: StacApiPublisher, api_collection_id: str, item_template: dict[str, Any]
) -> None:
    api.ensure_collection(collection_for(api_collection_id, []))
    broken = clone(item_template, api_collection_id, "no-geometry")
    broken.geometry = None
    broken.bbox = None
    with pytest.raises(CatalogError) as caught:
        api.upsert_item(broken)
    message = str(caught.value)
    assert "'no-geometry'" in message
    assert api_collection_id in message
    assert "400" in message
    assert "geometry" in message.lower()  # the server's own explanation
    assert "very-secret-token" not in message


def test_api_paging_and_bulk_upsert(
    api: StacApiPublisher,
    api_collection_id: str,
    stac_api_url: str,
    item_template: dict[str, Any],
) -> None:
    api.ensure_collection(collection_for(api_collection_id, []))
    items = [clone(item_template, api_collection_id, f"tile-{n:02d}") for n in range(12)]
    assert api.bulk_upsert_items(api_collection_id, items, chunk_size=5) == 12
    assert api.bulk_upsert_items(api_collection_id, items, chunk_size=5) == 12  # idempotent

    api.page_size = 5  # 12 items over 3 pages
    ids = [item["id"] for item in api.iter_items(api_collection_id)]
    assert sorted(ids) == [f"tile-{n:02d}" for n in range(12)]
    assert sorted(search_ids(stac_api_url, api_collection_id)) == sorted(ids)
    assert [api.upsert_item(item) for item in items[:2]] == ["unchanged", "unchanged"]

    renamed = clone(item_template, "elsewhere", "tile-99")
    with pytest.raises(CatalogError, match="'elsewhere'"):
        api.bulk_upsert_items(api_collection_id, [renamed])


def test_api_unreachable_is_a_catalog_error(item_template: dict[str, Any]) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    publisher = StacApiPublisher(
        f"http://user:hunter2@127.0.0.1:{port}",
        headers={"Authorization": "Bearer very-secret-token"},
        retry=FAST_RETRY,
        timeout=2,
    )
    with pytest.raises(CatalogError, match="unreachable") as caught:
        publisher.upsert_item(clone(item_template, "c", "i"))
    assert "very-secret-token" not in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_missing_item_ids_pages_through_search(
    api: StacApiPublisher, api_collection_id: str, item_template: dict[str, Any], tmp_path: Path
) -> None:
    api.ensure_collection(collection_for(api_collection_id, []))
    items = [clone(item_template, api_collection_id, f"sp-{n:03d}") for n in range(30)]
    assert api.upsert_items(items) == ["upserted"] * 30  # above the bulk threshold
    api.page_size = 7
    wanted = [f"sp-{n:03d}" for n in range(25, 35)]
    assert api.missing_item_ids(api_collection_id, wanted) == [f"sp-{n:03d}" for n in range(30, 35)]
    # What skip-unchanged compares with the store: each found item's assets (sizes, checksums).
    found = api.get_items(api_collection_id, wanted)
    assert sorted(found) == [f"sp-{n:03d}" for n in range(25, 30)]
    expected_asset = items[27].assets["sp-027"].to_dict()
    assert found["sp-027"]["assets"]["sp-027"]["file:checksum"] == expected_asset["file:checksum"]
    assert found["sp-027"]["assets"]["sp-027"]["href"] == expected_asset["href"]

    static = StaticCatalogPublisher(tmp_path / "catalog")
    static.ensure_collection(collection_for(api_collection_id, []))
    assert static.upsert_items(items[:3]) == ["created"] * 3
    assert static.missing_item_ids(api_collection_id, ["sp-000", "sp-003"]) == ["sp-003"]


def test_a_hung_api_fails_within_the_budget_then_fast(
    stac_api_url: str, tcp_proxy_factory, item_template: dict[str, Any]
) -> None:
    # A server that accepts connections and never answers: each attempt ends at the read
    # timeout, the call at the budget (not attempts x timeout per call, as before).
    proxy = tcp_proxy_factory(int(stac_api_url.rsplit(":", 1)[1]))
    publisher = StacApiPublisher(
        proxy.url,
        retry=RetryPolicy(attempts=50, backoff_seconds=0.05, budget_seconds=1.0),
        timeout=httpx.Timeout(0.3, connect=0.3),
    )
    proxy.hang()
    with pytest.raises(CatalogError, match=r"unreachable.*ReadTimeout"):
        publisher.get_item("c", "i")
    spent = proxy.refused
    assert spent > 1
    # Still hung: the publisher now tries each call once, a partition fails in one timeout.
    with pytest.raises(CatalogError, match="unreachable"):
        publisher.upsert_item(clone(item_template, "c", "i"))
    assert proxy.refused == spent + 1
    proxy.up()
    assert publisher.get_item("c", "i") is None  # answered (404): the outage is over
    assert not publisher.outage.ongoing
