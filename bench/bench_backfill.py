"""Benchmark: Dagster's overhead per partition, batch size 1 and 24, against a plain loop.

Run from the project root: `.venv/bin/python bench/bench_backfill.py [--partitions 120]
[--batch-sizes 1,24] [--size 16]`.

A chelsa-monthly-like dataset (`bq_pipelines_tests/backfill_location.py`: monthly x variable,
one variable here) reads `--partitions` generated float32 EPSG:4326 rasters from a local HTTP
server standing in for the CHELSA host, and is materialized through our CLI's `materialize` path
(one `execute_in_process` run per batch of partitions, the collection in the last) on a fresh SQLite
Dagster instance and a fresh static catalog / local object store per batch size, so nothing is
skipped. The baseline, measured first in the same run: a plain Python loop over the same
library calls for each partition (plan, probe the sources, fingerprint, `run_items`: fetch, COG,
item, upload, publish) and the collection once at the end, on its own fresh catalog and store,
without Dagster. Prints wall seconds, seconds per partition and the ratio to the plain loop
(goal for a batched run: <= 1.3x).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dagster as dg  # noqa: E402

from bq_pipelines.launch import materialize  # noqa: E402
from bq_pipelines.lib.pipeline import fingerprint, probe_sources, run_items  # noqa: E402
from bq_pipelines.plans import collection_for, plan_partition  # noqa: E402
from bq_pipelines.resources import resources_for, services_for  # noqa: E402
from bq_pipelines.settings import Settings  # noqa: E402
from bq_pipelines_tests import backfill_location as location  # noqa: E402
from bq_pipelines_tests.fixtures.http_server import LocalHttpHost  # noqa: E402
from bq_pipelines_tests.rasters import RasterSpec, write_raster  # noqa: E402
from bq_pipelines_tests.runs import dataset_definitions  # noqa: E402

VARIABLE = "tas"


def serve(host: LocalHttpHost, months: int, size: int) -> None:
    for index in range(months):
        spec = RasterSpec(width=size, height=size, resolution=8.0 / size, seed=index)
        write_raster(host.root / "chelsa" / location.source_path(index, VARIABLE), spec)


def plain_loop(host: LocalHttpHost, months: int, work: Path) -> float:
    """Seconds for the same partitions through the library alone (no Dagster)."""
    env = {
        "BQ_HOME": str(work / "bq"),
        "BQ_SOURCE_BASE_URLS": f"{location.CHELSA_HOST}={host.url('chelsa')}",
    }
    settings = Settings.from_env(env)
    declaration = location.chelsa_like("bench-plain", months, 1)
    defs = dataset_definitions(declaration, settings)
    resources = resources_for(settings)
    services = services_for(resources["object_store"], resources["catalog"], resources["sources"])
    locations = resources["sources"].locations()
    partitions_def = defs.resolve_job_def(f"{declaration.id.replace('-', '_')}_job").partitions_def
    keys = [location.partition_key(i, VARIABLE) for i in range(months)]
    started = time.perf_counter()
    items = []
    for key in keys:
        dimensions = partitions_def.get_partition_key_from_str(key).keys_by_dimension
        plans = plan_partition(declaration, dimensions, locations)
        urls = list(dict.fromkeys(s.url for p in plans for s in p.sources))
        fingerprint(plans, [f.token() for f in probe_sources(urls, services)])
        result = run_items(plans, services, key, collection=collection_for(declaration, []))
        items.extend(r.item for r in result.items)
    services.publisher.upsert_collection(collection_for(declaration, items))
    return time.perf_counter() - started


def run_once(host: LocalHttpHost, months: int, batch_size: int, work: Path) -> tuple[float, int]:
    """Seconds to materialize every partition with `batch_size`, and the number of runs."""
    env = {
        "BQ_HOME": str(work / "bq"),
        "BQ_SOURCE_BASE_URLS": f"{location.CHELSA_HOST}={host.url('chelsa')}",
    }
    settings = Settings.from_env(env)
    declaration = location.chelsa_like(f"bench-b{batch_size}", months, batch_size)
    defs = dataset_definitions(declaration, settings)
    keys = [location.partition_key(i, VARIABLE) for i in range(months)]
    (work / "dagster").mkdir(parents=True)
    with dg.DagsterInstance.local_temp(
        str(work / "dagster"), overrides={"telemetry": {"enabled": False}}
    ) as instance:
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            ok = materialize(declaration, defs, keys, instance).ok
        elapsed = time.perf_counter() - started
        runs = len(instance.get_runs())
    if not ok:
        raise SystemExit(f"batch size {batch_size}: a run failed")
    return elapsed, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=120)
    parser.add_argument("--batch-sizes", default="1,24")
    parser.add_argument("--size", type=int, default=16, help="raster width and height (px)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        host = LocalHttpHost(Path(tmp) / "http_root")
        host.start()
        try:
            serve(host, args.partitions, args.size)
            print(
                f"{args.partitions} partitions of {args.size}x{args.size} float32, "
                "in-process runs, SQLite instance"
            )
            plain = plain_loop(host, args.partitions, Path(tmp) / "plain")
            first = plain / args.partitions
            print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
            print("| run | runs | total (s) | s / partition | ratio to the plain loop |")
            print("|---|---|---|---|---|")
            print(f"| plain loop (no Dagster) | 0 | {plain:.1f} | {first:.3f} | 1.00 |")
            for batch_size in sizes:
                elapsed, runs = run_once(
                    host, args.partitions, batch_size, Path(tmp) / f"b{batch_size}"
                )
                assert runs == math.ceil(args.partitions / batch_size)  # collection in the last
                per = elapsed / args.partitions
                print(
                    f"| Dagster, batch size {batch_size} | {runs} | {elapsed:.1f} | {per:.3f} "
                    f"| {per / first:.2f} |",
                    flush=True,
                )
        finally:
            host.stop()


if __name__ == "__main__":
    main()
