"""Sandboxing and limits of dataset runs, on the real services (moto S3, stac-fastapi-pgstac):
local sources stay under their data root (symlinks included), a raster over the pixel limit and
a download over the size limit are refused before any conversion, an all-nodata output fails
the item check and is never published, a constant one is published with a warning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pystac_client
import pytest
import rasterio

from bq_pipelines.datasets.loading import parse_declaration
from bq_pipelines.datasets.plans import SourceLocations, plan_partition
from bq_pipelines.datasets.schema import Declaration
from bq_pipelines.lib.errors import ConfigError, SourceRefused
from bq_pipelines.orchestration.factory import build_dataset
from bq_pipelines.orchestration.keys import ITEM_VALID_CHECK, DatasetKeys
from bq_pipelines.settings import Settings
from bq_pipelines_testkit.rasters import (
    RasterSpec,
    raster_transform,
    write_huge_header,
    write_raster,
)
from bq_pipelines_testkit.runs import (
    check_evaluations,
    dataset_definitions,
    failure_messages,
    latest_metadata,
    materialize_dataset,
)
from bq_pipelines_tests.fixtures.services import services_settings

SMALL = RasterSpec(dtype="int16", nodata=-9999, width=40, height=30)


def layers_declaration(dataset_id: str, layers: list[str], **source: str) -> Declaration:
    """One item per layer, read from `layers/<layer>.tif` under the data root (or `source`)."""
    return parse_declaration(
        {
            "id": dataset_id,
            "title": "Limits",
            "description": "Sandboxing and limits",
            "license": "CC-BY-4.0",
            "folder": dataset_id,
            "source": source or {"local": "layers/{layer}.tif"},
            "partitions": {"static": [{"name": "layer", "values": layers}], "batch_size": 10},
            "item": {"id": "{layer}", "datetime": "2020-01-01T00:00:00Z"},
        },
        f"{dataset_id}.yaml",
    )


@pytest.fixture
def sources_root(tmp_path: Path) -> Path:
    root = tmp_path / "sources"
    (root / "layers").mkdir(parents=True)
    return root


def settings_for(request: pytest.FixtureRequest, **overrides: str) -> Settings:
    tmp_path = request.getfixturevalue("tmp_path")
    return services_settings(
        request.getfixturevalue("services_env"),
        request.getfixturevalue("s3_bucket"),
        tmp_path / "bq",
        tmp_path / "sources",
        request.getfixturevalue("monkeypatch"),
        **overrides,
    )


def published_ids(stac_api_url: str, collection_id: str) -> set[str]:
    search = pystac_client.Client.open(stac_api_url).search(collections=[collection_id])
    return {item.id for item in search.items()}


def stored_keys(s3_client: Any, bucket: str) -> set[str]:
    """The data objects of the bucket (not the collections' coverage maps, under _previews/)."""
    listing = s3_client.list_objects_v2(Bucket=bucket)
    return {e["Key"] for e in listing.get("Contents", []) if "/_previews/" not in e["Key"]}


def published_keys(dataset_id: str, *names: str) -> set[str]:
    """The COG and its thumbnail of each item `name`."""
    keys = {f"io/{dataset_id}/{name}.tif" for name in names}
    return keys | {f"{key}.thumbnail.png" for key in keys}


# --- local sources stay under their data root -------------------------------------------------


def test_symlinks_out_of_the_data_root_are_refused_and_nothing_of_theirs_is_published(
    request, sources_root, tmp_path, stac_api_url, s3_client, s3_bucket, unique_id
):
    layers = sources_root / "layers"
    write_raster(layers / "inside.tif", SMALL)
    write_raster(
        sources_root / "elsewhere" / "kept.tif", RasterSpec(**{**SMALL.__dict__, "seed": 2})
    )
    (layers / "linked.tif").symlink_to(sources_root / "elsewhere" / "kept.tif")  # still inside
    declaration = layers_declaration(
        f"sandbox-{unique_id}", ["inside", "linked", "escape", "passwd"]
    )
    settings = settings_for(request)
    # Loaded before the links out exist (they would fail the load): a run checks them again.
    defs = dataset_definitions(declaration, settings)
    secret = write_raster(tmp_path / "outside" / "secret.tif", SMALL)
    (layers / "escape.tif").symlink_to(secret)
    (layers / "passwd.tif").symlink_to("/etc/passwd")
    instance = dg.DagsterInstance.ephemeral()

    done = materialize_dataset(declaration, settings, instance, defs=defs)

    assert not done.ok
    failures = failure_messages(instance)
    root = sources_root.resolve()
    assert (
        f"{root}/layers/escape.tif: resolves to {secret.resolve()}, outside the local data root "
        f"{root} (BQ_LOCAL_DATA_ROOT)" in failures
    )
    assert "resolves to /etc/passwd, outside the local data root" in failures
    assert published_ids(stac_api_url, declaration.id) == {"inside", "linked"}
    assert stored_keys(s3_client, s3_bucket) == published_keys(declaration.id, "inside", "linked")


def test_a_files_partition_cannot_read_through_a_symlink_either(sources_root, tmp_path):
    declaration = parse_declaration(
        {
            "id": "files",
            "title": "Files",
            "description": "Files",
            "license": "CC-BY-4.0",
            "folder": "files",
            "source": {"local": "layers/{file_name}"},
            "partitions": {"files": {"glob": "layers/*.tif"}},
            "item": {"id": "{file}", "datetime": "2020-01-01T00:00:00Z"},
        },
        "files.yaml",
    )
    (sources_root / "layers" / "passwd.tif").symlink_to("/etc/passwd")
    with pytest.raises(
        SourceRefused, match=r"resolves to /etc/passwd, outside the local data root"
    ):
        plan_partition(declaration, {"file": "passwd.tif"}, SourceLocations({}, sources_root))


OUTSIDE = "resolves to {}, outside the local data root {} (BQ_LOCAL_DATA_ROOT)"


@pytest.mark.parametrize(
    ("source", "field", "target"),
    [
        ({"url": "file:///etc/{layer}"}, "source.url", "/etc/a"),
        ({"url": "/etc/{layer}"}, "source.url", "/etc/a"),  # no scheme: a plain path
        ({"url": "file://{root}/link/{layer}"}, "source.url", "{outside}/a"),
        ({"local": "link/{layer}"}, "source.local", "{outside}/a"),
        (
            {"host": "elsewhere", "base_url": "file:///etc", "path": "{layer}"},
            "source.base_url (of host 'elsewhere')",
            "/etc/a",
        ),
        (
            {"host": "chelsa", "path": "link/{layer}"},  # a mirror inside, a symlink out
            "BQ_SOURCE_BASE_URLS[chelsa] (the base URL of source.path)",
            "{outside}/a",
        ),
    ],
)
def test_every_form_of_local_source_outside_the_data_root_is_refused_at_load(
    sources_root: Path, tmp_path: Path, source: dict[str, Any], field: str, target: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (sources_root / "link").symlink_to(outside)
    root = sources_root.resolve()
    source = {k: v.replace("{root}", str(root)) for k, v in source.items()}
    declaration = layers_declaration("sandbox", ["a", "b"], **source)
    settings = Settings.from_env(
        {
            "BQ_HOME": str(tmp_path / "bq"),
            "BQ_LOCAL_DATA_ROOT": str(sources_root),
            "BQ_SOURCE_BASE_URLS": f"chelsa=file://{root}",
        }
    )

    with pytest.raises(ConfigError) as refused:
        build_dataset(declaration, settings)

    message = str(refused.value)
    assert message.startswith(f"sandbox/defs.yaml: {field}: "), message
    assert OUTSIDE.format(target.replace("{outside}", str(outside.resolve())), root) in message
    assert message.endswith("(partition layer=a)")


def test_local_sources_inside_the_data_root_load_in_every_form(
    sources_root: Path, tmp_path: Path
) -> None:
    (sources_root / "inner").symlink_to(sources_root / "layers")  # a link that stays inside
    root = sources_root.resolve()
    settings = Settings.from_env(
        {
            "BQ_HOME": str(tmp_path / "bq"),
            "BQ_LOCAL_DATA_ROOT": str(sources_root),
            "BQ_SOURCE_BASE_URLS": f"chelsa=file://{root}/inner",
        }
    )
    for source in (
        {"url": f"file://{root}/layers/{{layer}}.tif"},
        {"url": f"file://{root}/inner/{{layer}}.tif"},
        {"local": "inner/{layer}.tif"},
        {"host": "elsewhere", "base_url": f"file://{root}/layers", "path": "{layer}.tif"},
        {"host": "chelsa", "path": "{layer}.tif"},
        {"url": "https://example.org/{layer}.tif"},
    ):
        assert build_dataset(layers_declaration("sandbox", ["a"], **source), settings)


def test_a_mirror_outside_the_data_root_is_refused_naming_the_setting(
    sources_root: Path, tmp_path: Path
) -> None:
    (sources_root / "link").symlink_to(tmp_path)
    for mirror, resolved in (("file:///etc", "/etc"), (f"file://{sources_root}/link", tmp_path)):
        with pytest.raises(ConfigError) as refused:
            Settings.from_env(
                {"BQ_LOCAL_DATA_ROOT": str(sources_root), "BQ_SOURCE_BASE_URLS": f"chelsa={mirror}"}
            )
        assert str(refused.value).startswith(
            f"BQ_SOURCE_BASE_URLS[chelsa]: '{mirror}' "
            + OUTSIDE.format(Path(resolved).resolve(), sources_root.resolve())
        )


def test_a_file_url_is_confined_again_when_it_is_read(
    request, sources_root, tmp_path, stac_api_url, s3_client, s3_bucket, unique_id
):
    # Loaded while every file lies inside; then one is replaced by a link to a file outside.
    layers = sources_root / "layers"
    write_raster(layers / "kept.tif", SMALL)
    write_raster(layers / "swapped.tif", SMALL)
    secret = write_raster(
        tmp_path / "outside" / "secret.tif", RasterSpec(**{**SMALL.__dict__, "seed": 3})
    )
    root = sources_root.resolve()
    declaration = layers_declaration(
        f"confined-{unique_id}", ["kept", "swapped"], url=f"file://{root}/layers/{{layer}}.tif"
    )
    settings = settings_for(request)
    defs = dataset_definitions(declaration, settings)  # the load check passes
    (layers / "swapped.tif").unlink()
    (layers / "swapped.tif").symlink_to(secret)
    instance = dg.DagsterInstance.ephemeral()

    done = materialize_dataset(declaration, settings, instance, defs=defs)

    assert not done.ok and (done.published, done.failed) == (1, 1)
    assert f"{root}/layers/swapped.tif: " + OUTSIDE.format(
        secret.resolve(), root
    ) in failure_messages(instance)
    assert published_ids(stac_api_url, declaration.id) == {"kept"}
    assert stored_keys(s3_client, s3_bucket) == published_keys(declaration.id, "kept")


# --- limits, checked before any conversion ----------------------------------------------------


def test_a_crafted_huge_header_is_refused_before_conversion(
    request, sources_root, stac_api_url, s3_client, s3_bucket, unique_id
):
    # 100,000 x 100,000 pixels declared, in a sparse file of a few MB.
    write_huge_header(sources_root / "layers" / "huge.tif")
    write_raster(sources_root / "layers" / "small.tif", SMALL)
    declaration = layers_declaration(f"huge-{unique_id}", ["huge", "small"])
    instance = dg.DagsterInstance.ephemeral()

    done = materialize_dataset(declaration, settings_for(request), instance)  # the defaults

    assert not done.ok
    assert (
        "100000 x 100000 pixels x 1 bands is 10000000000 pixels, more than the limit of "
        "9000000000 (BQ_MAX_PIXELS)" in failure_messages(instance)
    )
    assert published_ids(stac_api_url, declaration.id) == {"small"}
    assert stored_keys(s3_client, s3_bucket) == published_keys(declaration.id, "small")

    # The limit is a setting.
    strict = layers_declaration(f"strict-{unique_id}", ["small"])
    instance = dg.DagsterInstance.ephemeral()
    assert not materialize_dataset(strict, settings_for(request, BQ_MAX_PIXELS="1000"), instance).ok
    assert (
        "40 x 30 pixels x 1 bands is 1200 pixels, more than the limit of 1000 (BQ_MAX_PIXELS)"
        in (failure_messages(instance))
    )
    assert published_ids(stac_api_url, strict.id) == set()


def test_a_download_over_the_size_limit_is_refused(
    request, http_host, stac_api_url, s3_client, s3_bucket, unique_id
):
    source = write_raster(http_host.root / "big.tif", SMALL)
    declaration = layers_declaration(
        f"download-{unique_id}", ["big"], url=f"{http_host.base_url}/{{layer}}.tif"
    )
    limit = source.stat().st_size - 1
    instance = dg.DagsterInstance.ephemeral()
    settings = settings_for(request, BQ_MAX_DOWNLOAD_BYTES=str(limit))

    assert not materialize_dataset(declaration, settings, instance).ok

    assert (
        f"cannot fetch {http_host.url('big.tif')}: larger than the download limit of {limit} "
        "bytes (BQ_MAX_DOWNLOAD_BYTES)" in failure_messages(instance)
    )
    assert published_ids(stac_api_url, declaration.id) == set()
    assert stored_keys(s3_client, s3_bucket) == set()


# --- what the item check says about the output ------------------------------------------------


def test_an_all_nodata_output_is_not_published_and_a_constant_one_is_flagged(
    request, sources_root, stac_api_url, s3_client, s3_bucket, unique_id
):
    layers = sources_root / "layers"
    write_raster(layers / "normal.tif", SMALL)
    for name, dtype, nodata, value in (
        ("empty", "float32", -9999.0, -9999.0),
        ("mask", "uint8", 0, 1),
    ):
        with rasterio.open(
            layers / f"{name}.tif",
            "w",
            driver="GTiff",
            width=40,
            height=30,
            count=1,
            dtype=dtype,
            crs="EPSG:4326",
            transform=raster_transform(SMALL),
            nodata=nodata,
        ) as dst:
            dst.write(np.full((1, 30, 40), value, dtype=dtype))
    declaration = layers_declaration(f"content-{unique_id}", ["normal", "empty", "mask"])
    instance = dg.DagsterInstance.ephemeral()

    done = materialize_dataset(declaration, settings_for(request), instance)

    assert not done.ok
    assert (
        "item empty: every pixel of every band is nodata, masked or NaN (valid_percent 0): "
        "not published" in failure_messages(instance)
    )
    [check] = check_evaluations(instance, ITEM_VALID_CHECK)
    assert not check.passed
    metadata = {key: value.value for key, value in check.metadata.items()}
    assert list(metadata["invalid"]) == ["empty"]
    # A mask of ones is constant, and legitimate: published, listed as a warning.
    assert metadata["constant_items"] == {"mask": ["mask"]}
    assert published_ids(stac_api_url, declaration.id) == {"normal", "mask"}
    assert stored_keys(s3_client, s3_bucket) == published_keys(declaration.id, "normal", "mask")
    item_metadata = latest_metadata(instance, DatasetKeys(declaration.id).step("stac_item"), "mask")
    assert item_metadata["constant_items"] == {
        "mask": "every valid pixel holds the same value in each band (1)"
    }
    assert (
        latest_metadata(instance, DatasetKeys(declaration.id).step("stac_item"), "normal")[
            "constant_items"
        ]
        == {}
    )
