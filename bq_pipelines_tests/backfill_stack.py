"""The backfill code location (`bq_pipelines_testkit/backfill_location.py`) as the tests run
it: its sources served by a local HTTP host, its settings, and its Dagster processes on a SQLite
instance."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bq_pipelines_testkit import backfill_location as location
from bq_pipelines_testkit.dagster_processes import Deployment, write_workspace
from bq_pipelines_testkit.http_host import LocalHttpHost
from bq_pipelines_testkit.rasters import RasterSpec, write_raster
from bq_pipelines_testkit.services import python_path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MIRROR_PREFIX = "chelsa"  # the local host serves the CHELSA tree under /chelsa/
TINY = RasterSpec(width=16, height=16, resolution=0.5)
LOCATION_NAME = "chelsa_backfill"


def serve_sources(
    http_host: LocalHttpHost, months: int, variables: tuple[str, ...]
) -> dict[str, str]:
    """Tiny float32 EPSG:4326 rasters for every partition; returns partition key -> URL."""
    urls = {}
    for variable in variables:
        for index in range(months):
            path = f"{MIRROR_PREFIX}/{location.source_path(index, variable)}"
            spec = RasterSpec(**{**TINY.__dict__, "seed": index})
            write_raster(http_host.root / path, spec)
            urls[location.partition_key(index, variable)] = http_host.url(path)
    return urls


def bq_env(tmp_path: Path, http_host: LocalHttpHost) -> dict[str, str]:
    """The BQ_* settings of the tests: embedded defaults under tmp, CHELSA host mirrored."""
    return {
        "BQ_HOME": str(tmp_path / "bq"),
        "BQ_LOCAL_DATA_ROOT": str(tmp_path / "bq" / "sources"),
        "BQ_SOURCE_BASE_URLS": f"{location.CHELSA_HOST}={http_host.url(MIRROR_PREFIX)}",
    }


@contextmanager
def sqlite_deployment(
    tmp_path: Path,
    http_host: LocalHttpHost,
    months: int = location.DEFAULT_MONTHS,
    batch_size: int = location.DEFAULT_BATCH_SIZE,
) -> Iterator[Deployment]:
    """The test code location on a SQLite instance with the project's dagster.yaml, CHELSA
    mirrored by `http_host`; processes are started by the test and stopped on exit."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    workspace = write_workspace(
        tmp_path / "workspace.yaml", "bq_pipelines_testkit.backfill_location", LOCATION_NAME
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    # Code servers listen on sockets under TMPDIR: keep the path short (108-byte limit).
    short_tmp = Path(tempfile.mkdtemp(prefix="bqbf-"))
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("BQ_", "DAGSTER_"))}
    env = {
        **inherited,
        **bq_env(tmp_path, http_host),
        "BQ_TEST_DATASET_ID": location.DEFAULT_ID,
        "BQ_TEST_MONTHS": str(months),
        "BQ_TEST_BATCH_SIZE": str(batch_size),
        "DAGSTER_HOME": str(dagster_home),
        "TMPDIR": str(short_tmp),
        "PYTHONPATH": python_path(),
    }
    deployment = Deployment(env=env, workspace=workspace, logs=logs)
    try:
        yield deployment
    finally:
        deployment.stop()
        shutil.rmtree(short_tmp, ignore_errors=True)
