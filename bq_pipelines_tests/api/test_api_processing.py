"""Requests processed by Dagster on the real services: the API server (uvicorn subprocess), a
`dagster-daemon` on the project's workspace (its sensor starts one run per request), the request
store in PostgreSQL, stac-fastapi-pgstac, a moto S3 bucket, and a local HTTP mirror holding the
sources (explicitly allowlisted)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pystac_client
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

import bq_pipelines_testkit.http_client as http
from bq_pipelines.datasets.loading import load_declarations
from bq_pipelines.datasets.plans import collection_for
from bq_pipelines.ingestion.definitions import ASSET_KEY, JOB_NAME, REQUEST_TAG
from bq_pipelines.lib.stac import multihash_sha256
from bq_pipelines.lib.waiting import wait_until
from bq_pipelines.settings import Settings
from bq_pipelines_testkit.api_stack import (
    ApiStack,
    api_stack,
    legacy_example,
    on_services,
    temporary_collection,
)
from bq_pipelines_testkit.http_host import LocalHttpHost, serving
from bq_pipelines_testkit.rasters import RasterSpec, write_raster
from bq_pipelines_testkit.runs import audit_dataset
from bq_pipelines_testkit.values import materialization_of

DECLARED_CATEGORICAL = "gfw-lossyear"  # declared with `cog: {categorical: true}`


@dataclass
class Services:
    stack: ApiStack
    mirror: LocalHttpHost
    stac_api_url: str
    bucket: str
    collection_id: str  # an undeclared collection, created for the module
    bq: dict[str, str]  # the stack's BQ_* settings


@pytest.fixture(scope="module")
def services(
    tmp_path_factory: pytest.TempPathFactory, services_env: dict[str, str]
) -> Iterator[Services]:
    tmp_path = tmp_path_factory.mktemp("api_processing")
    stac_api_url = services_env["BQ_STAC_API_URL"]
    collection_id = f"api-test-{uuid.uuid4().hex[:8]}"
    [declared] = [d for d in load_declarations() if d.id == DECLARED_CATEGORICAL]
    with (
        serving(tmp_path / "mirror") as mirror,
        temporary_collection(stac_api_url, collection_id) as publisher,
        on_services(services_env, tmp_path / "bq", f"{mirror.base_url}/data/") as bq,
        api_stack(tmp_path, bq) as stack,
    ):
        publisher.ensure_collection(collection_for(declared, []))
        stack.start_api()
        stack.start_daemon()
        yield Services(stack, mirror, stac_api_url, bq["BQ_S3_BUCKET"], collection_id, bq)


def the_only_run(stack: ApiStack, request_id: str) -> dg.DagsterRun:
    [run] = stack.runs_of(request_id)
    assert run.job_name == JOB_NAME
    assert run.tags[REQUEST_TAG] == request_id
    return run


def test_the_legacy_example_is_published_as_a_valid_item_and_cog(
    services: Services, tmp_path: Path
):
    stack, mirror = services.stack, services.mirror
    write_raster(mirror.root / "data/legacy/filename.tif", RasterSpec(nodata=-9999.0))
    name = f"legacy-example-{uuid.uuid4().hex[:8]}"
    body = legacy_example(
        services.collection_id, name, mirror.url("data/legacy"), services.stac_api_url
    )

    request_id = stack.accepted(body)
    status = stack.wait_done([request_id])[request_id]

    assert status["_operation"] == "PROCESS FINISHED", status
    assert status["_status"] == "ok" and status["_state"] == "finished"
    assert status["_param"]["properties"]["datetime"] == "2018-01-01T00:00:00Z"
    for step in ("GETCOLLECTION", "GETITEMFILE", "TRANF_COG", "CREATEPYSTACITEM"):
        assert step in status["_description"]
    item_url = f"{services.stac_api_url}/collections/{services.collection_id}/items/{name}"
    assert status["_item_url"] == item_url

    # The item, found as a user finds it.
    client = pystac_client.Client.open(services.stac_api_url)
    [item] = client.search(collections=[services.collection_id], ids=[name]).items()
    assert item.datetime is not None and item.datetime.isoformat().startswith("2018-01-01")
    assert item.properties["description"] == "TTT Other Hansen 2020"
    assert item.properties["full_filename"] == "full_filename.tif"
    [asset] = item.assets.values()
    assert asset.href.endswith(f"/{services.bucket}/io/{services.collection_id}/{name}.tif")

    # Its COG: the bytes the item describes, a valid Cloud-Optimized GeoTIFF.
    cog = tmp_path / "cog.tif"
    cog.write_bytes(http.get(asset.href, timeout=30).raise_for_status().content)
    assert asset.extra_fields["file:checksum"] == multihash_sha256(
        hashlib.sha256(cog.read_bytes()).hexdigest()
    )
    valid, errors, _ = cog_validate(str(cog))
    assert valid, errors
    with rasterio.open(cog) as dataset:
        assert dataset.nodata == -9999.0 and dataset.crs.to_epsg() == 4326

    # The collection's extent grew to cover the item.
    collection = client.get_collection(services.collection_id)
    assert collection is not None
    [bbox] = collection.extent.spatial.bboxes
    assert item.bbox is not None and item.datetime is not None
    assert bbox[0] <= item.bbox[0] and bbox[2] >= item.bbox[2]
    [[start, end]] = collection.extent.temporal.intervals
    assert start is not None and end is not None
    assert start <= item.datetime <= end

    # One Dagster run, of the ingestion job, that materialized the asset.
    run = the_only_run(stack, request_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    assert status["_run_id"] == run.run_id and status["_run_url"].endswith(run.run_id)
    with stack.instance() as instance:
        records = instance.fetch_materializations(ASSET_KEY, limit=1000).records
    mine = [
        materialization_of(r)
        for r in records
        if materialization_of(r).metadata["request_id"].value == request_id
    ]
    assert len(mine) == 1 and mine[0].metadata["item_url"].value == item_url


def test_the_cog_profile_follows_the_collections_declaration(
    services: Services, monkeypatch: pytest.MonkeyPatch
):
    # uint8: a continuous integer raster gets horizontal differencing (predictor 2), a
    # categorical one none; gfw-lossyear is declared categorical, the test collection is not.
    stack, mirror = services.stack, services.mirror
    write_raster(
        mirror.root / "data/profile/classes.tif", RasterSpec(dtype="uint8", categorical=True)
    )
    names = {
        collection: f"profile-{uuid.uuid4().hex[:8]}"
        for collection in (DECLARED_CATEGORICAL, services.collection_id)
    }
    ids = {
        collection: stack.accepted(
            {
                "collection_id": collection,
                "date": "2020-06-01",
                "name": name,
                "filename": "classes.tif",
                "file_source_host": mirror.url("data/profile"),
                "properties": {},
            }
        )
        for collection, name in names.items()
    }
    done = stack.wait_done(list(ids.values()))
    predictors, hrefs = {}, {}
    for collection, request_id in ids.items():
        assert done[request_id]["_operation"] == "PROCESS FINISHED", done[request_id]
        item = http.get(done[request_id]["_item_url"]).json()
        [asset] = item["assets"].values()
        hrefs[collection] = asset["href"]
        with rasterio.open(asset["href"]) as dataset:
            predictors[collection] = dataset.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR", "1")
    assert predictors == {DECLARED_CATEGORICAL: "1", services.collection_id: "2"}
    # Objects go to the declared folder, or one named after an undeclared collection.
    [declared] = [d for d in load_declarations() if d.id == DECLARED_CATEGORICAL]
    declared_key = f"/io/{declared.folder}/{names[DECLARED_CATEGORICAL]}.tif"
    assert declared_key in hrefs[DECLARED_CATEGORICAL]
    assert f"/io/{services.collection_id}/" in hrefs[services.collection_id]
    # The dataset's audit knows the item is the API's (its object records the API as writer):
    # listed apart, never as an item outside the dataset's partitions.
    settings = Settings.from_env(services.bq)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # read at run time (EnvVar)
        monkeypatch.setenv(name, services.bq[name])
    report = audit_dataset(declared, settings, dg.DagsterInstance.ephemeral())
    assert names[DECLARED_CATEGORICAL] in report.api_items
    assert names[DECLARED_CATEGORICAL] not in report.outside_partitions


def test_failing_sources_end_in_error_with_the_reason(services: Services):
    stack, mirror = services.stack, services.mirror
    mirror.put("data/failing/corrupt.tif", b"II*\x00" + bytes(range(256)) * 8)
    mirror.put("data/failing/picture.tif", b"\x89PNG\r\n\x1a\n" + bytes(100))
    # There when the request is accepted (the API's HEAD), gone when its run downloads it.
    mirror.put("data/failing/vanished.tif", b"II*\x00" + bytes(100))
    mirror.fail("data/failing/vanished.tif", status=404, times=None, method="GET")

    def request(filename: str) -> str:
        return stack.accepted(
            {
                "collection_id": services.collection_id,
                "date": "2018-01-01",
                "name": f"failing-{uuid.uuid4().hex[:8]}",
                "filename": filename,
                "file_source_host": mirror.url("data/failing"),
                "properties": {},
            }
        )

    reasons = {
        "vanished.tif": "HTTP 404",
        "corrupt.tif": "not a readable GeoTIFF",
        "picture.tif": "not a GeoTIFF",
    }
    ids = {filename: request(filename) for filename in reasons}
    done = stack.wait_done(list(ids.values()))

    for filename, request_id in ids.items():
        status = done[request_id]
        assert status["_status"] == "error" and status["_state"] == "failed", status
        assert status["_operation"] == "GETITEMFILE", status
        assert reasons[filename] in status["_description"], status
        assert mirror.url(f"data/failing/{filename}") in status["_description"]
        run = the_only_run(stack, request_id)
        assert run.status == dg.DagsterRunStatus.FAILURE
        assert status["_run_id"] == run.run_id


REEXECUTE = """
mutation ($params: ReexecutionParams!) {
  launchRunReexecution(reexecutionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on Error { message }
  }
}
"""


def test_a_failed_request_is_processed_when_its_run_is_re_executed_from_the_ui(
    services: Services,
):
    stack, mirror = services.stack, services.mirror
    name = f"retried-{uuid.uuid4().hex[:8]}"
    body = legacy_example(services.collection_id, name, mirror.url("data/retry"), None)
    write_raster(mirror.root / "data/retry/filename.tif", RasterSpec())
    # The API's HEAD finds it; the run's download does not (a host failing for a while).
    mirror.fail("data/retry/filename.tif", status=404, times=1, method="GET")
    request_id = stack.accepted(body)
    assert stack.wait_done([request_id])[request_id]["_status"] == "error"
    [failed_run] = stack.runs_of(request_id)

    # What the UI's "Re-execute" button sends to the webserver.
    stack.deployment.start_webserver()
    stack.deployment.wait_until_loaded()
    launched = stack.deployment.graphql(
        REEXECUTE, params={"parentRunId": failed_run.run_id, "strategy": "ALL_STEPS"}
    )["launchRunReexecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    new_run_id = launched["run"]["runId"]

    def reexecution_done() -> dict[str, Any] | None:
        status = stack.status(request_id)
        ended = status["_state"] in ("finished", "failed")
        return status if status["_run_id"] == new_run_id and ended else None

    status = wait_until(
        reexecution_done,
        timeout=180,
        what=f"request {request_id} done by run {new_run_id}",
        poll=1,
        detail=lambda: f"{stack.status(request_id)}\n{stack.deployment.log_tail()}",
    )
    assert status["_operation"] == "PROCESS FINISHED", status
    assert http.get(status["_item_url"]).json()["id"] == name
