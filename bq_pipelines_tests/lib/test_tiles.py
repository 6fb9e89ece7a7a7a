"""The COGs serve maps: every kind of COG the pipeline makes, published as the pipeline publishes
it (object in S3 with its public URL, item through the STAC API), drawn by titiler-pgstac over
HTTP as a map reader's client asks for it (`lib/tiles`): a 200 PNG, opaque over data,
transparent over nodata, categorical classes in the colours of the COG's colour table.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import morecantile
import numpy as np
import pystac
import pytest
import rasterio
from rasterio.io import MemoryFile
from rasterio.warp import transform as warp_points

import bq_pipelines_testkit.http_client as http
from bq_pipelines.lib import stac, tiles
from bq_pipelines.lib.catalog import StacApiPublisher
from bq_pipelines.lib.cog import CogSettings, RasterInput, to_cog
from bq_pipelines.lib.hashing import sha256_file
from bq_pipelines_testkit.rasters import CUSTOM_LCC_WKT, BandMetadata, RasterSpec, write_raster
from bq_pipelines_tests.backup.helpers import collection_document

WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")
# Tiles come back as PNGs, which rasterio opens without georeferencing, and says so.
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
CLASS_COLOURS = {0: (0, 0, 0, 0)} | {
    value: (25 * value % 256, 255 - 20 * value, 60 + 15 * value, 255) for value in range(1, 12)
}


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    spec: RasterSpec
    settings: CogSettings


CASES = [
    Case(
        "categorical-colour-table",
        RasterSpec(
            dtype="uint8", categorical=True, nodata=0, metadata=BandMetadata(colormap=CLASS_COLOURS)
        ),
        CogSettings(categorical=True),
    ),
    Case("float-nan", RasterSpec(dtype="float32", nodata=float("nan")), CogSettings()),
    Case("int16-nodata", RasterSpec(dtype="int16", nodata=-9999), CogSettings()),
    Case("rgb", RasterSpec(dtype="uint8", count=3, nodata=0), CogSettings()),
    Case(
        "crs-without-epsg",
        RasterSpec(dtype="float32", crs=CUSTOM_LCC_WKT, nodata=-1.0),
        CogSettings(),
    ),
]
# Each kind in both profiles (raw: the source's grid; display: EPSG:3857), and in DEFLATE (the
# default) and ZSTD (global-mammals').
PARAMS = [
    pytest.param(case, dataclasses.replace(case.settings, profile=profile, compression=codec),
                 id=f"{case.name}-{profile}-{codec}")
    for case in CASES
    for profile in ("raw", "display")
    for codec in ("deflate", "zstd")
    if codec == "deflate" or case.name in ("float-nan", "categorical-colour-table", "rgb")
]  # fmt: skip


@pytest.fixture(scope="module")
def tiler_url(services_env: dict[str, str]) -> str:
    return services_env["BQ_TILER_URL"]


@pytest.fixture(scope="module")
def collection_id(services_env: dict[str, str]) -> Iterator[str]:
    collection_id = f"test-tiles-{uuid.uuid4().hex[:8]}"
    with StacApiPublisher(services_env["BQ_STAC_API_URL"]) as publisher:
        publisher.upsert_collection(pystac.Collection.from_dict(collection_document(collection_id)))
        yield collection_id
        publisher.delete_collection(collection_id)


def publish(
    cog: Path, item_id: str, collection_id: str, services_env: dict[str, str], s3_client
) -> dict[str, Any]:
    """The COG uploaded public-read under the services' bucket, its item built as the pipeline
    builds it (asset keyed by the item id, href the public URL) and published through the API."""
    key = f"io/{collection_id}/{item_id}.tif"
    s3_client.upload_file(
        str(cog),
        services_env["BQ_S3_BUCKET"],
        key,
        ExtraArgs={"ACL": "public-read", "ContentType": "image/tiff"},
    )
    href = f"{services_env['BQ_PUBLIC_BASE_URL']}/{key}"
    item = stac.build_item(
        cog,
        item_id=item_id,
        collection_id=collection_id,
        datetime_=datetime(2020, 1, 1, tzinfo=UTC),
        asset=stac.ItemAssetSpec(href=href, key=item_id),
        file_size=cog.stat().st_size,
        file_sha256=sha256_file(cog),
    )
    stac.validate(item)
    with StacApiPublisher(services_env["BQ_STAC_API_URL"]) as publisher:
        publisher.upsert_items([item])
    return item.to_dict(include_self_link=False)


def lonlat_of_pixel(cog: Path, column: float, row: float) -> tuple[float, float]:
    with rasterio.open(cog) as src:
        x, y = src.transform * (column, row)
        [lon], [lat] = warp_points(src.crs, "EPSG:4326", [x], [y])
    return lon, lat


def covering_tile(bbox: list[float]) -> morecantile.Tile:
    """The deepest tile holding the whole bbox (so the tile shows data and nodata together)."""
    west, south, east, north = bbox
    for zoom in range(12, -1, -1):
        tile = WEB_MERCATOR.tile((west + east) / 2, (south + north) / 2, zoom)
        bounds = WEB_MERCATOR.bounds(tile)
        if (
            bounds.left <= west
            and bounds.right >= east
            and bounds.bottom <= south
            and bounds.top >= north
        ):
            return tile
    raise AssertionError(f"no tile holds {bbox}")


def tile_pixel(tile: morecantile.Tile, lon: float, lat: float, size: int = 256) -> tuple[int, int]:
    """(row, column) of a point in a tile's PNG."""
    x, y = WEB_MERCATOR.xy(lon, lat)
    left, bottom, right, top = WEB_MERCATOR.xy_bounds(tile)
    return int((top - y) / (top - bottom) * size), int((x - left) / (right - left) * size)


@pytest.mark.parametrize(("case", "settings"), PARAMS)
def test_titiler_pgstac_draws_the_cog(
    case: Case,
    settings: CogSettings,
    tmp_path: Path,
    collection_id: str,
    services_env: dict[str, str],
    s3_client,
    tiler_url: str,
) -> None:
    source = write_raster(tmp_path / "source.tif", case.spec)
    cog = tmp_path / "cog.tif"
    to_cog(RasterInput(source), cog, settings)
    item_id = f"{case.name}-{settings.profile}-{settings.compression}"
    item = publish(cog, item_id, collection_id, services_env, s3_client)
    tile = covering_tile(item["bbox"])

    response = http.get(tiles.item_tile_url(tiler_url, item, tile.z, tile.x, tile.y), timeout=60)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    with MemoryFile(response.content) as memory, memory.open() as png:
        assert png.driver == "PNG"
        pixels = png.read()
    assert pixels.shape[0] in (2, 4), "no alpha channel"  # grey + alpha or RGBA
    alpha = pixels[-1]
    # The source's nodata corner (its top-left tenth) and its middle, located in the tile.
    width, height = case.spec.width, case.spec.height
    corner = tile_pixel(tile, *lonlat_of_pixel(source, width / 20, height / 20))
    middle = tile_pixel(tile, *lonlat_of_pixel(source, width / 2, height / 2))
    assert alpha[corner] == 0, "nodata is not transparent"
    assert alpha[middle] == 255, "data is not opaque"
    assert (alpha == 255).sum() > 200  # a real area of data, not a stray pixel
    if case.spec.categorical:
        opaque = {
            tuple(int(v) for v in pixels[:3, r, c])
            for r, c in zip(*np.nonzero(alpha == 255), strict=True)
        }
        table = {colour[:3] for value, colour in CLASS_COLOURS.items() if value}
        assert opaque <= table, f"colours outside the colour table: {sorted(opaque - table)[:5]}"
        assert len(opaque) >= 8  # the classes, not one flat colour


def test_the_map_viewer_of_an_item_opens(
    tmp_path: Path, collection_id: str, services_env: dict[str, str], s3_client, tiler_url: str
) -> None:
    source = write_raster(tmp_path / "source.tif", RasterSpec(dtype="float32", nodata=-1.0))
    to_cog(RasterInput(source), tmp_path / "cog.tif", CogSettings())
    item = publish(tmp_path / "cog.tif", "viewer", collection_id, services_env, s3_client)

    url = tiles.item_map_url(tiler_url, item)
    page = http.get(url, timeout=30)

    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert url.startswith(f"{tiler_url}/collections/{collection_id}/items/viewer/assets/viewer/")
    tilejson = http.get(url.replace("/map.html", "/tilejson.json"), timeout=30).json()
    assert tilejson["bounds"] == pytest.approx(item["bbox"], abs=1e-6)
    assert "/items/viewer/assets/viewer/tiles/" in tilejson["tiles"][0]


def test_a_collection_mosaics_its_items(
    tmp_path: Path, services_env: dict[str, str], s3_client, tiler_url: str
) -> None:
    """Two items side by side, each with its own asset key (its id), drawn in one tile."""
    collection_id = f"test-mosaic-{uuid.uuid4().hex[:8]}"
    with StacApiPublisher(services_env["BQ_STAC_API_URL"]) as publisher:
        publisher.upsert_collection(pystac.Collection.from_dict(collection_document(collection_id)))
        try:
            items, sources = [], []
            for n, origin in enumerate([(-75.0, 50.0), (-71.0, 50.0)]):
                spec = RasterSpec(dtype="int16", nodata=-9999, origin=origin, seed=n)
                sources.append(write_raster(tmp_path / f"source{n}.tif", spec))
                cog = tmp_path / f"cog{n}.tif"
                to_cog(RasterInput(sources[-1]), cog, CogSettings(profile="display"))
                items.append(publish(cog, f"part-{n}", collection_id, services_env, s3_client))
            west, south = items[0]["bbox"][:2]
            east, north = items[1]["bbox"][2:]
            tile = covering_tile([west, south, east, north])

            url = tiles.collection_tile_url(
                tiler_url, collection_id, tile.z, tile.x, tile.y, items[0]
            )
            response = http.get(url, timeout=60)

            assert response.status_code == 200, response.text
            with MemoryFile(response.content) as memory, memory.open() as png:
                alpha = png.read()[-1]
            for source in sources:  # the middle of each item has data, its corner none
                assert alpha[tile_pixel(tile, *lonlat_of_pixel(source, 150, 100))] == 255
                assert alpha[tile_pixel(tile, *lonlat_of_pixel(source, 15, 10))] == 0
            viewer = http.get(tiles.collection_map_url(tiler_url, collection_id), timeout=30)
            assert viewer.status_code == 200 and "text/html" in viewer.headers["content-type"]
        finally:
            publisher.delete_collection(collection_id)
