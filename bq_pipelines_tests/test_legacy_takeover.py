"""Taking over the live legacy catalog without ingesting it again, on the real services.

A slice of the legacy catalog (real legacy items of soilgrids, chelsa-monthly and gfw-gain, from
fixtures/legacy) is loaded into pgstac through the STAC API, small COGs sit at the legacy object
keys in the S3 bucket, and the legacy hosts are stood in for by a local HTTP server. Then, through
the command line: `compare` finds nothing different, `adopt` records the partitions as
materialized, a backfill skips every one of them (HEADs only, nothing downloaded or uploaded), and
an object deleted afterwards is reported by `adopt` and re-created by the next backfill.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import httpx
import pytest
import rasterio
import rasterio.warp

import bq_pipelines_testkit.http_client as http
from bq_pipelines.cli import main
from bq_pipelines.datasets.loading import load_declarations
from bq_pipelines.lib import cog
from bq_pipelines.orchestration.keys import DatasetKeys
from bq_pipelines.settings import Settings
from bq_pipelines_testkit.rasters import RasterSpec
from bq_pipelines_testkit.runs import failure_messages, latest_metadata, run_dataset
from bq_pipelines_tests.fixtures.legacy_catalog import (
    legacy_collection,
    legacy_item,
    legacy_records,
)
from bq_pipelines_tests.fixtures.legacy_mirror import mirror_base_urls, put_legacy_raster
from bq_pipelines_tests.fixtures.services import services_settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHELSA = "https://os.zhdk.cloud.switch.ch/envicloud/chelsa/chelsa_V2/GLOBAL"
GFW = "https://storage.googleapis.com/earthenginepartners-hansen/GFC-2020-v1.8"
SOILGRIDS = "https://files.isric.org/soilgrids/latest/data_aggregated/1000m"
SMALL = RasterSpec(dtype="int16", nodata=-32768, width=40, height=30)


@dataclass(frozen=True)
class Taken:
    """One partition of the slice: its legacy item and where the legacy read its source."""

    dataset: str
    partition: str
    item_id: str
    legacy_url: str


SLICE = [
    Taken("soilgrids", "bdod_0-5cm", "bdod_0-5cm", f"{SOILGRIDS}/bdod/bdod_0-5cm_mean_1000.tif"),
    Taken("soilgrids", "ocs_0-30cm", "ocs_0-30cm", f"{SOILGRIDS}/ocs/ocs_0-30cm_mean_1000.tif"),
    Taken(
        "chelsa-monthly",
        str(dg.MultiPartitionKey({"date": "1985-07", "variable": "pet"})),
        "pet_penman_07_1985",
        f"{CHELSA}/monthly/pet/CHELSA_pet_penman_07_1985_V.2.1.tif",
    ),
    Taken(
        "gfw-gain",
        "00N_000E",
        "_gain_00N_000E",
        f"{GFW}/Hansen_GFC-2020-v1.8_gain_00N_000E.tif",
    ),
]
DATASETS = sorted({t.dataset for t in SLICE})


def partitions_of(dataset: str) -> list[str]:
    return [t.partition for t in SLICE if t.dataset == dataset]


def record_of(taken: Taken) -> dict[str, Any]:
    records = legacy_records()[taken.dataset]["items"]
    return next(r for r in records if r["id"] == taken.item_id)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    return status, capsys.readouterr().out


@pytest.fixture
def takeover(
    tmp_path, http_host, services_env, s3_bucket, s3_client, stac_api_url, monkeypatch
) -> Iterator[Settings]:
    """The legacy slice published on the real services; the command line and the runs of
    this test pointed at them (environment), with a Dagster instance of the test's own."""
    declarations = [d for d in load_declarations() if d.id in DATASETS]
    settings = services_settings(
        services_env,
        s3_bucket,
        tmp_path / "bq",
        tmp_path / "sources",
        monkeypatch,
        BQ_SOURCE_BASE_URLS=mirror_base_urls(http_host, declarations),
    )
    environment = {
        **services_env,
        "BQ_HOME": str(tmp_path / "bq"),
        "BQ_S3_BUCKET": s3_bucket,
        "BQ_PUBLIC_BASE_URL": settings.public_base_url or "",
        "BQ_LOCAL_DATA_ROOT": str(tmp_path / "sources"),
        "BQ_SOURCE_BASE_URLS": mirror_base_urls(http_host, declarations),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "dagster").mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", tmp_path / "dagster" / "dagster.yaml")
    api = httpx.Client(base_url=stac_api_url, timeout=30)
    for dataset in DATASETS:  # whatever an earlier run left behind
        api.delete(f"/collections/{dataset}")
        api.post("/collections", json=legacy_collection(dataset)).raise_for_status()
    for taken in SLICE:
        publish_legacy_partition(taken, settings, s3_client, api, tmp_path, http_host)
    http_host.reset()
    yield settings
    for dataset in DATASETS:
        api.delete(f"/collections/{dataset}")


def publish_legacy_partition(
    taken: Taken, settings: Settings, s3_client, api: httpx.Client, tmp_path: Path, http_host
) -> None:
    """What the legacy loader left: its source on its host, a COG at the legacy key, and the
    legacy item (hrefs on this bucket's public URL) in the catalog."""
    assert settings.s3_bucket is not None and settings.public_base_url is not None
    source = put_legacy_raster(http_host, taken.legacy_url, SMALL)
    record = record_of(taken)
    converted = cog.to_cog(
        cog.RasterInput(source), tmp_path / f"{taken.item_id}.tif", cog.CogSettings("raw")
    )
    s3_client.upload_file(str(converted.path), settings.s3_bucket, record["key"])
    with rasterio.open(converted.path) as src:
        bbox = list(rasterio.warp.transform_bounds(src.crs, "EPSG:4326", *src.bounds))
    item = legacy_item(taken.dataset, record, href_base=settings.public_base_url, bbox=bbox)
    api.post(f"/collections/{taken.dataset}/items", json=item).raise_for_status()


def test_a_legacy_catalog_is_compared_adopted_and_only_its_gaps_processed(
    takeover: Settings, capsys, s3_client, http_host, stac_api_url
):
    settings = takeover
    assert settings.s3_bucket is not None
    # 1. The plan publishes exactly what the legacy catalog holds for these partitions.
    for dataset in DATASETS:
        selected = [f"--partition={p}" for p in partitions_of(dataset)]
        status, out = run_cli(capsys, "compare", dataset, stac_api_url, *selected)
        assert status == 0, out
        assert f"{dataset} against {stac_api_url}: same" in out
    status, out = run_cli(capsys, "plan", "soilgrids", "--partition=ocs_0-30cm", "--json")
    [planned] = [json.loads(line) for line in out.splitlines()]
    [published] = (
        http.get(f"{stac_api_url}/collections/soilgrids/items/ocs_0-30cm").json()["assets"].values()
    )
    assert planned["assets"]["ocs_0-30cm"]["href"] == published["href"]

    # 2. Adopted: every partition recorded as materialized, nothing written anywhere.
    objects_before = listing(s3_client, settings.s3_bucket)
    for dataset in DATASETS:
        selected = [f"--partition={p}" for p in partitions_of(dataset)]
        status, out = run_cli(capsys, "adopt", dataset, *selected)
        count = len(partitions_of(dataset))
        assert status == 0 and f": {count} of {count} partition" in out, out
    assert listing(s3_client, settings.s3_bucket) == objects_before
    assert {r.method for r in http_host.requests} == {"HEAD"}  # fingerprints, no download
    status, out = run_cli(capsys, "status", "soilgrids")
    assert (
        status == 0
        and "79 partitions: 2 published, 77 missing, 0 failed, 0 stale, 2 adopted" in out
    )
    instance = dg.DagsterInstance.get()
    for taken in SLICE:
        metadata = latest_metadata(
            instance, DatasetKeys(taken.dataset).step("stac_item"), taken.partition
        )
        assert metadata["adopted"] is True
        assert list(metadata["adopted_objects"]) == [record_of(taken)["key"]]

    # 3. A backfill skips every adopted partition: no download, no upload, items untouched.
    http_host.reset()
    items_before = published_items(stac_api_url)
    for declaration in [d for d in load_declarations() if d.id in DATASETS]:
        partitions = partitions_of(declaration.id)
        assert run_dataset(declaration, settings, instance, partitions), failure_messages(instance)
        for partition in partitions:
            metadata = latest_metadata(
                instance, DatasetKeys(declaration.id).step("stac_item"), partition
            )
            assert metadata["skipped"] is True and metadata["adopted"] is True
    assert {r.method for r in http_host.requests} <= {"HEAD"}
    # The data objects are untouched; the collections' coverage maps are new (previews).
    after = listing(s3_client, settings.s3_bucket)
    assert [o for o in after if "/_previews/" not in o[0]] == objects_before
    assert {o[0] for o in after if "/_previews/" in o[0]} == {
        f"io/_previews/{dataset}/coverage-map.png" for dataset in DATASETS
    }
    assert published_items(stac_api_url) == items_before

    # 4. A deleted object: adopt reports it, the next backfill re-creates it (the others skip).
    gone = SLICE[0]
    key = record_of(gone)["key"]
    s3_client.delete_object(Bucket=settings.s3_bucket, Key=key)
    status, out = run_cli(
        capsys, "adopt", "soilgrids", *[f"--partition={p}" for p in partitions_of("soilgrids")]
    )
    assert status == 0 and "soilgrids: 1 of 2 partitions adopted" in out, out
    assert f"{gone.partition}: {gone.item_id}: object {key} is missing" in out
    declaration = next(d for d in load_declarations() if d.id == "soilgrids")
    assert run_dataset(declaration, settings, instance, partitions_of("soilgrids")), (
        failure_messages(instance)
    )
    step = DatasetKeys("soilgrids").step("stac_item")
    assert latest_metadata(instance, step, gone.partition)["skipped"] is False
    assert latest_metadata(instance, step, SLICE[1].partition)["skipped"] is True
    head = s3_client.head_object(Bucket=settings.s3_bucket, Key=key)
    item = http.get(f"{stac_api_url}/collections/soilgrids/items/{gone.item_id}").json()
    asset = item["assets"][gone.item_id]
    assert asset["file:size"] == head["ContentLength"]  # published again, by us now
    assert item["properties"]["description"] == record_of(gone)["properties"]["description"]
    downloaded = {r.path for r in http_host.requests if r.method == "GET"}
    assert downloaded == {urlsplit(http_host.mirror_url(gone.legacy_url)).path}
    assert "proj:code" in item["properties"]  # processed by our pipeline this time

    # 5. A source that changed on its host: the adopted partition is published again.
    changed = SLICE[3]  # gfw-gain
    put_legacy_raster(http_host, changed.legacy_url, RasterSpec(**{**SMALL.__dict__, "seed": 9}))
    declaration = next(d for d in load_declarations() if d.id == changed.dataset)
    assert run_dataset(declaration, settings, instance, [changed.partition]), failure_messages(
        instance
    )
    metadata = latest_metadata(
        instance, DatasetKeys(changed.dataset).step("stac_item"), changed.partition
    )
    assert metadata["skipped"] is False and "adopted" not in metadata


def test_compare_names_what_differs_and_exits_1(takeover: Settings, capsys, stac_api_url):
    taken = SLICE[2]  # chelsa-monthly: `version` is the number 2.1
    assert takeover.public_base_url is not None
    item = legacy_item(taken.dataset, record_of(taken), href_base=takeover.public_base_url)
    item["properties"]["version"] = "2.1"  # a string, as the first rewrite published it
    http.put(
        f"{stac_api_url}/collections/{taken.dataset}/items/{taken.item_id}", json=item
    ).raise_for_status()

    status, out = run_cli(
        capsys, "compare", taken.dataset, stac_api_url, f"--partition={taken.partition}"
    )
    assert status == 1
    assert "DIFFERENT" in out and "properties.version differs (1)" in out
    assert f'{taken.item_id}: properties.version: planned 2.1, published "2.1"' in out


def listing(s3_client, bucket: str) -> list[tuple[str, str]]:
    contents = s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted((o["Key"], o["ETag"]) for o in contents)


def published_items(stac_api_url: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for dataset in DATASETS:
        page = http.get(f"{stac_api_url}/collections/{dataset}/items", params={"limit": 100})
        found |= {f"{dataset}/{i['id']}": i for i in page.json()["features"]}
    return found


def test_plan_reads_no_source_and_plans_the_legacy_item(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("BQ_HOME", str(tmp_path / "bq"))
    for name in ("BQ_OBJECT_STORE", "BQ_S3_BUCKET", "BQ_PUBLIC_BASE_URL", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    status, out = run_cli(capsys, "plan", "gfw-gain", "--partition=00N_000E")
    assert status == 0
    header, row, total = out.splitlines()
    assert header.split() == ["partition", "item", "datetime", "href"]
    assert row.split()[:3] == ["00N_000E", "_gain_00N_000E", "2000-01-01T00:00:00Z"]
    assert row.endswith("/io/GFW/gain/Hansen_GFC-2020-v1.8_gain_00N_000E.tif")
    assert total == "1 item in 1 partition"
    assert not (tmp_path / "bq" / "sources").exists()
