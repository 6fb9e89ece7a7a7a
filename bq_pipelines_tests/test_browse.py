"""`make browse` on the embedded defaults: the static catalog and the local objects over http on
loopback, nothing else; with BQ_BROWSE_URL, the links a run records (item, COG, thumbnail,
coverage map) are http links to it that open, and the pictures are short enough for the UI to
show in place. Without it, the thumbnail is embedded (behind "[Show Markdown]") as before."""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest

import bq_pipelines_testkit.http_client as http
from bq_pipelines.orchestration.keys import DatasetKeys
from bq_pipelines.runtime.browse import browse_roots, make_server
from bq_pipelines.settings import Settings
from bq_pipelines_testkit.runs import latest_metadata, run_dataset
from bq_pipelines_tests.fixtures.demo import demo_declaration
from bq_pipelines_tests.pngs import png_pixels


@pytest.fixture
def home(tmp_path: Path, demo_sources: Path) -> dict[str, str]:
    return {"BQ_HOME": str(tmp_path / "bq"), "BQ_LOCAL_DATA_ROOT": str(demo_sources)}


@pytest.fixture
def browse_url(home: dict[str, str]) -> Iterator[str]:
    """The browse server of `home`'s folders on a free loopback port, in a thread."""
    server = make_server(browse_roots(Settings.from_env(home)), "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_only_the_catalog_and_the_objects_are_served(home: dict[str, str], browse_url: str) -> None:
    bq = Path(home["BQ_HOME"])
    for name, text in (
        ("catalog/catalog.json", "{}"),
        ("objects/io/a.tif", "tif"),
        ("api/token", "s"),
    ):
        (bq / name).parent.mkdir(parents=True, exist_ok=True)
        (bq / name).write_text(text)
    with httpx.Client(base_url=browse_url) as client:
        assert client.get("/catalog/catalog.json").text == "{}"
        assert client.get("/objects/io/a.tif").text == "tif"
        assert "a.tif" in client.get("/objects/io/").text  # a folder lists its files
        for path in ("/api/token", "/catalog/../api/token", "/objects/%2e%2e/api/token", "/"):
            assert client.get(path).status_code == 404, path  # BQ_HOME's secrets stay home


def test_links_open_from_the_ui_with_a_browse_url(home: dict[str, str], browse_url: str) -> None:
    settings = Settings.from_env({**home, "BQ_BROWSE_URL": browse_url})
    declaration = demo_declaration("demo-browse")
    instance = dg.DagsterInstance.ephemeral()
    assert run_dataset(declaration, settings, instance)

    keys = DatasetKeys(declaration.id)
    metadata = latest_metadata(instance, keys.step("stac_item"), "landcover")
    item_url = metadata["item_url"]
    assert item_url == f"{browse_url}/catalog/demo-browse/demo_landcover/demo_landcover.json"
    assert http.get(item_url).json()["id"] == "demo_landcover"
    thumbnail = metadata["thumbnail_href"]
    assert thumbnail == f"{browse_url}/objects/io/demo-browse/demo_landcover.tif.thumbnail.png"
    assert metadata["thumbnail"] == f"[![thumbnail of demo_landcover]({thumbnail})]({thumbnail})"
    assert png_pixels(http.get(thumbnail).content).shape[2] == 4
    href = latest_metadata(instance, keys.step("object"), "landcover")["href"]
    assert href == f"{browse_url}/objects/io/demo-browse/demo_landcover.tif"
    assert http.get(href).content[:4] == b"II*\x00"  # the COG itself
    [record] = instance.fetch_materializations(keys.collection, limit=1).records
    assert record.asset_materialization is not None
    collection: dict[str, Any] = {
        k: v.value for k, v in record.asset_materialization.metadata.items()
    }
    coverage = f"{browse_url}/objects/io/_previews/demo-browse/coverage-map.png"
    assert collection["coverage_map"].startswith(f"[![coverage map]({coverage})]({coverage})")
    assert len(collection["coverage_map"]) < 1000  # shown in place by the UI
    assert http.get(coverage).headers["content-type"] == "image/png"
    assert "map_url" not in collection and "map_url" not in metadata  # no tile server


def test_without_a_browse_url_links_stay_files_and_pictures_are_embedded(
    home: dict[str, str],
) -> None:
    settings = Settings.from_env(home)
    declaration = demo_declaration("demo-files")
    instance = dg.DagsterInstance.ephemeral()
    assert run_dataset(declaration, settings, instance)

    metadata = latest_metadata(instance, DatasetKeys(declaration.id).step("stac_item"), "elevation")
    assert metadata["item_url"].startswith("file://")
    embedded = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", metadata["thumbnail"])
    assert embedded is not None
    assert png_pixels(base64.b64decode(embedded.group(1))).shape[2] == 4
