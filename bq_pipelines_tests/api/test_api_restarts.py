"""Exactly once across crashes: kill -9 of the API, or of the Dagster daemon, between the
acceptance of a request and its processing; then of everything (a machine restart). Every
accepted request is processed by exactly one run, and its status survives.

Real processes on the real services (see test_api_processing.py); the request store is
PostgreSQL here and SQLite in the embedded-defaults test.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from rio_cogeo.cogeo import cog_validate

import bq_pipelines_testkit.http_client as http
from bq_pipelines.lib.catalog import StaticCatalogPublisher
from bq_pipelines.lib.waiting import wait_until
from bq_pipelines_testkit.api_stack import (
    ApiStack,
    api_stack,
    ensure_collection,
    legacy_example,
    on_services,
    temporary_collection,
)
from bq_pipelines_testkit.dagster_processes import child_pids, command_line
from bq_pipelines_testkit.http_host import LocalHttpHost, serving
from bq_pipelines_testkit.rasters import RasterSpec, write_raster


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[LocalHttpHost]:
    with serving(tmp_path / "mirror") as host:
        write_raster(host.root / "data/filename.tif", RasterSpec(width=64, height=48))
        yield host


@pytest.fixture
def stack(
    tmp_path: Path, services_env: dict[str, str], mirror: LocalHttpHost
) -> Iterator[tuple[ApiStack, str]]:
    """An API stack on the services (nothing started yet) and a fresh collection."""
    collection_id = f"api-restart-{uuid.uuid4().hex[:8]}"
    with (
        temporary_collection(services_env["BQ_STAC_API_URL"], collection_id),
        on_services(services_env, tmp_path / "bq", f"{mirror.base_url}/data/") as bq,
        api_stack(tmp_path, bq) as api,
    ):
        yield api, collection_id


def body(collection_id: str, mirror: LocalHttpHost, stac_api: str) -> dict[str, Any]:
    return legacy_example(
        collection_id, f"restart-{uuid.uuid4().hex[:8]}", mirror.url("data"), stac_api
    )


def assert_processed_exactly_once(api: ApiStack, request_ids: list[str]) -> None:
    done = api.wait_done(request_ids)
    for request_id in request_ids:
        assert done[request_id]["_operation"] == "PROCESS FINISHED", done[request_id]
        runs = api.runs_of(request_id)
        assert [run.status for run in runs] == [dg.DagsterRunStatus.SUCCESS], runs
        assert done[request_id]["_run_id"] == runs[0].run_id
        assert http.get(done[request_id]["_item_url"]).status_code == 200


def test_kill_9_of_the_api_after_acceptance_loses_nothing_and_runs_once(
    stack: tuple[ApiStack, str], mirror: LocalHttpHost, services_env: dict[str, str]
):
    api, collection_id = stack
    stac_api = services_env["BQ_STAC_API_URL"]
    api.start_api()  # no daemon yet: nothing can be processed before the crash
    key = {"Idempotency-Key": f"retry-{uuid.uuid4()}"}
    repeated = body(collection_id, mirror, stac_api)
    first = api.accepted(repeated, key)
    second = api.accepted(body(collection_id, mirror, stac_api))

    api.deployment.kill(api.api)
    api.start_api()

    assert api.status(first)["_operation"] == "RECEIVED"  # the status survived
    assert api.accepted(repeated, key) == first  # the key too
    api.start_daemon()
    assert_processed_exactly_once(api, [first, second])


def test_kill_9_of_the_daemon_between_acceptance_and_processing_runs_each_request_once(
    stack: tuple[ApiStack, str], mirror: LocalHttpHost, services_env: dict[str, str]
):
    api, collection_id = stack
    stac_api = services_env["BQ_STAC_API_URL"]
    api.start_api()
    api.start_daemon()
    # Once the daemon answers (health: a fresh heartbeat), requests arrive and it is killed
    # before or after its sensor picked them up, with runs queued or not.
    # A generous read timeout: on a loaded machine /health (it reads the instance) takes seconds.
    wait_until(
        lambda: http.get(f"{api.base_url}/health", timeout=30).json()["dagster"]["ok"] is not False,
        timeout=60,
        what="the daemon's heartbeat in /health",
        poll=0.5,
        detail=api.deployment.log_tail,
    )
    ids = [api.accepted(body(collection_id, mirror, stac_api)) for _ in range(3)]
    api.deployment.kill(api.daemon)
    time.sleep(6)  # past a sensor interval: a live daemon would have ticked
    api.start_daemon()
    assert_processed_exactly_once(api, ids)

    # Then everything dies at once (a machine restart), with a request accepted meanwhile.
    late = api.accepted(body(collection_id, mirror, stac_api))
    api.deployment.stop()
    api.start_api()
    api.start_daemon()
    assert_processed_exactly_once(api, [*ids, late])


@pytest.mark.slow
def test_make_api_on_the_embedded_defaults(tmp_path: Path, mirror: LocalHttpHost):
    """`python -m bq_pipelines.ingestion --with-daemon`, what `make api` runs: static catalog, local
    object store, SQLite request store. SIGTERM stops the API and its daemon."""
    home = tmp_path / "bq"
    ensure_collection(StaticCatalogPublisher(home / "catalog"), "local-collection")
    bq = {"BQ_HOME": str(home), "BQ_API_ALLOWED_SOURCES": f"{mirror.base_url}/data/"}
    with api_stack(tmp_path, bq) as api:
        api.start_api("--with-daemon")
        request_id = api.accepted(
            legacy_example("local-collection", "local-item", mirror.url("data"), None)
        )
        done = api.wait_done([request_id])[request_id]
        assert done["_operation"] == "PROCESS FINISHED", done
        item_path = home / "catalog" / "local-collection" / "local-item" / "local-item.json"
        assert done["_item_url"] == item_path.absolute().as_uri()
        cog = home / "objects" / "io" / "local-collection" / "local-item.tif"
        assert cog_validate(str(cog))[0]
        assert (home / "api" / "requests.sqlite").is_file()

        children = child_pids(api.api.pid)
        commands = [command_line(pid) for pid in children]
        # The daemon reaches a code server the API started (a grpc_server workspace), instead of
        # starting one of its own that it would replace every minute.
        assert sum("dagster-daemon run" in c for c in commands) == 1, commands
        assert sum("api grpc -m bq_pipelines.definitions" in c for c in commands) == 1, commands
        [daemon] = [pid for pid, c in zip(children, commands, strict=True) if "dagster-daemon" in c]
        assert not any("api grpc" in command_line(pid) for pid in child_pids(daemon)), commands
        api.api.terminate()
        api.api.wait(timeout=30)
        for pid in children:
            assert not Path(f"/proc/{pid}").exists(), f"daemon {pid} left running"
