"""The demo dataset end to end: on the embedded defaults, and on the real services
(moto S3 + stac-fastapi-pgstac), found again with pystac-client and read back with rasterio."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pystac
import pystac_client
import pytest
import rasterio

from bq_pipelines.datasets.demo import (
    DEMO_LAYERS,
    ELEVATION_UNIT,
    LANDCOVER_CLASSES,
    TEMPERATURE_UNIT,
    write_demo_rasters,
)
from bq_pipelines.lib import cog, stac
from bq_pipelines.orchestration.keys import DatasetKeys, op_name
from bq_pipelines.orchestration.resources import catalog_for
from bq_pipelines.runtime.launch import RANGE_END_TAG, RANGE_START_TAG
from bq_pipelines_testkit.runs import (
    dataset_definitions,
    failure_messages,
    latest_metadata,
    materialize_dataset,
    run_dataset,
)
from bq_pipelines_tests.fixtures.demo import demo_declaration
from bq_pipelines_tests.fixtures.services import rasterio_s3_env


def read_pixels(path: str, env: dict[str, str] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    with rasterio_s3_env(env) if env else rasterio.Env(), rasterio.open(path) as src:
        return src.read(), {
            "crs": src.crs,
            "transform": src.transform,
            "nodata": src.nodata,
            "dtype": src.dtypes[0],
        }


def assert_same_raster(cog_path: str, source: Path, env: dict[str, str] | None = None) -> None:
    pixels, profile = read_pixels(cog_path, env)
    expected, expected_profile = read_pixels(str(source))
    np.testing.assert_array_equal(pixels, expected)  # NaN == NaN here: raw keeps every pixel
    np.testing.assert_equal(profile, expected_profile)  # nodata may be NaN


def test_demo_on_embedded_defaults_writes_a_valid_static_catalog(local_settings, demo_sources):
    declaration = demo_declaration("demo-local")
    instance = dg.DagsterInstance.ephemeral()
    assert run_dataset(declaration, local_settings, instance)

    catalog = pystac.Catalog.from_file(str(local_settings.catalog_dir / "catalog.json"))
    collection = catalog.get_child("demo-local")
    assert isinstance(collection, pystac.Collection)
    items = {item.id: item for item in collection.get_items()}
    # Each partition's materializations hold that partition's facts, no batch totals.
    keys = DatasetKeys("demo-local")
    for layer in DEMO_LAYERS:
        for asset_key in keys.partitioned:
            metadata = latest_metadata(instance, asset_key, layer)
            assert not {"partitions", "skipped_partitions"} & metadata.keys(), metadata
            assert metadata["skipped"] is False
        item_metadata = latest_metadata(instance, keys.step("stac_item"), layer)
        assert item_metadata["item_ids"] == [f"demo_{layer}"]
        assert item_metadata["items"] == 1 and item_metadata["created"] == 1
        assert item_metadata["item"]["id"] == f"demo_{layer}"
        cog_metadata = latest_metadata(instance, keys.step("cog"), layer)
        assert cog_metadata["cogs"] == 1
    assert set(items) == {f"demo_{layer}" for layer in DEMO_LAYERS}
    stac.validate(collection)
    for layer in DEMO_LAYERS:
        item = items[f"demo_{layer}"]
        # As stored: pystac's reader migrates extension versions (classification to a v2.0.0
        # that is not shipped offline), which is not what readers of the files get.
        stac.validate(json.loads(Path(item.get_self_href() or "").read_text()))
        assert list(item.assets) == [item.id, "thumbnail"]
        href = item.assets[item.id].href
        assert href.startswith(str(local_settings.objects_dir.absolute() / "io" / "demo-local"))
        assert cog.validate_cog(Path(href)) == []
        assert_same_raster(href, demo_sources / "demo" / f"{layer}.tif")
        assert item.properties["layer"] == layer
    # The demo shows classification and units: what a reader of the catalog gets.
    [landcover] = items["demo_landcover"].assets["demo_landcover"].extra_fields["raster:bands"]
    assert landcover["classification:classes"] == [
        {"value": value, "description": name.replace("_", " "), "name": name,
         "color_hint": "{:02X}{:02X}{:02X}".format(*rgb)}
        for value, (name, rgb) in LANDCOVER_CLASSES.items()
    ]  # fmt: skip
    with rasterio.open(items["demo_landcover"].assets["demo_landcover"].href) as src:
        assert src.colormap(1)[4] == (*LANDCOVER_CLASSES[4][1], 255)  # the colour table kept
    for layer, unit in (("elevation", ELEVATION_UNIT), ("temperature", TEMPERATURE_UNIT)):
        [band] = items[f"demo_{layer}"].assets[f"demo_{layer}"].extra_fields["raster:bands"]
        assert band["unit"] == unit
    assert collection.summaries.get_list("layer") == sorted(DEMO_LAYERS)
    # The collection extent covers every item.
    bbox = collection.extent.spatial.bboxes[0]
    for item in items.values():
        assert item.bbox is not None
        assert bbox[0] <= item.bbox[0] and bbox[1] <= item.bbox[1]
        assert bbox[2] >= item.bbox[2] and bbox[3] >= item.bbox[3]


def test_demo_on_services_is_searchable_and_readable_from_s3(
    service_settings, demo_sources, stac_api_url, s3_client, s3_bucket, gdal_s3_env, unique_id
):
    declaration = demo_declaration(f"demo-{unique_id}")
    instance = dg.DagsterInstance.ephemeral()
    assert run_dataset(declaration, service_settings, instance)

    search = pystac_client.Client.open(stac_api_url).search(collections=[declaration.id])
    items = {item.id: item for item in search.items()}
    assert set(items) == {f"demo_{layer}" for layer in DEMO_LAYERS}
    for layer in DEMO_LAYERS:
        item = items[f"demo_{layer}"]
        key = f"io/{declaration.id}/demo_{layer}.tif"
        assert item.assets[item.id].href == f"{service_settings.public_base_url}/{key}"
        head = s3_client.head_object(Bucket=s3_bucket, Key=key)
        assert head["ContentType"] == "image/tiff; application=geotiff; profile=cloud-optimized"
        assert_same_raster(
            f"s3://{s3_bucket}/{key}", demo_sources / "demo" / f"{layer}.tif", gdal_s3_env
        )
        assert item.assets[item.id].extra_fields["file:size"] == head["ContentLength"]

    collection = pystac_client.Client.open(stac_api_url).get_collection(declaration.id)
    assert collection is not None
    start = collection.extent.temporal.intervals[0][0]
    assert start is not None and start.year == 2020

    # Materializing again: same items, no new objects, and the partitions say they were skipped.
    before = s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert run_dataset(declaration, service_settings, instance)
    after = s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    assert [(o["Key"], o["ETag"], o["LastModified"]) for o in after] == [
        (o["Key"], o["ETag"], o["LastModified"]) for o in before
    ]
    again = {
        i.id: i
        for i in pystac_client.Client.open(stac_api_url)
        .search(collections=[declaration.id])
        .items()
    }
    for item_id, item in items.items():
        assert json.dumps(again[item_id].properties, sort_keys=True) == json.dumps(
            item.properties, sort_keys=True
        )
        assert again[item_id].assets[item_id].to_dict() == item.assets[item_id].to_dict()
    metadata = latest_metadata(instance, DatasetKeys(declaration.id).step("stac_item"), "elevation")
    assert metadata["skipped"] is True


def test_second_run_without_history_republishes_identically(
    service_settings, stac_api_url, s3_client, s3_bucket, unique_id
):
    # A fresh Dagster instance has no fingerprint to compare: the partition is redone, and
    # the object upload is skipped by checksum and the item is left unchanged.
    declaration = demo_declaration(f"demo-{unique_id}")
    assert run_dataset(declaration, service_settings, dg.DagsterInstance.ephemeral(), ["landcover"])
    first = s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]
    instance = dg.DagsterInstance.ephemeral()
    assert run_dataset(declaration, service_settings, instance, ["landcover"])
    assert s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"] == first
    metadata = latest_metadata(instance, DatasetKeys(declaration.id).step("stac_item"), "landcover")
    assert metadata["skipped"] is False
    assert metadata["unchanged"] == 1 and metadata["created"] == 0
    object_metadata = latest_metadata(
        instance, DatasetKeys(declaration.id).step("object"), "landcover"
    )
    assert object_metadata["uploaded"] == 0


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("missing", "sources/demo/elevation.tif: file not found"),
        ("corrupt", "sources/demo/elevation.tif: "),
        ("no_crs", "has no CRS"),
    ],
)
def test_bad_input_fails_only_its_partition_and_publishes_nothing(
    local_settings, demo_sources, breakage, expected
):
    broken = demo_sources / "demo" / "elevation.tif"
    if breakage == "missing":
        broken.unlink()
    elif breakage == "corrupt":
        broken.write_bytes(b"II*\x00" + bytes(range(256)) * 40)
    else:
        with rasterio.open(broken) as src:
            data, profile = src.read(), src.profile
        profile.pop("crs")
        with rasterio.open(broken, "w", **profile) as dst:
            dst.write(data)
    declaration = demo_declaration("demo-broken")
    instance = dg.DagsterInstance.ephemeral()
    done = materialize_dataset(declaration, local_settings, instance)
    assert not done.ok
    assert (done.published, done.skipped, done.failed) == (2, 0, 1)
    # The failed batch kept Dagster from building the collection after it: a run of its own
    # did, with the two published items.
    batch, collection_run = done.runs
    assert batch.collection_published is False and not batch.success
    assert collection_run.partitions == () and collection_run.collection_published
    assert collection_run.success

    message = failure_messages(instance)
    assert "1 of 3 partitions failed" in message
    assert "elevation" in message and expected in message
    publisher = catalog_for(local_settings).publisher()
    assert publisher.get_item("demo-broken", "demo_elevation") is None
    assert not (local_settings.objects_dir / "io" / "demo-broken" / "demo_elevation.tif").exists()
    collection = publisher.get_collection("demo-broken")
    assert collection is not None
    assert sorted(link["href"] for link in collection["links"] if link["rel"] == "item") == [
        "./demo_landcover/demo_landcover.json",
        "./demo_temperature/demo_temperature.json",
    ]
    # The other partitions were published and are recorded as materialized.
    for layer in ("landcover", "temperature"):
        assert publisher.get_item("demo-broken", f"demo_{layer}") is not None
        metadata = latest_metadata(instance, DatasetKeys("demo-broken").step("stac_item"), layer)
        assert metadata["items"] == 1
    status = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=DatasetKeys("demo-broken").step("stac_item"), asset_partitions=["elevation"]
        ),
        limit=1,
    ).records
    assert status == []


def test_a_job_run_where_every_partition_fails_publishes_no_collection(
    local_settings, demo_sources
):
    # The job as the UI or a sensor launches it: partitions, then the collection.
    for layer in DEMO_LAYERS:
        (demo_sources / "demo" / f"{layer}.tif").unlink()
    declaration = demo_declaration("demo-all-failed")
    keys = DatasetKeys(declaration.id)
    defs = dataset_definitions(declaration, local_settings)
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def(op_name(declaration.id, "job"))
    result = job.execute_in_process(
        instance=instance,
        raise_on_error=False,
        tags={RANGE_START_TAG: DEMO_LAYERS[0], RANGE_END_TAG: DEMO_LAYERS[-1]},
    )
    assert not result.success
    assert "3 of 3 partitions failed." in failure_messages(instance)
    publisher = catalog_for(local_settings).publisher()
    assert publisher.get_collection(declaration.id) is None
    assert instance.fetch_materializations(keys.collection, limit=1).records == []

    # Materialized on its own (by hand, or by automation) it still publishes nothing.
    collection = dg.materialize([defs.resolve_assets_def(keys.collection)], instance=instance)
    assert collection.success
    assert publisher.get_collection(declaration.id) is None
    assert instance.fetch_materializations(keys.collection, limit=1).records == []


def test_demo_rasters_are_written_only_when_missing_or_different(tmp_path: Path):
    first = write_demo_rasters(tmp_path)
    assert [written for _, written in first] == [True, True, True]
    paths = [path for path, _ in first]
    before = {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in paths}

    again = write_demo_rasters(tmp_path)
    assert again == [(path, False) for path in paths]
    assert {path: (path.stat().st_mtime_ns, path.read_bytes()) for path in paths} == before

    changed = paths[1]
    changed.write_bytes(changed.read_bytes()[:-1])
    third = write_demo_rasters(tmp_path)
    assert [written for _, written in third] == [False, True, False]
    assert changed.read_bytes() == before[changed][1]
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == sorted(p.name for p in paths)
