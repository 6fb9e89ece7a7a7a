"""Previews end to end: the demo's categorical and continuous layers get thumbnails beside their
COGs (moto S3), in their items (stac-fastapi-pgstac) and in the Dagster metadata; the
collection gets its coverage map and item counts; re-runs store nothing new; a dataset can opt
out; the thumbnail obeys the COG's owner and integrity rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pystac_client

import bq_pipelines_testkit.http_client as http
from bq_pipelines.datasets.demo import DEMO_LAYERS, LANDCOVER_CLASSES
from bq_pipelines.datasets.loading import parse_declaration
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib import preview, stac, tiles
from bq_pipelines.lib.hashing import sha256_file
from bq_pipelines.lib.preview.thumbnails import colour_ramp
from bq_pipelines.lib.storage import ObjectOwner
from bq_pipelines.orchestration.keys import DatasetKeys
from bq_pipelines_testkit.runs import (
    audit_dataset,
    built_services,
    failure_messages,
    latest_metadata,
    materialize_dataset,
)
from bq_pipelines_tests.fixtures.demo import demo_data
from bq_pipelines_tests.pngs import png_pixels


def declaration(dataset_id: str, **fields) -> Declaration:
    return parse_declaration(
        {**demo_data(), "id": dataset_id, "folder": dataset_id, **fields}, "demo.yaml"
    )


def test_thumbnails_in_store_items_and_metadata_on_services(
    service_settings, stac_api_url, s3_client, s3_bucket, unique_id
):
    dataset = declaration(f"demo-{unique_id}")
    keys = DatasetKeys(dataset.id)
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_dataset(dataset, service_settings, instance).ok

    items = {
        item.id: item
        for item in pystac_client.Client.open(stac_api_url).search(collections=[dataset.id]).items()
    }
    thumbnails = {}
    for layer in DEMO_LAYERS:
        item = items[f"demo_{layer}"]
        # As the API serves it (pystac's reader would migrate extension versions).
        served = http.get(f"{stac_api_url}/collections/{dataset.id}/items/{item.id}").json()
        stac.validate(served)
        key = f"io/{dataset.id}/demo_{layer}.tif.thumbnail.png"
        asset = item.assets["thumbnail"]
        assert asset.href == f"{service_settings.public_base_url}/{key}"
        assert asset.media_type == "image/png" and asset.roles == ["thumbnail"]
        body = s3_client.get_object(Bucket=s3_bucket, Key=key)
        png = body["Body"].read()
        assert body["ContentType"] == "image/png"
        assert body["Metadata"]["bq-owner"] == f"{dataset.id}/demo_{layer}"
        assert asset.extra_fields["file:size"] == len(png)
        pixels = png_pixels(png)
        assert pixels.shape == (171, 256, 4)  # 600 x 400 px rasters
        thumbnails[layer] = pixels

        metadata = latest_metadata(instance, keys.step("stac_item"), layer)
        assert metadata["item_url"].endswith(f"/collections/{dataset.id}/items/demo_{layer}")
        assert metadata["thumbnail_href"] == asset.href
        # The UI shows the very PNG of the store, by its URL: short enough to be shown in
        # place (under 1,000 characters), not behind "[Show Markdown]".
        image = f"![thumbnail of demo_{layer}]({asset.href})"
        assert metadata["thumbnail"] == f"[{image}]({asset.href})"
        assert len(metadata["thumbnail"]) < 1000
        assert metadata["item"]["assets"]["thumbnail"]["href"] == asset.href
        # The item's map on the tile server (titiler-pgstac of the services) opens.
        tiler_url = service_settings.tiler_url
        assert tiler_url is not None
        assert metadata["map_url"] == tiles.item_map_url(tiler_url, served)
        assert http.get(metadata["map_url"], timeout=30).status_code == 200

    # Categorical: its six classes in its colour table, the nodata corner transparent.
    # Continuous: the ramp, the NaN corner (temperature) transparent.
    landcover = thumbnails["landcover"]
    opaque = {tuple(int(c) for c in p) for p in landcover[landcover[..., 3] == 255]}
    assert opaque == {(*rgb, 255) for _, rgb in LANDCOVER_CLASSES.values()}
    assert (landcover[:15, :23, 3] == 0).all()  # 40 x 60 source pixels of nodata
    temperature = thumbnails["temperature"]
    assert (temperature[-10:, -20:, 3] == 0).all()  # 30 x 50 NaN
    ramp = set(colour_ramp())
    assert {tuple(int(c) for c in p) for p in temperature[temperature[..., 3] == 255]} <= ramp

    [record] = instance.fetch_materializations(keys.collection, limit=1).records
    assert record.asset_materialization is not None
    collection: dict[str, Any] = {
        k: v.value for k, v in record.asset_materialization.metadata.items()
    }
    # The coverage map, stored beside the datasets' objects, shown in place by its URL.
    coverage_key = f"io/_previews/{dataset.id}/coverage-map.png"
    coverage_href = f"{service_settings.public_base_url}/{coverage_key}"
    assert collection["coverage_map"].startswith(f"[![coverage map]({coverage_href})]")
    assert len(collection["coverage_map"]) < 1000 and "3 items" in collection["coverage_map"]
    coverage = png_pixels(http.get(coverage_href).content)  # public, like the COGs
    colours = {tuple(int(c) for c in p) for p in coverage[..., :3].reshape(-1, 3)}
    assert {preview.LAND_COLOUR, preview.SEA_COLOUR} <= colours  # southern Québec, the sea
    assert len(colours - {preview.LAND_COLOUR, preview.SEA_COLOUR}) > 3  # footprints
    mosaic = collection["map_url"]
    assert mosaic.startswith(f"{tiler_url}/collections/{dataset.id}/WebMercatorQuad/map.html?")
    assert http.get(mosaic, timeout=30).status_code == 200
    assert "| 2020-01 | 3 |" in collection["items_over_time"]

    # Re-run with a fresh history (nothing to skip by): the same objects, not re-uploaded.
    before = s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    again = dg.DagsterInstance.ephemeral()
    assert materialize_dataset(dataset, service_settings, again).ok
    assert s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"] == before
    assert sum(o["Key"].endswith(".thumbnail.png") for o in before) == len(DEMO_LAYERS)
    assert latest_metadata(again, keys.step("stac_item"), "landcover")["unchanged"] == 1
    assert audit_dataset(dataset, service_settings, again).clean


def test_opt_out_publishes_no_thumbnail(local_settings):
    dataset = declaration("demo-nothumbs", thumbnails=False)
    keys = DatasetKeys(dataset.id)
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_dataset(dataset, local_settings, instance).ok
    folder = Path(local_settings.objects_dir) / "io" / dataset.id
    assert not list(folder.glob("*.png"))
    with built_services(local_settings) as services:
        for layer in DEMO_LAYERS:
            item = services.publisher.get_item(dataset.id, f"demo_{layer}")
            assert item is not None
            assert set(item["assets"]) == {f"demo_{layer}"}
            metadata = latest_metadata(instance, keys.step("stac_item"), layer)
            assert "thumbnail" not in metadata
            # The link to the published item is there all the same (a file of the catalog).
            assert metadata["item_url"].startswith("file://")
            assert metadata["item_url"].endswith(f"demo_{layer}.json")
    assert audit_dataset(dataset, local_settings, instance).clean


def test_a_missing_thumbnail_is_drift_and_put_back(local_settings):
    dataset = declaration("demo-thumbdrift")
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_dataset(dataset, local_settings, instance).ok
    path = Path(local_settings.objects_dir) / "io" / dataset.id / "demo_elevation.tif"
    thumbnail = path.with_name(path.name + ".thumbnail.png")
    published = sha256_file(thumbnail)
    with built_services(local_settings) as services:
        services.store.delete(f"io/{dataset.id}/{thumbnail.name}")

    report = audit_dataset(dataset, local_settings, instance)
    assert [(d.item_id, d.drift) for d in report.drifted] == [("demo_elevation", "missing_object")]
    done = materialize_dataset(dataset, local_settings, instance)
    assert done.ok and (done.published, done.skipped) == (1, 2)
    assert sha256_file(thumbnail) == published
    assert audit_dataset(dataset, local_settings, instance).clean


def test_a_thumbnail_never_overwrites_another_items_object(local_settings, tmp_path):
    dataset = declaration("demo-thumbowner")
    key = f"io/{dataset.id}/demo_landcover.tif.thumbnail.png"
    with built_services(local_settings) as services:
        squatter = tmp_path / "other.png"
        squatter.write_bytes(b"not ours")
        services.store.put_file(
            squatter,
            key,
            sha256=sha256_file(squatter),
            owner=ObjectOwner("other-dataset", "other-item"),
            content_type="image/png",
        )
    instance = dg.DagsterInstance.ephemeral()
    done = materialize_dataset(dataset, local_settings, instance)
    assert not done.ok and done.failed == 1 and done.published == 2
    assert "other-dataset/other-item" in failure_messages(instance)
    assert (Path(local_settings.objects_dir) / key).read_bytes() == b"not ours"
